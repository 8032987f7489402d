"""The layers on CUDA tensors: tttc's PTX program on the tensors' GPU, ordered on PyTorch's current
stream. Skipped (as needing a GPU) where PyTorch sees none."""

import pytest
import torch

import tttc.torch as tt
from conftest import read_safetensors, within
from test_layers import TINY, randomised

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")


def test_a_whole_model_on_the_gpu_matches_the_reference(case):
    model = tt.from_pretrained(case).cuda()
    io = read_safetensors(case / "io.safetensors")
    grads = read_safetensors(case / "grads.safetensors")
    ids = io["input_ids"].cuda()
    out = model(ids, labels=ids)
    assert within(out.logits.cpu(), io["logits"], 1e-5) <= 0
    assert within(out.loss.cpu(), io["loss"], 1e-5) <= 0
    out.loss.backward()
    for name, p in model.named_parameters():
        assert within(p.grad.cpu(), grads[name], 1e-4) <= 0, name


@pytest.mark.parametrize("kind", TINY)
def test_the_gpu_gives_the_cpu_outputs_state_and_gradients(kind):
    layer = randomised(TINY[kind]())
    x = torch.randn(2, 11, 8, generator=torch.Generator().manual_seed(8))
    r = torch.randn(2, 11, 8, generator=torch.Generator().manual_seed(9))
    results = []
    for device in ["cpu", "cuda"]:
        layer.zero_grad()
        layer.to(device)
        xd = x.to(device).detach().requires_grad_()
        first, state = layer(xd[:, :5].contiguous(), return_state=True)
        second, after = layer(xd[:, 5:].contiguous(), state, return_state=True)
        y = torch.cat([first, second], dim=1)
        (y * r.to(device)).sum().backward()
        results.append([y, xd.grad, *after.values(), *(p.grad for p in layer.parameters())])
    for cpu, gpu in zip(*results):
        assert (gpu.cpu() - cpu).abs().max() <= 1e-4 * cpu.abs().max() + 1e-6


def test_runs_are_ordered_on_the_current_stream():
    layer = randomised(TINY["ttt-linear"]()).cuda()
    x = torch.randn(4, 64, 8, device="cuda")
    expected = layer(x)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        # Written on the side stream just before the layer reads it there.
        x2 = x * 1.0
        y = layer(x2)
    stream.synchronize()
    assert torch.equal(y, expected)


def test_tensors_on_two_devices_are_refused():
    layer = TINY["ttt-linear"]().cuda()
    with pytest.raises(tt.Error, match="one device"):
        layer(torch.randn(1, 4, 8))
