"""tttc's compiled layers as JAX functions, on the CPU.

A layer's forward graph and its vector-Jacobian product (tttc's own autodiff) are XLA custom calls
through the typed FFI (``jax.ffi``), joined by ``jax.custom_vjp``: the layer works inside
``jax.jit``, ``jax.grad`` and ``jax.value_and_grad``, reading and writing XLA's buffers in place.
docs/python.md describes it.
"""

from __future__ import annotations

import ctypes
import json
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from . import _native
from ._native import Error

__all__ = ["Error", "Layer", "ttt_layer", "bidirectional_lact_layer"]

_TARGET = "tttc_layer"
_registered = False


def _register_target() -> None:
    """Registers tttc's XLA FFI handler (once per process)."""
    global _registered
    if not _registered:
        handler = ctypes.cast(_native.xla_handler(), ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p))
        jax.ffi.register_ffi_target(_TARGET, jax.ffi.pycapsule(handler), platform="cpu")
        _registered = True


def _call(entry, named: Mapping[str, jax.Array], sizes: Mapping[str, int]) -> dict[str, jax.Array]:
    """Runs a compiled graph of a layer as an XLA custom call: its results by name."""
    args = [named[name] for name, _ in entry.inputs]
    results = [jax.ShapeDtypeStruct([n if s is None else -(-(sizes[s] + n) // per) for s, n, per in dims], jnp.float32) for _, (_, dims) in entry.outputs]
    outs = jax.ffi.ffi_call(_TARGET, results)(*args, entry=np.int64(entry.xla_id))
    return {name: out for (name, _), out in zip(entry.outputs, outs)}


class Layer:
    """One tttc-compiled sequence-mixing layer as a JAX function: ``y = layer(params, x)`` for ``x``
    float32 ``[B, T, D]`` and ``params`` a dict of arrays named as the reference modules name them
    (``layer.init(seed)`` draws them as tttc does). ``config`` is a Hugging Face config (``model_type``
    ``ttt``, ``mamba``, ``llama``, ``lact_swiglu`` or ``lact_bidirectional_layer``), as for
    ``tttc.torch.Layer``."""

    def __init__(self, config: Any):
        if hasattr(config, "to_dict"):
            config = config.to_dict()
        config = dict(json.loads(config) if isinstance(config, str) else config)
        # A language model's layer: the keys of the model around it that do not shape the layer
        # get neutral values (a bidirectional LaCT layer's config has its own keys only).
        if config.get("model_type") != "lact_bidirectional_layer":
            for key, value in {"vocab_size": 1, "num_hidden_layers": 1, "intermediate_size": 2 * config.get("hidden_size", 1)}.items():
                config.setdefault(key, value)
        self.config = config
        self._native = _native.Layer(json.dumps(config))
        self.parameter_shapes = dict(self._native.parameters())
        _register_target()
        forward, saving, backward = (self._native.entry(kind) for kind in ("forward", "saving", "backward"))
        names = list(self.parameter_shapes)
        # What the forward keeps for the backward: the residuals, as custom_vjp's.
        kept = [name for name, _ in saving.outputs if name != "y"]

        def sizes(x):
            return {"B": x.shape[0], "T": x.shape[1]}

        def arguments(x, params):
            return {"x": x, **{f"param:{n}": p for n, p in zip(names, params)}}

        @jax.custom_vjp
        def apply(x, params):
            return _call(forward, arguments(x, params), sizes(x))["y"]

        def apply_forward(x, params):
            outs = _call(saving, arguments(x, params), sizes(x))
            return outs["y"], (x, params, tuple(outs[n] for n in kept))

        def apply_backward(saved, dy):
            x, params, residuals = saved
            named = {**arguments(x, params), "grad:y": dy, **dict(zip(kept, residuals))}
            grads = _call(backward, named, sizes(x))
            grads.update((n, r) for n, r in named.items() if n.startswith("grad:param:"))
            return grads["grad:x"], tuple(grads.get(f"grad:param:{n}", jnp.zeros_like(p)) for n, p in zip(names, params))

        apply.defvjp(apply_forward, apply_backward)
        self._apply = apply
        self._names = names

    def init(self, seed: int = 0) -> dict[str, jax.Array]:
        """The parameters drawn from ``seed`` as tttc initialises a model's."""
        return {name: jnp.asarray(np.frombuffer(data, dtype=np.float32).reshape(shape)) for name, shape, data in self._native.initial_weights(seed)}

    def __call__(self, params: Mapping[str, jax.Array], x: jax.Array) -> jax.Array:
        if x.ndim != 3:
            raise Error(f"x must have shape [B, T, D], got {tuple(x.shape)}")
        if x.dtype != jnp.float32:
            raise Error(f"x is {x.dtype}: tttc's JAX layers take float32")
        missing = [n for n in self._names if n not in params]
        if missing:
            raise Error(f"params has no {missing[0]}")
        for n in self._names:
            if tuple(params[n].shape) != tuple(self.parameter_shapes[n]) or params[n].dtype != jnp.float32:
                raise Error(f"param {n} is {params[n].dtype}{list(params[n].shape)}, the layer takes float32{self.parameter_shapes[n]}")
        return self._apply(x, tuple(params[n] for n in self._names))


def ttt_layer(hidden_size: int = 768, num_attention_heads: int = 12, mini_batch_size: int = 16, ttt_layer_type: str = "linear", **config: Any) -> Layer:
    """A TTT layer (``ttt_layer_type`` ``linear`` or ``mlp``, or any ``ttt_inner`` learner and
    inner optimizer) as a :class:`Layer`: ``layer = ttt_layer(64, 4, 16); y = layer(layer.init(), x)``."""
    config.update(model_type="ttt", hidden_size=hidden_size, num_attention_heads=num_attention_heads, mini_batch_size=mini_batch_size, ttt_layer_type=ttt_layer_type)
    return Layer(config)


def bidirectional_lact_layer(dim: int, head_dim: int, **config: Any) -> Layer:
    """LaCT's bidirectional layer (docs/lact.md) as a :class:`Layer`: the fast weights take one
    update on the whole sequence, then every token is read through them. Keys: ``inter_multi``,
    ``use_o_norm``, ``qk_l2_norm``, ``use_muon``, ``base_lr``."""
    return Layer({"model_type": "lact_bidirectional_layer", "dim": dim, "head_dim": head_dim, **config})
