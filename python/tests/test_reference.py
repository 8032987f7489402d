"""A whole language model in PyTorch around tttc's layers (embedding, norms, convolutions, SwiGLU
and head in torch; the sequence-mixing layers from tttc) reproduces every reference case's logits,
loss and gradients, at SPEC's tolerances."""

import torch

import tttc.torch as tt
from conftest import read_safetensors, within


def test_logits_loss_and_gradients_match_the_reference(case):
    model = tt.from_pretrained(case)
    io = read_safetensors(case / "io.safetensors")
    grads = read_safetensors(case / "grads.safetensors")
    out = model(io["input_ids"], labels=io["input_ids"])
    assert within(out.logits, io["logits"], 1e-5) <= 0
    assert within(out.loss, io["loss"], 1e-5) <= 0
    out.loss.backward()
    names = dict(model.named_parameters())
    assert set(names) == set(grads), "the parameters are named as the checkpoint's"
    for name, p in names.items():
        assert p.grad is not None, name
        assert within(p.grad, grads[name], 1e-4) <= 0, name


def test_the_parameters_carry_the_checkpoint_names(case):
    model = tt.from_pretrained(case)
    weights = read_safetensors(case / "model.safetensors")
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), weights[name]), name
