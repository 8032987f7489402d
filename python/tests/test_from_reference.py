"""`tt.from_reference` converts ttt-lm-pytorch's TTTLinear and TTTMLP layers: same outputs and
gradients as the reference module. Needs the reference's ttt.py (and transformers): point
TTT_PYTORCH_PATH at a ttt-lm-pytorch checkout; skipped without it."""

import importlib.util
import os
from pathlib import Path

import pytest
import torch

import tttc.torch as tt

PATH = os.environ.get("TTT_PYTORCH_PATH")
pytestmark = pytest.mark.skipif(not PATH, reason="needs ttt-lm-pytorch (TTT_PYTORCH_PATH)")


def reference_module():
    path = Path(PATH)
    spec = importlib.util.spec_from_file_location("ttt_reference", path / "ttt.py" if path.is_dir() else path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("kind", ["linear", "mlp"])
@pytest.mark.parametrize("conv_gate", [False, True])
def test_a_converted_reference_layer_gives_its_outputs_and_gradients(kind, conv_gate):
    ttt = reference_module()
    config = ttt.TTTConfig(hidden_size=64, num_attention_heads=4, mini_batch_size=16, ttt_layer_type=kind, share_qk=conv_gate, use_gate=conv_gate, vocab_size=97, intermediate_size=128, num_hidden_layers=1)
    torch.manual_seed(0)
    reference = (ttt.TTTLinear if kind == "linear" else ttt.TTTMLP)(config, layer_idx=0)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ours = tt.from_reference(reference)
    x = torch.randn(2, 37, 64)
    xr, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ref = reference(xr, position_ids=torch.arange(37)[None].expand(2, -1))
    y = ours(xo)
    assert (y - y_ref).abs().max() <= 1e-5 * y_ref.abs().max() + 1e-6
    r = torch.randn_like(y)
    (y_ref * r).sum().backward()
    (y * r).sum().backward()
    assert (xo.grad - xr.grad).abs().max() <= 1e-4 * xr.grad.abs().max() + 1e-6
    params = dict(reference.named_parameters())
    for name, p in ours.named_parameters():
        want = params[name].grad
        assert (p.grad - want).abs().max() <= 1e-4 * want.abs().max() + 1e-6, name
