"""tttc's compiled layers as PyTorch modules.

Each layer is two custom ops (``torch.library.custom_op``): ``tttc::layer`` (the forward pass,
optionally from a state and handing on the state after the sequence) and ``tttc::layer_vjp`` (its
vector-Jacobian product, tttc's own reverse-mode autodiff of the layer), registered as its
backward, both with fake kernels so that ``torch.compile`` traces them without graph breaks. CPU
tensors are read and written in place by the compiled code; float64 runs tttc's reference
interpreter in f64 (for ``torch.autograd.gradcheck``). docs/python.md describes the modules, the
state and the errors.
"""

from __future__ import annotations

import functools
import json
import threading
from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F

from . import _native
from ._native import Error

__all__ = [
    "Error",
    "Layer",
    "TTTLayer",
    "TTTLinear",
    "TTTMLP",
    "MambaMixer",
    "Attention",
    "LaCTLayer",
    "BidirectionalLaCT",
    "CausalLM",
    "from_reference",
    "from_pretrained",
    "save_pretrained",
]


class _Registered:
    """A native layer as the custom ops find it (ops take plain ints), and the backend it runs on."""

    def __init__(self, native: _native.Layer, backend: str):
        self.native = native
        self.backend = backend
        self.parameters = [name for name, _ in native.parameters()]
        run = native.entry("forward", None, True)
        # The state after a sequence, by name, with its type: what a state given back holds.
        self.state = [(name[len("state:") :], ty) for name, ty in run.outputs if name.startswith("state:")]
        self.state_names = [name for name, _ in self.state]

    def kept(self, state_out: bool) -> list[tuple[str, tuple]]:
        """What the forward pass that saves for the backward gives beside the forward's outputs:
        the residuals ``saved:K`` (and any gradient that does not depend on the cotangents), with
        their types."""
        forward = {"y"} | {f"state:{s}" for s in self.state_names}
        return [(name, ty) for name, ty in self.native.entry("saving", None, state_out).outputs if name not in forward]


_registry: list[_Registered] = []
_registry_lock = threading.Lock()


def _register(native: _native.Layer, backend: str) -> int:
    with _registry_lock:
        _registry.append(_Registered(native, backend))
        return len(_registry) - 1


def _signature(handle: int, kind: str, state_in: bool, state_out: bool) -> tuple[list[str], list[str]]:
    """The ops' arguments and results for a layer's graph ``kind`` (``forward``, ``saving``: the
    forward that keeps what the backward reads, ``vjp``: the backward that computes the forward
    again, ``backward``: the one that reads what ``saving`` kept), by the native entries' names,
    in the ops' order."""
    layer = _registry[handle]
    carried = [s for s in layer.state_names if s != "position"]
    inputs = ["x"] + [f"param:{p}" for p in layer.parameters]
    if state_in:
        inputs += [f"state:{s}" for s in layer.state_names]
    outputs = ["y"] + ([f"state:{s}" for s in layer.state_names] if state_out else [])
    if kind in ("forward", "saving"):
        return inputs, outputs + ([name for name, _ in layer.kept(state_out)] if kind == "saving" else [])
    inputs += ["grad:y"] + ([f"grad:state:{s}" for s in carried] if state_out else [])
    if kind == "backward":
        inputs += [name for name, _ in layer.kept(state_out)]
    outputs = ["grad:x"] + [f"grad:param:{p}" for p in layer.parameters]
    outputs += [f"grad:state:{s}" for s in carried] if state_in else []
    return inputs, outputs


_DTYPES = {torch.float32: "f32", torch.float64: "f64", torch.int64: "i64"}


def _address(t: torch.Tensor, name: str, device: torch.device) -> tuple[int, str, list[int]]:
    """A tensor as the native module takes it, refused with one line unless it can be used in place."""
    if t.device != device:
        raise Error(f"{name} is on {t.device} and x on {device}: give every tensor on one device")
    if t.device.type not in ("cpu", "cuda"):
        raise Error(f"{name} is on {t.device}: tttc's layers run on CPU and CUDA tensors")
    if t.dtype not in _DTYPES:
        raise Error(f"{name} is {t.dtype}: tttc's layers take float32 (float64 for gradient checks)")
    if not t.is_contiguous():
        raise Error(f"{name} is not contiguous (strides {tuple(t.stride())} for shape {tuple(t.shape)}): call .contiguous() first")
    return t.data_ptr(), _DTYPES[t.dtype], list(t.shape)


def _shape(dims: list, sizes: Mapping[str, Any]) -> list:
    """A shape from an entry's type: each axis ``ceil((symbol + offset) / per)`` or a constant."""
    return [offset if sym is None else -(-(sizes[sym] + offset) // per) for sym, offset, per in dims]


def _run(handle: int, kind: str, state_in: bool, state_out: bool, args: list[torch.Tensor]) -> list[torch.Tensor]:
    layer = _registry[handle]
    inputs, outputs = _signature(handle, kind, state_in, state_out)
    named = dict(zip(inputs, args))
    start = None
    if state_in:
        position = named["state:position"]
        start = int(position.reshape(-1)[0].item())
        if start < 0 or start != float(position.reshape(-1)[0].item()):
            raise Error(f"the state's position {position.reshape(-1)[0].item()} is not a whole number of tokens")
    entry = layer.native.entry(kind, start, state_out)
    x = named["x"]
    device = x.device
    sizes = {"B": x.shape[0], "T": x.shape[1]}
    results = {name: torch.empty(_shape(dims, sizes), dtype=x.dtype if ty != "i64" else torch.int64, device=device) for name, (ty, dims) in entry.outputs}
    # CUDA tensors run tttc's PTX program on their GPU, ordered on PyTorch's current stream there.
    gpu = (device.index, torch.cuda.current_stream(device).cuda_stream) if device.type == "cuda" else None
    entry.run(
        "cuda" if gpu else layer.backend,
        [_address(named[name], name, device) for name, _ in entry.inputs],
        [_address(results[name], name, device) for name, _ in entry.outputs],
        gpu,
    )
    def result(name: str) -> torch.Tensor:
        # A gradient the backward does not compute was kept by the forward (an argument of the
        # backward), or is zero (a parameter the output does not depend on).
        if name in results:
            return results[name]
        return named[name] if name in named else torch.zeros_like(named[name[len("grad:") :]])

    return [result(name) for name in outputs]


@torch.library.custom_op("tttc::layer", mutates_args=())
def _layer_op(handle: int, state_in: bool, state_out: bool, save: bool, args: list[torch.Tensor]) -> list[torch.Tensor]:
    return _run(handle, "saving" if save else "forward", state_in, state_out, args)


@torch.library.custom_op("tttc::layer_vjp", mutates_args=())
def _layer_vjp_op(handle: int, state_in: bool, state_out: bool, saved: bool, args: list[torch.Tensor]) -> list[torch.Tensor]:
    return _run(handle, "backward" if saved else "vjp", state_in, state_out, args)


@_layer_op.register_fake
def _layer_fake(handle: int, state_in: bool, state_out: bool, save: bool, args: list[torch.Tensor]) -> list[torch.Tensor]:
    layer = _registry[handle]
    x = args[0]
    sizes = {"B": x.shape[0], "T": x.shape[1]}
    outs = [x.new_empty(x.shape)]
    if state_out:
        for name, (_, dims) in layer.state:
            if state_in and layer.native.family == "llama" and name != "position":
                raise Error("a KV cache continued from a state grows by a length known only when it runs: trace attention without a state")
            outs.append(x.new_empty(_shape(dims, sizes)))
    if save:
        outs += [x.new_empty(_shape(dims, sizes)) for _, (_, dims) in layer.kept(state_out)]
    return outs


@_layer_vjp_op.register_fake
def _layer_vjp_fake(handle: int, state_in: bool, state_out: bool, saved: bool, args: list[torch.Tensor]) -> list[torch.Tensor]:
    inputs, outputs = _signature(handle, "backward" if saved else "vjp", state_in, state_out)
    named = dict(zip(inputs, args))
    # Each gradient has the shape of what it is the gradient of.
    return [named[name[len("grad:") :]].new_empty(named[name[len("grad:") :]].shape) for name in outputs]


def _setup_context(ctx, inputs, output):
    handle, state_in, state_out, save, args = inputs
    ctx.key = (handle, state_in, state_out, save)
    ctx.save_for_backward(*args, *output)
    ctx.count = len(args)
    # The kept residuals get no gradient: without this, autograd fills a zero tensor for each of
    # them on every backward (76 MB for TTT-Linear at T 2048).
    ctx.set_materialize_grads(False)


def _backward(ctx, grads):
    handle, state_in, state_out, save = ctx.key
    saved = ctx.saved_tensors
    args, outputs = saved[: ctx.count], saved[ctx.count :]
    names, out_names = _signature(handle, "saving" if save else "forward", state_in, state_out)
    forward = [(g, o, n) for g, o, n in zip(grads, outputs, out_names) if n == "y" or n.startswith("state:")]
    kept = [o for o, n in zip(outputs, out_names) if not (n == "y" or n.startswith("state:"))]
    # A result nothing was differentiated through has no gradient: zero. The state's position
    # carries none.
    cotangents = [g.contiguous() if g is not None else torch.zeros_like(o) for g, o, n in forward if n != "state:position"]
    results = _layer_vjp_op(handle, state_in, state_out, save, list(args) + cotangents + kept)
    _, grad_names = _signature(handle, "backward" if save else "vjp", state_in, state_out)
    by_name = dict(zip(grad_names, results))
    return None, None, None, None, [by_name.get(f"grad:{n}") for n in names]


_layer_op.register_autograd(_backward, setup_context=_setup_context)


class _Group(torch.nn.Module):
    """A node of a layer's parameter tree (``q_proj`` holding ``q_proj.weight``)."""


class Layer(torch.nn.Module):
    """One tttc-compiled sequence-mixing layer: ``y = layer(x)`` for ``x`` of shape ``[B, T, D]``.

    ``config`` is a Hugging Face config (a dict, its JSON text or an object with ``to_dict()``)
    whose ``model_type`` (``ttt``, ``mamba``, ``llama``, ``lact_swiglu`` or
    ``lact_bidirectional_layer``) says which layer: the TTT layer, the Mamba mixer,
    self-attention, LaCT's layer or its bidirectional layer. Parameters are named as the reference modules name them
    (``q_proj.weight``, ``W1``, ``A_log``), drawn from ``seed`` as tttc initialises a model.
    ``backend`` is the tttc backend the layer runs on (``cpu``, or ``interp`` for the reference
    interpreter).

    ``layer(x, state, return_state=True)`` starts from ``state`` (a dict of tensors as a previous
    call returned it; None: a fresh state) and also returns the state after the sequence, so a long
    sequence runs in pieces; gradients flow through the state unless it is detached.
    """

    def __init__(self, config: Any, *, seed: int = 0, backend: str = "cpu"):
        super().__init__()
        config = _config_dict(config)
        self.config = config
        native = _native.Layer(json.dumps(config))
        self._handle = _register(native, backend)
        for name, shape, data in native.initial_weights(seed):
            values = torch.frombuffer(bytearray(data), dtype=torch.float32).reshape(shape)
            *path, leaf = name.split(".")
            owner = self
            for part in path:
                if not hasattr(owner, part):
                    owner.add_module(part, _Group())
                owner = getattr(owner, part)
            owner.register_parameter(leaf, torch.nn.Parameter(values))

    @property
    def backend(self) -> str:
        return _registry[self._handle].backend

    @backend.setter
    def backend(self, name: str) -> None:
        _registry[self._handle].backend = name

    @property
    def state_names(self) -> list[str]:
        """The names of the state's tensors (docs/state.md, relative to the layer)."""
        return list(_registry[self._handle].state_names)

    def forward(self, x: torch.Tensor, state: Optional[Mapping[str, torch.Tensor]] = None, return_state: bool = False):
        layer = _registry[self._handle]
        if x.dim() != 3:
            raise Error(f"x must have shape [B, T, D], got {tuple(x.shape)}")
        # Attributes, not get_parameter: torch.func.functional_call swaps in plain tensors.
        args = [x] + [functools.reduce(getattr, p.split("."), self) for p in layer.parameters]
        if state is not None:
            missing = [s for s in layer.state_names if s not in state]
            if missing:
                raise Error(f"the state has no {missing[0]} (a state holds {', '.join(layer.state_names)})")
            args += [state[s] for s in layer.state_names]
        # Under autograd the forward keeps what the backward reads (the backward does not compute
        # the forward again); from a state (whose graph depends on its position) it does not.
        save = state is None and torch.is_grad_enabled() and any(a.requires_grad for a in args)
        outs = torch.ops.tttc.layer(self._handle, state is not None, return_state, save, args)
        if return_state:
            return outs[0], dict(zip(layer.state_names, outs[1 : 1 + len(layer.state_names)]))
        return outs[0]

    def extra_repr(self) -> str:
        width = self.config.get("hidden_size", self.config.get("dim"))
        return f"model_type={self.config['model_type']!r}, hidden_size={width}, backend={self.backend!r}"


def _config_dict(config: Any) -> dict:
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    elif isinstance(config, str):
        config = json.loads(config)
    return dict(config)


def _layer_config(model_type: str, config: dict, **defaults: Any) -> dict:
    """A standalone layer's config: the keys of the language model around it that do not shape the
    layer get neutral values."""
    config = {"model_type": model_type, **config}
    for key, value in {"vocab_size": 1, "num_hidden_layers": 1, **defaults}.items():
        config.setdefault(key, value)
    return config


class TTTLayer(Layer):
    """A TTT layer (ttt-lm-pytorch's ``TTTLinear``/``TTTMLP``, or any inner learner and inner
    optimizer ``ttt_inner`` describes) from a TTT config: ``hidden_size``, ``num_attention_heads``, ``mini_batch_size``,
    ``ttt_layer_type``, ``share_qk``, ``use_gate``, ``ttt_base_lr``, ... (docs/model-toml.md)."""

    def __init__(self, config: Any, *, seed: int = 0, backend: str = "cpu"):
        config = _config_dict(config)
        super().__init__(_layer_config("ttt", config, intermediate_size=1), seed=seed, backend=backend)


class TTTLinear(TTTLayer):
    """TTT-Linear: ``TTTLinear(hidden_size=768, num_attention_heads=12, mini_batch_size=16, **config)``."""

    def __init__(self, hidden_size: int = 768, num_attention_heads: int = 12, mini_batch_size: int = 16, *, seed: int = 0, backend: str = "cpu", **config: Any):
        config.update(hidden_size=hidden_size, num_attention_heads=num_attention_heads, mini_batch_size=mini_batch_size, ttt_layer_type="linear")
        super().__init__(config, seed=seed, backend=backend)


class TTTMLP(TTTLayer):
    """TTT-MLP: ``TTTMLP(hidden_size=768, num_attention_heads=12, mini_batch_size=16, **config)``."""

    def __init__(self, hidden_size: int = 768, num_attention_heads: int = 12, mini_batch_size: int = 16, *, seed: int = 0, backend: str = "cpu", **config: Any):
        config.update(hidden_size=hidden_size, num_attention_heads=num_attention_heads, mini_batch_size=mini_batch_size, ttt_layer_type="mlp")
        super().__init__(config, seed=seed, backend=backend)


class MambaMixer(Layer):
    """The Mamba mixer of transformers' ``MambaMixer``: ``MambaMixer(hidden_size=768,
    intermediate_size=2 * hidden_size, state_size=16, conv_kernel=4, **config)``."""

    def __init__(self, hidden_size: int = 768, *, seed: int = 0, backend: str = "cpu", **config: Any):
        config.setdefault("intermediate_size", 2 * hidden_size)
        super().__init__(_layer_config("mamba", {"hidden_size": hidden_size, **config}), seed=seed, backend=backend)


class Attention(Layer):
    """Llama's causal self-attention with RoPE and grouped-query heads: ``Attention(hidden_size,
    num_attention_heads, num_key_value_heads=None, **config)``."""

    def __init__(self, hidden_size: int = 768, num_attention_heads: int = 12, *, seed: int = 0, backend: str = "cpu", **config: Any):
        config.update(hidden_size=hidden_size, num_attention_heads=num_attention_heads)
        super().__init__(_layer_config("llama", config, intermediate_size=1), seed=seed, backend=backend)


class LaCTLayer(Layer):
    """LaCT's causal layer (docs/lact.md: sliding-window attention and SwiGLU fast weights updated
    per chunk) from a LaCT config: ``hidden_size``, ``num_attn_heads``, ``num_lact_heads``,
    ``lact_chunk_size``, ``window_size``, ``use_momentum``, ``use_muon``, ... (docs/model-toml.md);
    parameters named as LaCT's ``attn`` module names them."""

    def __init__(self, config: Any, *, seed: int = 0, backend: str = "cpu"):
        super().__init__(_layer_config("lact_swiglu", _config_dict(config)), seed=seed, backend=backend)


class BidirectionalLaCT(Layer):
    """LaCT's bidirectional layer for video and image models (docs/lact.md): the fast weights
    take one update on the whole sequence, then every token is read through them.
    ``BidirectionalLaCT(dim, head_dim, inter_multi=1, use_o_norm=True, qk_l2_norm=True,
    use_muon=True, base_lr=0.01)``; parameters named as the published layer's (``to_qkv.weight``,
    ``w0``, ``w1``, ``w2``, ...)."""

    def __init__(self, dim: int, head_dim: int, *, seed: int = 0, backend: str = "cpu", **config: Any):
        super().__init__({"model_type": "lact_bidirectional_layer", "dim": dim, "head_dim": head_dim, **config}, seed=seed, backend=backend)


def from_reference(module: torch.nn.Module, *, backend: str = "cpu") -> TTTLayer:
    """A ttt-lm-pytorch ``TTTLinear`` or ``TTTMLP`` layer as tttc's, with its weights."""
    kinds = {"TTTLinear": "linear", "TTTMLP": "mlp"}
    kind = kinds.get(type(module).__name__)
    if kind is None:
        raise Error(f"from_reference converts ttt-lm-pytorch's TTTLinear and TTTMLP, not {type(module).__name__}")
    config = {k: v for k, v in _config_dict(module.config).items() if k in _TTT_LAYER_KEYS}
    config["ttt_layer_type"] = kind
    layer = TTTLayer(config, backend=backend)
    weights = {k: v for k, v in module.state_dict().items() if k in dict(layer.named_parameters())}
    layer.load_state_dict(weights, strict=True)
    return layer


# The TTT config keys that shape a TTT layer (the rest describe the model around it).
_TTT_LAYER_KEYS = {
    "hidden_size",
    "num_attention_heads",
    "mini_batch_size",
    "ttt_base_lr",
    "rope_theta",
    "share_qk",
    "use_gate",
    "conv_kernel",
    "ttt_inner",
    "initializer_range",
}


class _RMSNorm(torch.nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


class _SwiGLU(torch.nn.Module):
    def __init__(self, dim: int, inter: int, bias: bool):
        super().__init__()
        self.gate_proj = torch.nn.Linear(dim, inter, bias=bias)
        self.up_proj = torch.nn.Linear(dim, inter, bias=bias)
        self.down_proj = torch.nn.Linear(inter, dim, bias=bias)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class _CausalConv(torch.nn.Module):
    """TTT's pre-conv: an RMSNorm, then a depthwise causal convolution (``conv.norm``, ``conv.conv``)."""

    def __init__(self, dim: int, kernel: int, eps: float):
        super().__init__()
        self.norm = _RMSNorm(dim, eps)
        self.conv = torch.nn.Conv1d(dim, dim, kernel, groups=dim, padding=kernel - 1)

    def forward(self, x):
        t = x.shape[1]
        return self.conv(self.norm(x).transpose(1, 2))[..., :t].transpose(1, 2)


class _Block(torch.nn.Module):
    """A residual block around a tttc layer, named as the family's checkpoints name it."""

    def __init__(self, shape: dict, config: dict, backend: str):
        super().__init__()
        dim, eps, family = shape["hidden_size"], shape["norm_eps"], shape["family"]
        self.family = family
        if family == "ttt":
            if shape["pre_conv"]:
                self.conv = _CausalConv(dim, shape["conv_kernel"], eps)
            self.seq_norm = _RMSNorm(dim, eps)
            self.seq_modeling_block = Layer(config, backend=backend)
            self.ffn_norm = _RMSNorm(dim, eps)
            self.mlp = _SwiGLU(dim, shape["intermediate_size"], shape["mlp_bias"])
        elif family == "mamba":
            self.norm = _RMSNorm(dim, eps)
            self.mixer = Layer(config, backend=backend)
        elif family == "lact":
            self.attn_norm = _RMSNorm(dim, eps)
            self.attn = Layer(config, backend=backend)
            self.mlp_norm = _RMSNorm(dim, eps)
            self.mlp = _SwiGLU(dim, shape["intermediate_size"], shape["mlp_bias"])
        else:
            self.input_layernorm = _RMSNorm(dim, eps)
            self.self_attn = Layer(config, backend=backend)
            self.post_attention_layernorm = _RMSNorm(dim, eps)
            self.mlp = _SwiGLU(dim, shape["intermediate_size"], shape["mlp_bias"])

    def forward(self, h):
        if self.family == "ttt":
            if hasattr(self, "conv"):
                h = h + self.conv(h)
            h = h + self.seq_modeling_block(self.seq_norm(h))
            return h + self.mlp(self.ffn_norm(h))
        if self.family == "mamba":
            return h + self.mixer(self.norm(h))
        if self.family == "lact":
            h = h + self.attn(self.attn_norm(h))
            return h + self.mlp(self.mlp_norm(h))
        h = h + self.self_attn(self.input_layernorm(h))
        return h + self.mlp(self.post_attention_layernorm(h))


class _Backbone(torch.nn.Module):
    def __init__(self, shape: dict, config: dict, backend: str):
        super().__init__()
        names = {"mamba": ("embeddings", "norm_f"), "lact": ("embeddings", "norm")}.get(shape["family"], ("embed_tokens", "norm"))
        self._names = names
        # A pad token's row gets no gradient from the lookup (LaCT's pad_token_id).
        embedding = torch.nn.Embedding(shape["vocab_size"], shape["hidden_size"], padding_idx=shape.get("pad_token_id"))
        self.add_module(names[0], embedding)
        self.layers = torch.nn.ModuleList(_Block(shape, config, backend) for _ in range(shape["num_hidden_layers"]))
        self.add_module(names[1], _RMSNorm(shape["hidden_size"], shape["norm_eps"]))

    def forward(self, input_ids):
        h = getattr(self, self._names[0])(input_ids)
        for block in self.layers:
            h = block(h)
        return getattr(self, self._names[1])(h)


class CausalLMOutput:
    """What ``CausalLM`` returns, as transformers' models do: ``.logits`` and, given labels, ``.loss``."""

    def __init__(self, logits: torch.Tensor, loss: Optional[torch.Tensor]):
        self.logits = logits
        self.loss = loss


class CausalLM(torch.nn.Module):
    """A causal language model whose sequence-mixing layers are tttc's and whose embedding, norms,
    MLPs and head are PyTorch's, with the parameter names of the family's checkpoints
    (``model.layers.0.seq_modeling_block.W1``, ``backbone.layers.0.mixer.A_log``,
    ``model.layers.0.attn.w1`` for LaCT). ``model(input_ids, labels=input_ids)`` gives ``.logits``
    and the mean next-token cross-entropy ``.loss``."""

    def __init__(self, config: Any, *, backend: str = "cpu"):
        super().__init__()
        config = _config_dict(config)
        self.config = config
        shape = json.loads(_native.model_shape(json.dumps(config)))
        self._shape = shape
        self.add_module("backbone" if shape["family"] == "mamba" else "model", _Backbone(shape, config, backend))
        if not shape["tie_word_embeddings"]:
            self.lm_head = torch.nn.Linear(shape["hidden_size"], shape["vocab_size"], bias=False)

    def forward(self, input_ids: torch.Tensor, labels: Optional[torch.Tensor] = None) -> CausalLMOutput:
        backbone = self.backbone if self._shape["family"] == "mamba" else self.model
        h = backbone(input_ids)
        head = self.lm_head.weight if hasattr(self, "lm_head") else getattr(backbone, backbone._names[0]).weight
        logits = h @ head.t()
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))
        return CausalLMOutput(logits, loss)


def from_pretrained(folder: str, *, backend: str = "cpu") -> CausalLM:
    """A Hugging Face style folder (``config.json`` + ``model.safetensors``, model_type ``ttt``,
    ``mamba``, ``llama`` or ``lact_swiglu``) or a ``model.toml`` as a :class:`CausalLM`, weights
    loaded (checked as ``tttc run`` checks them)."""
    config_json, weights = _native.load_model(str(folder))
    model = CausalLM(json.loads(config_json), backend=backend)
    state = {name: torch.frombuffer(bytearray(data), dtype=torch.float32).reshape(shape) for name, shape, data in weights}
    model.load_state_dict(state, strict=True)
    return model


def save_pretrained(model: CausalLM, folder: str) -> None:
    """Writes ``model`` as a folder ``tttc run`` and :func:`from_pretrained` load: ``config.json``
    and ``model.safetensors`` (float32), which appear together or not at all."""
    weights = {name: p.detach().to("cpu", torch.float32).contiguous() for name, p in model.named_parameters()}
    _native.save_model(str(folder), json.dumps(model.config), [(name, _address(t, name, t.device)) for name, t in weights.items()])
