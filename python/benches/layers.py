"""tttc's TTT layers called from PyTorch against the same layers through `tttc bench` and against the
peers, in one run: forward, and forward + backward (the gradient of sum(y * r) with respect to x
and every parameter), at the 125m width (D 768, 12 heads, mini-batch 16, batch 1, f32), the
layers as the references run them (no conv, no gate, separate q/k/v).

    python python/benches/layers.py --tttc target/release/tttc [--seq-lens 512,2048,8192]
        [--peer-bench ../shared/tools/peer_bench.py --ttt-pytorch-path DIR [--compile-max-t 512]]
        [--device cuda]

Prints a Markdown table of median milliseconds over three alternating rounds: tttc from PyTorch
(under autograd: the forward that keeps residuals, then the backward that reads them), the same
graphs called without PyTorch on the same tensors, `tttc bench` (the forward, or the whole
vector-Jacobian product, one graph), the binding's overhead against both, and with --peer-bench
the reference layers in eager PyTorch and under torch.compile (up to --compile-max-t: it compiles
for minutes beyond).
Timing as `tttc bench` does it: one warm-up call, then at least --reps calls, more for short calls
up to a second (at most 30), the median.
With --device cuda, everything on GPU 0 (each call waits for its kernels): the layer on CUDA
tensors, the same graphs on the same tensors, `tttc bench --backend cuda` (which also copies its
inputs to the GPU and its results back in each call), and the reference layers eager in this
process (peer_bench.py builds them; it times on the CPU only).
"""

import argparse
import functools
import importlib.util
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


def timed(f, reps: int, device: torch.device) -> float:
    def call():
        f()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    call()
    times = []
    start = time.perf_counter()
    while len(times) < reps or (len(times) < 30 and time.perf_counter() - start < 1.0):
        t = time.perf_counter()
        call()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def inputs(t: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """x and the fixed cotangent r, [1, t, 768]."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, t, 768, generator=g).to(device), torch.randn(1, t, 768, generator=g).to(device)


def forward_and_backward(layer: torch.nn.Module, forward, x: torch.Tensor, r: torch.Tensor, grad: bool):
    """One call of what is timed: the forward without autograd, or the gradient of sum(y * r)
    with respect to x and every parameter."""
    if not grad:

        def call():
            with torch.no_grad():
                forward(x)

        return call
    xg = x.clone().requires_grad_()

    def step():
        layer.zero_grad(set_to_none=True)
        xg.grad = None
        with torch.enable_grad():
            (forward(xg) * r).sum().backward()

    return step


def binding(args, kind: str, t: int, grad: bool) -> tuple[float, float, float]:
    """Medians over three alternating rounds, so that all see the same machine: the layer from
    PyTorch; the graphs it runs called through the native module on the same tensors without
    PyTorch (the forward, or the forward that keeps residuals and then the backward that reads
    them); and `tttc bench` (its forward, or its whole vector-Jacobian product)."""
    device = args.device
    layer = tt.TTTLayer({**CONFIG, "ttt_layer_type": kind}).to(device)
    registered = _registry[layer._handle]
    x, r = inputs(t, device)
    params = {f"param:{p}": layer.get_parameter(p).detach() for p in registered.parameters}
    gpu = (device.index, torch.cuda.current_stream(device).cuda_stream) if device.type == "cuda" else None

    def call(entry_kind: str, named: dict) -> dict:
        entry = registered.native.entry(entry_kind)
        outs = {name: torch.empty(_shape(dims, {"B": 1, "T": t}), device=device) for name, (_, dims) in entry.outputs}
        entry.run(device.type, [_address(named[n], n, device) for n, _ in entry.inputs], [_address(outs[n], n, device) for n, _ in entry.outputs], gpu)
        return outs

    def native():
        named = {"x": x, **params}
        if grad:
            call("backward", {**named, "grad:y": r, **call("saving", named)})
        else:
            call("forward", named)

    through_torch = forward_and_backward(layer, layer, x, r, grad)
    ours, direct, bench = [], [], []
    for _ in range(3):
        ours.append(timed(through_torch, args.reps, device))
        direct.append(timed(native, args.reps, device))
        bench.append(tttc_bench(args.tttc, kind, t, grad, args.reps, device))
    return statistics.median(ours), statistics.median(direct), statistics.median(bench)


def tttc_bench(binary: str, kind: str, t: int, grad: bool, reps: int, device: torch.device) -> float:
    with tempfile.NamedTemporaryFile(suffix=".jsonl") as out:
        args = [binary, "bench", "--layers", f"ttt-{kind}", "--seq-lens", str(t), "--reps", str(reps), "--output", out.name]
        args += ["--backend", device.type]
        subprocess.run(args + (["--grad"] if grad else []), check=True, capture_output=True)
        rows = [json.loads(line) for line in open(out.name)]
    return next(r["median_ms"] for r in rows if r.get("who", "").startswith("tttc") and r.get("T") == t)


def peer(args, kind: str, t: int, grad: bool, mode: str) -> float:
    if args.device.type == "cuda":
        return peer_on_gpu(args, kind, t, grad)
    cmd = [args.python, args.peer_bench, "run", "--peer", "ttt-torch", "--kind", kind, "--T", str(t), "--mode", mode, "--reps", str(args.reps)]
    cmd += ["--ttt-pytorch-path", args.ttt_pytorch_path] + (["--grad"] if grad else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])["median_ms"]


@functools.cache
def peer_harness(path: str):
    """peer_bench.py as a module, loaded once."""
    spec = importlib.util.spec_from_file_location("peer_bench", path)
    harness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(harness)
    return harness


def peer_on_gpu(args, kind: str, t: int, grad: bool) -> float:
    """The reference layer, eager, on the GPU in this process."""
    harness = peer_harness(args.peer_bench)
    options = argparse.Namespace(ttt_pytorch_path=args.ttt_pytorch_path, seed=0, kind=kind, T=t, B=1)
    _, layer, _, pos = harness.build_ttt_torch(options, torch)
    layer.to(args.device)
    x, r = inputs(t, args.device)
    pos = pos.to(args.device)
    return timed(forward_and_backward(layer, lambda x: layer(x, position_ids=pos), x, r, grad), args.reps, args.device)


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
    p.add_argument("--device", type=torch.device, default="cpu", help="cpu, or cuda: everything on GPU 0")
    args = p.parse_args()
    if args.device.type == "cuda" and args.device.index is None:
        args.device = torch.device("cuda", 0)
    print("| layer | T | pass | tttc from PyTorch | the same graphs without PyTorch | tttc bench | overhead vs the graphs | vs tttc bench | ttt-lm-pytorch eager | torch.compile |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for kind in args.kinds.split(","):
        for t in map(int, args.seq_lens.split(",")):
            for grad in (False, True):
                ours, direct, bench = binding(args, kind, t, grad)
                eager = compiled = "–"
                if args.peer_bench:
                    eager_ms = peer(args, kind, t, grad, "eager")
                    eager = f"{eager_ms:.1f} ({eager_ms / ours:.2f}×)"
                    if t <= args.compile_max_t and args.device.type == "cpu":
                        compiled_ms = peer(args, kind, t, grad, "compile")
                        compiled = f"{compiled_ms:.1f} ({compiled_ms / ours:.2f}×)"
                what = "forward + backward" if grad else "forward"
                name = "TTT-MLP" if kind == "mlp" else "TTT-Linear"
                print(f"| {name} | {t} | {what} | {ours:.1f} | {direct:.1f} | {bench:.1f} | {100 * (ours / direct - 1):+.1f}% | {100 * (ours / bench - 1):+.1f}% | {eager} | {compiled} |", flush=True)


if __name__ == "__main__":
    main()
