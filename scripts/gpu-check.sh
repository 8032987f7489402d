#!/usr/bin/env bash
# Everything that needs a GPU, in one call on a machine that has one but no Rust toolchain.
#
#   scripts/gpu-check.sh pack       here, with Rust: builds the test executables that hold the
#                                   ignored `cuda` tests, the `tttc` binary and the Python wheel,
#                                   stripped, into target/gpu-check.tar.xz (about 20 MB)
#   scripts/gpu-check.sh run [LOG]  there, in a copy of the repository with that file in it: runs
#                                   the Python package's tests on CUDA tensors, the layers' GPU
#                                   timings and the `cuda` tests, logging to LOG too (8 minutes on
#                                   an H200)
#
# The test executables find the repository and the `tttc` binary at the paths they were built at:
# `run` links that path to the copy it runs in. Needs python3 with PyTorch (and pytest) there.
set -euo pipefail
cd "$(dirname "$0")/.."
pack=target/gpu-check
# The integration tests with a `cuda` test (`#[ignore = "needs a GPU"]`).
tests="reference_vectors gradients generate state"

case "${1:-}" in
pack)
    rm -rf "$pack" && mkdir -p "$pack"
    cargo build --release
    for t in $tests; do
        exe=$(cargo test --no-run --message-format=json --test "$t" 2>/dev/null | python3 -c '
import json, sys
messages = [json.loads(line) for line in sys.stdin]
print(next(m["executable"] for m in messages if m.get("executable") and m["target"]["name"] == sys.argv[1]))' "$t")
        strip -o "$pack/$t" "$exe"
    done
    strip -o "$pack/tttc-test" target/debug/tttc
    strip -o "$pack/tttc" target/release/tttc
    python3 -m pip wheel --quiet --no-deps --wheel-dir "$pack" ./python
    pwd > "$pack/built-at"
    tar -C "$pack" -cJf "$pack.tar.xz" .
    rm -rf "$pack"
    du -sh "$pack.tar.xz"
    ;;
run)
    log=${2:-/dev/null}
    exec > >(tee "$log") 2>&1
    rm -rf "$pack" && mkdir -p "$pack" && tar -C "$pack" -xJf "$pack.tar.xz"
    built_at=$(cat "$pack/built-at")
    if [ "$built_at" != "$PWD" ]; then
        mkdir -p "$(dirname "$built_at")"
        ln -sfn "$PWD" "$built_at"
    fi
    mkdir -p target/debug target/tmp
    cp "$pack/tttc-test" target/debug/tttc
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "no nvidia-smi"
    python3 -m pip install --quiet --no-deps --no-index --target target/gpu-site "$pack"/tttc-*.whl
    export PYTHONPATH="$PWD/target/gpu-site${PYTHONPATH:+:$PYTHONPATH}"
    export PYTHONUNBUFFERED=1
    status=0
    # Each part under a time limit of its own, so that one that hangs leaves the others their turn.
    echo "== pytest python/tests/test_cuda.py"
    timeout 150 python3 -m pytest -q -p no:cacheprovider python/tests/test_cuda.py || status=1
    echo "== the TTT-Linear and TTT-MLP layers at the 125m width on the GPU (B 1)"
    timeout 60 python3 - <<'EOF' || status=1
import time, torch
import tttc.torch as tt
def timed(f, reps=5):
    f(); torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start = time.perf_counter(); f(); torch.cuda.synchronize(); times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3
for make in (tt.TTTLinear, tt.TTTMLP):
    layer = make(768, 12, 16).cuda()
    for t in (512, 2048):
        x = torch.randn(1, t, 768, device="cuda", requires_grad=True)
        forward = timed(lambda: layer(x))
        both = timed(lambda: layer(x).sum().backward())
        print(f"{make.__name__} T {t}: forward {forward:.1f} ms, forward + backward {both:.1f} ms")
EOF
    # Seconds each took on an H200: 21, 51, 63 and 195.
    limits=(60 120 120 300)
    i=0
    for t in $tests; do
        echo "== cargo test --test $t -- --ignored"
        timeout "${limits[$i]}" "$pack/$t" --ignored --test-threads 1 || status=1
        i=$((i + 1))
    done
    exit $status
    ;;
*)
    sed -n '2,12p' "$0"
    exit 2
    ;;
esac
