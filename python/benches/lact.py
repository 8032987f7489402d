#!/usr/bin/env python3
"""A LaCT layer in tttc beside LaCT's own PyTorch code, in the same process (BENCHMARKS.md).

LaCT's layer (`LaCTSWIGLULayer`, its non-fused path) runs with the plain-PyTorch stand-ins for
flash-linear-attention and flash_attn that the reference vectors' generator installs
(`make_lact_vectors.py`), so it runs on a CPU. tttc's `LaCTLayer` loads the same weights; the
outputs are compared before anything is timed. Rows: forward (no autograd) and forward + backward
(of sum(y * r), gradients for the input and every parameter), PyTorch eager and torch.compile,
medians over --reps calls after a warm-up call.

    LACT_PATH=<LaCT checkout> python python/benches/lact.py \
        --make-lact-vectors <shared>/tools/make_lact_vectors.py --config <LaCT>/lact_llm/configs/760M_lact_swiglu_nh4_fwlow_rank_momentum.json \
        --seq-lens 4096 8192
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time

import torch


def load_peer(make_lact_vectors: str):
    """The LaCT package, importable on a CPU: the generator's stand-ins installed first."""
    spec = importlib.util.spec_from_file_location("make_lact_vectors", make_lact_vectors)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def peer_layer(lact, config: dict):
    keys = lact.lact_model.LaCTSWIGLUConfig(**config)
    layer = lact.lact_model.modeling_lact.LaCTBlock(keys, layer_idx=0).attn
    return layer.float().eval()


def median_seconds(call, reps: int) -> float:
    call()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def forward(layer, x):
    def call():
        with torch.no_grad():
            return layer(x)
    return call


def forward_backward(layer, x, r, params):
    def call():
        x.grad = None
        for p in params:
            p.grad = None
        y = layer(x)
        y = y[0] if isinstance(y, tuple) else y
        (y * r).sum().backward()
    return call


def first(y):
    return y[0] if isinstance(y, tuple) else y


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--make-lact-vectors", required=True, help="the reference vectors' generator (its stand-ins)")
    ap.add_argument("--config", required=True, help="a LaCT config.json (the layer's keys are read from it)")
    ap.add_argument("--seq-lens", type=int, nargs="+", default=[4096, 8192])
    ap.add_argument("--tttc-only", type=int, nargs="*", default=[], help="lengths timed for tttc alone")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    ap.add_argument("--no-grad", action="store_true", help="skip forward + backward")
    args = ap.parse_args()
    if "LACT_PATH" not in os.environ:
        ap.error("set LACT_PATH to a LaCT checkout")

    import tttc.torch as tt

    lact = load_peer(args.make_lact_vectors)
    with open(args.config) as f:
        config = json.load(f)
    config.update(num_hidden_layers=1, use_fused_kernel=False)
    torch.manual_seed(0)
    peer = peer_layer(lact, config)
    lact.perturb(peer, 0)
    ours = tt.LaCTLayer(config)
    ours.load_state_dict({k: v.detach().clone() for k, v in peer.state_dict().items()}, strict=True)
    ours.eval()
    print(f"# LaCT layer: D {config['hidden_size']}, {config['num_attn_heads']} attention heads, "
          f"{config['num_lact_heads']} fast-weight heads, chunk {config['lact_chunk_size']}, "
          f"window {config['window_size']}, muon {config.get('use_muon', False)}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    print("| T | pass | tttc (s) | eager (s) | eager / tttc | torch.compile (s) | compile / tttc |")
    print("|---|---|---|---|---|---|---|")
    compiled = None if args.no_compile else torch.compile(peer)
    D = config["hidden_size"]
    for T in args.seq_lens + args.tttc_only:
        alone = T not in args.seq_lens
        g = torch.Generator().manual_seed(T)
        x = torch.randn(1, T, D, generator=g)
        r = torch.randn(1, T, D, generator=g)
        if not alone:
            with torch.no_grad():
                want, got = first(peer(x)), ours(x)
            err = (got - want).abs().max().item() / want.abs().max().item()
            print(f"# T {T}: max |tttc - LaCT| / max |LaCT| = {err:.2e}", flush=True)
        passes = [("forward", lambda m: forward(m, x))]
        if not args.no_grad:
            def grad_call(m):
                xg = x.clone().requires_grad_(True)
                return forward_backward(m, xg, r, list(m.parameters()))
            passes.append(("fwd + bwd", grad_call))
        for name, make in passes:
            t_ours = median_seconds(make(ours), args.reps)
            row = [f"{T}", name, f"{t_ours:.3f}"]
            for peer_module in ([] if alone else [peer] + ([compiled] if compiled is not None else [])):
                start = time.perf_counter()
                t_peer = median_seconds(make(peer_module), args.reps)
                row += [f"{t_peer:.3f}", f"{t_peer / t_ours:.2f}×"]
                if peer_module is compiled:
                    print(f"# torch.compile {name} T {T}: {time.perf_counter() - start:.0f} s in all", flush=True)
            row += ["—"] * (7 - len(row))
            print("| " + " | ".join(row) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
