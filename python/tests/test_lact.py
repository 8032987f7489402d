"""LaCT's bidirectional layer (SPEC-lact.md §8) in PyTorch and JAX: every layer case's output,
its input gradient and every parameter's gradient (of Σ y⊙r) at SPEC's tolerances; and LaCT's
language model from its checkpoint folder (logits, loss and gradients)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import tttc.torch as tt
from conftest import read_safetensors, within

ROOT = Path(__file__).resolve().parents[2] / "tests"
LAYER_CASES = sorted(p for folder in ("vectors-lact", "vectors-lact-switches") for p in (ROOT / folder).iterdir() if (p / "layer.safetensors").is_file())


@pytest.fixture(params=LAYER_CASES, ids=lambda p: p.name)
def layer_case(request) -> Path:
    return request.param


def test_the_bidirectional_layer_matches_the_reference_in_torch(layer_case):
    config = json.loads((layer_case / "config.json").read_text())
    layer = tt.Layer(config)
    layer.load_state_dict(read_safetensors(layer_case / "model.safetensors"))
    io = read_safetensors(layer_case / "layer.safetensors")
    x = io["x"].clone().requires_grad_(True)
    y = layer(x)
    assert within(y, io["y"], 1e-5) <= 0
    (y * io["r"]).sum().backward()
    assert within(x.grad, io["dx"], 1e-4) <= 0
    grads = read_safetensors(layer_case / "grads.safetensors")
    names = dict(layer.named_parameters())
    assert set(names) == set(grads), "the parameters are named as the published layer's"
    for name, p in names.items():
        assert within(p.grad, grads[name], 1e-4) <= 0, name


def test_the_bidirectional_layer_matches_the_reference_in_jax(layer_case):
    jax = pytest.importorskip("jax")
    import tttc.jax as tj

    config = json.loads((layer_case / "config.json").read_text())
    layer = tj.bidirectional_lact_layer(**{k: v for k, v in config.items() if k != "model_type"})
    params = {n: jax.numpy.asarray(t.numpy()) for n, t in read_safetensors(layer_case / "model.safetensors").items()}
    io = read_safetensors(layer_case / "layer.safetensors")
    x, r = jax.numpy.asarray(io["x"].numpy()), jax.numpy.asarray(io["r"].numpy())
    y, vjp = jax.vjp(lambda p, x: layer(p, x), params, x)
    assert within(torch.from_numpy(np.asarray(y)), io["y"], 1e-5) <= 0
    dparams, dx = vjp(r)
    assert within(torch.from_numpy(np.asarray(dx)), io["dx"], 1e-4) <= 0
    for name, want in read_safetensors(layer_case / "grads.safetensors").items():
        assert within(torch.from_numpy(np.asarray(dparams[name])), want, 1e-4) <= 0, name


def test_the_module_takes_its_constructor_arguments():
    layer = tt.BidirectionalLaCT(32, 8, use_muon=False, seed=1)
    assert layer(torch.randn(1, 5, 32)).shape == (1, 5, 32)
    assert "lact_bidirectional_layer" in repr(layer)
    with pytest.raises(tt.Error, match="head_dim"):
        tt.BidirectionalLaCT(30, 8)


LM_CASES = sorted(p for p in (ROOT / "vectors-lact").iterdir() if (p / "io.safetensors").is_file() and (p / "grads.safetensors").is_file())


@pytest.mark.parametrize("case", LM_CASES, ids=lambda p: p.name)
def test_a_lact_language_model_matches_the_reference(case):
    """A LaCT checkpoint as a whole model (PyTorch's embedding, norms, MLPs and head around tttc's
    LaCT layers): the reference logits, loss and every parameter's gradient, the parameters named
    as LaCT's checkpoints name them."""
    model = tt.from_pretrained(case)
    io = read_safetensors(case / "io.safetensors")
    out = model(io["input_ids"], labels=io["input_ids"])
    assert within(out.logits, io["logits"], 1e-5) <= 0
    assert within(out.loss, io["loss"], 1e-5) <= 0
    out.loss.backward()
    grads = read_safetensors(case / "grads.safetensors")
    names = dict(model.named_parameters())
    assert set(names) == set(grads), "the parameters are named as the checkpoint's"
    for name, p in names.items():
        assert within(p.grad, grads[name], 1e-4) <= 0, name


def test_a_pad_token_row_gets_no_gradient_from_the_lookup():
    """With pad_token_id set, that embedding row's gradient is the head's alone (none untied)."""
    config = json.loads((LM_CASES[0] / "config.json").read_text())
    config["pad_token_id"] = 3
    model = tt.CausalLM(config)
    ids = torch.tensor([[3, 5, 3, 7, 1, 3, 2, 9]])
    model(ids, labels=ids).loss.backward()
    embedding = model.model.embeddings.weight.grad
    assert torch.count_nonzero(embedding[3]) == 0 and torch.count_nonzero(embedding[5]) > 0
