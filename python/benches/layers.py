"""tttc's TTT layers called from PyTorch against the same layers through `tttc bench` and against the
peers, in one run: forward, and forward + backward (the gradient of sum(y * r) with respect to x
and every parameter), at the 125m width (D 768, 12 heads, mini-batch 16, batch 1, f32), the
layers as the references run them (no conv, no gate, separate q/k/v).

    python python/benches/layers.py --tttc target/release/tttc [--seq-lens 512,2048,8192]
        [--peer-bench ../shared/tools/peer_bench.py --ttt-pytorch-path DIR [--compile-max-t 512]]

Prints a Markdown table of median milliseconds: tttc from PyTorch (under autograd: the forward
that keeps residuals, then the backward that reads them), the graphs `tttc bench` times (the
forward, or the whole vector-Jacobian product) called without PyTorch in alternating rounds with
it, the binding's overhead against those, `tttc bench` itself in the same run, and with
--peer-bench the reference layers in eager PyTorch and under torch.compile (up to
--compile-max-t: it compiles for minutes beyond).
Timing as `tttc bench` does it: one warm-up call, then at least --reps calls, more for short calls
up to a second (at most 30), the median.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

import torch

import tttc.torch as tt
from tttc.torch import _address, _registry, _shape

CONFIG = {"hidden_size": 768, "num_attention_heads": 12, "mini_batch_size": 16, "pre_conv": False, "share_qk": False, "use_gate": False}


def timed(f, reps: int) -> float:
    f()
    times = []
    start = time.perf_counter()
    while len(times) < reps or (len(times) < 30 and time.perf_counter() - start < 1.0):
        t = time.perf_counter()
        f()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def binding(kind: str, t: int, grad: bool, reps: int) -> tuple[float, float]:
    """The layer from PyTorch, and the graph `tttc bench` times (the forward, or the whole
    vector-Jacobian product) called through the native module on the same tensors without
    PyTorch's autograd: medians over three alternating rounds, so both see the same machine."""
    layer = tt.TTTLayer({**CONFIG, "ttt_layer_type": kind})
    registered = _registry[layer._handle]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, t, 768, generator=g)
    r = torch.randn(1, t, 768, generator=g)
    named = {"x": x, "grad:y": r, **{f"param:{p}": layer.get_parameter(p).detach() for p in registered.parameters}}
    entry = registered.native.entry("vjp" if grad else "forward")

    def native():
        outs = {name: torch.empty(_shape(dims, {"B": 1, "T": t})) for name, (_, dims) in entry.outputs}
        entry.run("cpu", [_address(named[n], n, x.device) for n, _ in entry.inputs], [_address(outs[n], n, x.device) for n, _ in entry.outputs])

    xg = x.clone().requires_grad_()

    def through_torch():
        if not grad:
            with torch.no_grad():
                layer(x)
            return
        layer.zero_grad(set_to_none=True)
        xg.grad = None
        (layer(xg) * r).sum().backward()

    ours, direct = [], []
    for _ in range(3):
        ours.append(timed(through_torch, reps))
        direct.append(timed(native, reps))
    return statistics.median(ours), statistics.median(direct)


def tttc_bench(binary: str, kind: str, t: int, grad: bool, reps: int) -> float:
    with tempfile.NamedTemporaryFile(suffix=".jsonl") as out:
        args = [binary, "bench", "--layers", f"ttt-{kind}", "--seq-lens", str(t), "--reps", str(reps), "--output", out.name]
        subprocess.run(args + (["--grad"] if grad else []), check=True, capture_output=True)
        rows = [json.loads(line) for line in open(out.name)]
    return next(r["median_ms"] for r in rows if r.get("who", "").startswith("tttc") and r.get("T") == t)


def peer(args, kind: str, t: int, grad: bool, mode: str) -> float:
    cmd = [args.python, args.peer_bench, "run", "--peer", "ttt-torch", "--kind", kind, "--T", str(t), "--mode", mode, "--reps", str(args.reps)]
    cmd += ["--ttt-pytorch-path", args.ttt_pytorch_path] + (["--grad"] if grad else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])["median_ms"]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tttc", required=True, help="the tttc binary (release)")
    p.add_argument("--seq-lens", default="512,2048,8192")
    p.add_argument("--kinds", default="linear,mlp")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--peer-bench", help="the peer harness, peer_bench.py")
    p.add_argument("--ttt-pytorch-path", help="the ttt-lm-pytorch checkout")
    p.add_argument("--compile-max-t", type=int, default=512)
    p.add_argument("--python", default=sys.executable, help="the Python the peers run in")
    args = p.parse_args()
    print("| layer | T | pass | tttc from PyTorch | the same graphs without PyTorch | binding overhead | tttc bench | ttt-lm-pytorch eager | torch.compile |")
    print("|---|---|---|---|---|---|---|---|---|")
    for kind in args.kinds.split(","):
        for t in map(int, args.seq_lens.split(",")):
            for grad in (False, True):
                ours, direct = binding(kind, t, grad, args.reps)
                bench = tttc_bench(args.tttc, kind, t, grad, args.reps)
                eager = compiled = "–"
                if args.peer_bench:
                    eager_ms = peer(args, kind, t, grad, "eager")
                    eager = f"{eager_ms:.1f} ({eager_ms / ours:.2f}×)"
                    if t <= args.compile_max_t:
                        compiled_ms = peer(args, kind, t, grad, "compile")
                        compiled = f"{compiled_ms:.1f} ({compiled_ms / ours:.2f}×)"
                what = "forward + backward" if grad else "forward"
                name = "TTT-MLP" if kind == "mlp" else "TTT-Linear"
                print(f"| {name} | {t} | {what} | {ours:.1f} | {direct:.1f} | {100 * (ours / direct - 1):+.1f}% | {bench:.1f} | {eager} | {compiled} |", flush=True)


if __name__ == "__main__":
    main()
