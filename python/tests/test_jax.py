"""tttc's layers in JAX: a TTT language model written in JAX around tttc's layer (the XLA FFI
custom call with its custom VJP) reproduces a reference case's logits, loss and gradients under
jax.jit and jax.value_and_grad."""

import json

import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import tttc  # noqa: E402
import tttc.jax as tj  # noqa: E402
from conftest import VECTORS, read_safetensors, within  # noqa: E402

CASE = VECTORS / "ttt-linear-transformer-backbone"


def rms_norm(x, w, eps):
    return w * x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)


def test_a_jax_language_model_around_the_layer_matches_the_reference():
    config = json.loads((CASE / "config.json").read_text())
    assert not config["pre_conv"] and config["tie_word_embeddings"], "the JAX model below has no pre-conv and a tied head"
    layer = tj.Layer(config)
    weights = {k: jnp.asarray(v.numpy()) for k, v in read_safetensors(CASE / "model.safetensors").items()}
    io = read_safetensors(CASE / "io.safetensors")
    grads = read_safetensors(CASE / "grads.safetensors")
    ids = jnp.asarray(io["input_ids"].numpy())
    eps = config["rms_norm_eps"]

    def model(w, ids):
        h = w["model.embed_tokens.weight"][ids]
        for i in range(config["num_hidden_layers"]):
            p = f"model.layers.{i}."
            block = {n: w[p + "seq_modeling_block." + n] for n in layer.parameter_shapes}
            h = h + layer(block, rms_norm(h, w[p + "seq_norm.weight"], eps))
            x = rms_norm(h, w[p + "ffn_norm.weight"], eps)
            gate, up = x @ w[p + "mlp.gate_proj.weight"].T, x @ w[p + "mlp.up_proj.weight"].T
            h = h + (jax.nn.silu(gate) * up) @ w[p + "mlp.down_proj.weight"].T
        logits = rms_norm(h, w["model.norm.weight"], eps) @ w["model.embed_tokens.weight"].T
        logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
        loss = -jnp.mean(jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1))
        return loss, logits

    (loss, logits), g = jax.jit(jax.value_and_grad(model, has_aux=True))(weights, ids)
    import torch

    assert within(torch.from_numpy(np.array(logits)), io["logits"], 1e-5) <= 0
    assert within(torch.tensor(float(loss)), io["loss"], 1e-5) <= 0
    assert set(g) == set(grads)
    for name, ref in grads.items():
        assert within(torch.from_numpy(np.array(g[name])), ref, 1e-4) <= 0, name


def test_the_jax_layer_gives_the_pytorch_layer_outputs_and_gradients():
    import torch

    import tttc.torch as tt

    layer, reference = tj.ttt_layer(16, 2, 4, ttt_layer_type="mlp", use_gate=True), tt.TTTMLP(16, 2, 4, use_gate=True)
    params = layer.init(0)
    x = np.random.default_rng(0).standard_normal((2, 9, 16)).astype(np.float32)
    value, (gp, gx) = jax.jit(jax.value_and_grad(lambda p, x: jnp.sum(jnp.sin(layer(p, x))), argnums=(0, 1)))(params, jnp.asarray(x))
    xt = torch.from_numpy(x.copy()).requires_grad_()
    expected = torch.sin(reference(xt)).sum()
    expected.backward()
    assert abs(float(value) - expected.item()) <= 1e-5 * abs(expected.item())
    assert np.abs(np.asarray(gx) - xt.grad.numpy()).max() <= 1e-6
    for name, p in reference.named_parameters():
        assert np.abs(np.asarray(gp[name]) - p.grad.numpy()).max() <= 1e-6 * (1 + np.abs(p.grad.numpy()).max()), name


def test_bad_jax_inputs_raise_one_line_errors():
    layer = tj.ttt_layer(8, 2, 4)
    params = layer.init()
    for call, words in [
        (lambda: layer(params, jnp.zeros((4, 8))), "[B, T, D]"),
        (lambda: layer(params, jnp.zeros((1, 4, 8), jnp.int32)), "float32"),
        (lambda: layer({}, jnp.zeros((1, 4, 8))), "params has no"),
        (lambda: layer({**params, "W1": jnp.zeros((3,))}, jnp.zeros((1, 4, 8))), "param W1"),
        (lambda: layer(params, jnp.zeros((1, 4, 6))), "x"),
    ]:
        with pytest.raises((tttc.Error, Exception)) as e:
            jax.block_until_ready(call())
        assert words in str(e.value).splitlines()[0] or words in str(e.value), str(e.value)
