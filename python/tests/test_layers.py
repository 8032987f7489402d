"""tttc's layers as PyTorch modules: gradients against finite differences (float64 runs tttc's
interpreter in f64), the state in and out, chunked sequences, torch.compile and the errors."""

import pytest
import torch

import tttc
import tttc.torch as tt

# Tiny layers of every family, so that finite differences stay quick.
TINY = {
    "ttt-linear": lambda: tt.TTTLinear(8, 2, 4),
    "ttt-mlp": lambda: tt.TTTMLP(8, 2, 4, share_qk=True, use_gate=True),
    "ttt-relu3": lambda: tt.TTTLayer({"hidden_size": 8, "num_attention_heads": 2, "mini_batch_size": 4, "ttt_inner": {"widths": [1, 1], "activation": "relu", "bias": True}}),
    # LaCT's apply-then-update optimizer on a TTT learner (Muon left out as for LaCT below).
    "ttt-chunk": lambda: tt.TTTLayer(
        {"hidden_size": 8, "num_attention_heads": 2, "mini_batch_size": 4, "ttt_inner": {"update": "per_chunk", "momentum": True, "forget": True, "renormalize": "pre"}}
    ),
    # LaCT's fast-weight loop from parts (SwiGLU, the dot-product loss, a rate per matrix), on a
    # fractional width; Muon left out likewise.
    "ttt-lact-parts": lambda: tt.TTTLayer(
        {
            "hidden_size": 8,
            "num_attention_heads": 2,
            "mini_batch_size": 4,
            "ttt_inner": {
                "widths": [1.5],
                "activation": "silu",
                "glu": True,
                "bias": False,
                "residual": False,
                "norm": "none",
                "loss": "dot_product",
                "update": "per_chunk",
                "learning_rates": "per_matrix",
                "momentum": True,
                "renormalize": "post",
            },
        }
    ),
    "mamba": lambda: tt.MambaMixer(8, intermediate_size=8, state_size=3, time_step_rank=2),
    "attention": lambda: tt.Attention(8, 2, num_key_value_heads=1),
    # Without Muon: on so small a layer its Newton-Schulz amplifies f32 rounding and curves too
    # sharply for these finite differences (SPEC-lact.md §6); the reference cases check Muon.
    "lact": lambda: tt.LaCTLayer({"hidden_size": 8, "num_attn_heads": 2, "num_lact_heads": 2, "lact_chunk_size": 4, "window_size": 3, "ttt_prenorm": True}),
}


def randomised(layer: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Parameters away from their initial values (zeros, ones), so that every term matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return layer


@pytest.mark.parametrize("kind", TINY)
def test_gradients_of_x_and_parameters_match_finite_differences(kind):
    layer = randomised(TINY[kind]()).double()
    names = [n for n, _ in layer.named_parameters()]
    x = torch.randn(1, 6, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)

    def f(x, *params):
        return torch.func.functional_call(layer, dict(zip(names, params)), (x,))

    params = tuple(p.detach().clone().requires_grad_() for p in layer.parameters())
    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind", TINY)
def test_gradients_of_the_state_match_finite_differences(kind):
    layer = randomised(TINY[kind]()).double()
    x = torch.randn(1, 5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    # A state 5 tokens in: inside a TTT mini-batch of 4.
    _, state = layer(x, return_state=True)
    carried = [n for n in state if n != "position"]

    def f(x, *values):
        y, after = layer(x, {**dict(zip(carried, values)), "position": state["position"]}, return_state=True)
        return (y, *(after[n] for n in carried))

    values = tuple(state[n].detach().clone().requires_grad_() for n in carried)
    assert torch.autograd.gradcheck(f, (x.clone().requires_grad_(), *values), eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind", TINY)
@pytest.mark.parametrize("split", [1, 3, 4, 5, 8])
def test_a_sequence_in_pieces_gives_the_output_and_gradients_of_one_piece(kind, split):
    layer = randomised(TINY[kind]())
    x = torch.randn(2, 9, 8, generator=torch.Generator().manual_seed(3), requires_grad=True)
    r = torch.randn(2, 9, 8, generator=torch.Generator().manual_seed(4))
    whole = layer(x)
    (whole * r).sum().backward()
    expected = {n: p.grad.clone() for n, p in layer.named_parameters()}
    expected_x = x.grad.clone()
    layer.zero_grad()
    x.grad = None

    first, state = layer(x[:, :split].contiguous(), return_state=True)
    second = layer(x[:, split:].contiguous(), state)
    pieces = torch.cat([first, second], dim=1)
    assert (pieces - whole).abs().max() <= 1e-5 * whole.abs().max() + 1e-6
    (pieces * r).sum().backward()
    assert (x.grad - expected_x).abs().max() <= 1e-4 * expected_x.abs().max() + 1e-6
    for n, p in layer.named_parameters():
        assert (p.grad - expected[n]).abs().max() <= 1e-4 * expected[n].abs().max() + 1e-6, n


def test_a_detached_state_stops_the_gradient_at_the_boundary():
    layer = randomised(TINY["ttt-linear"]())
    x = torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(5), requires_grad=True)
    first, state = layer(x[:, :4].contiguous(), return_state=True)
    second = layer(x[:, 4:].contiguous(), {k: v.detach() for k, v in state.items()})
    second.sum().backward()
    assert torch.count_nonzero(x.grad[:, :4]) == 0
    assert torch.count_nonzero(x.grad[:, 4:]) > 0


@pytest.mark.parametrize("kind", ["ttt-linear", "mamba"])
def test_torch_compile_gives_the_same_outputs_and_gradients_without_graph_breaks(kind):
    torch._dynamo.reset()
    layer = randomised(TINY[kind]())
    x = torch.randn(2, 7, 8, generator=torch.Generator().manual_seed(6), requires_grad=True)

    def step(x):
        h = torch.nn.functional.layer_norm(x, (8,))
        return (layer(h) * 1.5 + x).square().mean()

    explained = torch._dynamo.explain(step)(x)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
    eager = step(x)
    eager.backward()
    expected = {n: p.grad.clone() for n, p in layer.named_parameters()}
    layer.zero_grad()
    compiled = torch.compile(step, fullgraph=True)(x)
    assert torch.allclose(compiled, eager, rtol=1e-5, atol=1e-6)
    compiled.backward()
    for n, p in layer.named_parameters():
        assert torch.allclose(p.grad, expected[n], rtol=1e-4, atol=1e-6), n


def test_torch_compile_of_a_whole_model_has_no_graph_break(case):
    torch._dynamo.reset()
    model = tt.from_pretrained(case)
    ids = torch.randint(0, model.config["vocab_size"], (1, 20), generator=torch.Generator().manual_seed(7))
    explained = torch._dynamo.explain(lambda ids: model(ids, labels=ids).loss)(ids)
    assert explained.graph_break_count == 0, explained.break_reasons
    eager = model(ids).logits
    compiled = torch.compile(model, fullgraph=True)(ids).logits
    assert (compiled - eager).abs().max() <= 1e-5 * eager.abs().max() + 1e-6


def test_bad_inputs_raise_one_line_errors():
    layer = TINY["ttt-linear"]()
    x = torch.randn(1, 8, 8)
    cases = [
        (lambda: layer(x.half()), "float16"),
        (lambda: layer(x.transpose(1, 2)), "not contiguous"),
        (lambda: layer(torch.randn(1, 8, 6)), "x"),
        (lambda: layer(torch.randn(8, 8)), "[B, T, D]"),
        (lambda: layer(x, {"W1": torch.zeros(1)}), "the state has no"),
        (lambda: tt.TTTLayer({"hidden_size": 8, "num_attention_heads": 3}), "num_attention_heads"),
        (lambda: tt.TTTLayer({"hidden_size": 8, "num_attention_heads": 2, "no_such_key": 1}), "no_such_key"),
        (lambda: tt.from_pretrained("/nonexistent/model"), "/nonexistent/model"),
    ]
    for call, words in cases:
        with pytest.raises(tttc.Error) as e:
            call()
        message = str(e.value)
        assert "\n" not in message and words in message, message


def test_the_modules_load_state_dicts_of_their_own_kind():
    a, b = randomised(TINY["ttt-mlp"](), seed=1), TINY["ttt-mlp"]()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 5, 8)
    assert torch.equal(a(x), b(x))
    assert {"q_proj.weight", "W1", "b1", "W2", "b2", "learnable_token_idx", "ttt_norm_weight", "post_norm.bias", "conv_q.weight", "g_proj.weight"} <= set(a.state_dict())


@pytest.mark.parametrize("kind", TINY)
def test_the_gpu_program_in_the_ptx_simulator_gives_the_cpu_results(kind):
    """The PTX program CUDA tensors run (forward with its residuals, then the backward), executed
    by tttc's PTX simulator on the CPU: the checks of the GPU path that need no GPU."""
    layer = randomised(TINY[kind]())
    x = torch.randn(2, 9, 8, generator=torch.Generator().manual_seed(10))
    results = []
    for backend in ["cpu", "ptx-sim"]:
        layer.backend = backend
        layer.zero_grad()
        xd = x.clone().requires_grad_()
        y, state = layer(xd, return_state=True)
        (y.square().sum() + sum(v.sum() for k, v in state.items() if k != "position")).backward()
        results.append((y, [xd.grad, *(p.grad for p in layer.parameters())]))
    (y_cpu, grads_cpu), (y_sim, grads_sim) = results
    assert (y_sim - y_cpu).abs().max() <= 1e-5 * y_cpu.abs().max() + 1e-6
    for cpu, sim in zip(grads_cpu, grads_sim):
        assert (sim - cpu).abs().max() <= 1e-4 * cpu.abs().max() + 1e-6
