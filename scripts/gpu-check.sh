#!/usr/bin/env bash
# Everything that needs a GPU, in one call on a machine that has one but no Rust toolchain.
#
#   scripts/gpu-check.sh pack       here, with Rust: builds the test executables that hold the
#                                   ignored `cuda` tests, the `tttc` binary and the Python wheel,
#                                   stripped, into target/gpu-check.tar.xz (about 20 MB); with
#                                   TTT_PYTORCH_PATH and PEER_BENCH (peer_bench.py) set, also the
#                                   reference's ttt.py, the harness and the wheels ttt.py imports
#                                   (transformers, for the Python of GPU_PYTHON, default 3.12:
#                                   about 35 MB more)
#   scripts/gpu-check.sh run [LOG [PART...]]
#                                   there, in a copy of the repository with that file in it,
#                                   logging to LOG too; PARTs (default all, in this order):
#                                   python  the Python package's tests on CUDA tensors (1 minute)
#                                   layers  TTT-Linear and TTT-MLP from PyTorch on the GPU against
#                                           the same graphs, `tttc bench` and the reference eager
#                                           (python/benches/layers.py --device cuda)
#                                   bench   `tttc bench --backend cuda`, every layer, forward and
#                                           forward + backward
#                                   tests   the ignored `cuda` tests (7 minutes on an H200 before
#                                           packed and lact_layer joined)
#
# The test executables find the repository and the `tttc` binary at the paths they were built at:
# `run` links that path to the copy it runs in. Needs python3 with PyTorch (and pytest) there.
set -euo pipefail
cd "$(dirname "$0")/.."
pack=target/gpu-check
# The integration tests with a `cuda` test (`#[ignore = "needs a GPU"]`).
tests="reference_vectors gradients generate state packed lact_layer"

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
    if [ -n "${TTT_PYTORCH_PATH:-}" ] && [ -n "${PEER_BENCH:-}" ]; then
        mkdir -p "$pack/peers/wheels"
        cp "$TTT_PYTORCH_PATH/ttt.py" "$PEER_BENCH" "$pack/peers/"
        python3 -m pip download --quiet --only-binary=:all: --python-version "${GPU_PYTHON:-3.12}" \
            --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            --dest "$pack/peers/wheels" transformers==4.44.2
        rm -f "$pack"/peers/wheels/hf_xet-*  # optional, and the largest
    fi
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
    parts=("${@:3}")
    [ ${#parts[@]} -gt 0 ] || parts=(python layers bench tests)
    peers=()
    if [ -d "$pack/peers" ]; then
        # What ttt.py imports, unless this Python has it (numpy too: keep the one torch was built with).
        if ! python3 -c 'import transformers' 2>/dev/null; then
            python3 -c 'import numpy' 2>/dev/null && rm -f "$pack"/peers/wheels/numpy-*
            python3 -m pip install --quiet --no-deps --no-index --target target/gpu-site "$pack"/peers/wheels/*.whl
        fi
        peers=(--peer-bench "$pack/peers/peer_bench.py" --ttt-pytorch-path "$pack/peers")
    fi
    # Each part under a time limit of its own, so that one that hangs leaves the others their turn.
    for part in "${parts[@]}"; do
        case $part in
        python)
            echo "== pytest python/tests/test_cuda.py"
            timeout 150 python3 -m pytest -q -p no:cacheprovider python/tests/test_cuda.py || status=1
            ;;
        layers)
            echo "== python/benches/layers.py --device cuda"
            timeout 240 python3 python/benches/layers.py --device cuda --reps 3 --tttc "$pack/tttc" "${peers[@]}" || status=1
            ;;
        bench)
            echo "== tttc bench --backend cuda"
            timeout 150 "$pack/tttc" bench --backend cuda --reps 3 || status=1
            echo "== tttc bench --backend cuda --grad"
            timeout 150 "$pack/tttc" bench --backend cuda --reps 3 --grad --seq-lens 512,2048 || status=1
            ;;
        tests)
            # Seconds the first four took on an H200: 21, 51, 63 (over 120 in a second run) and
            # 195, before state's and packed's cuda tests of --state-out and packed rows were
            # added; the last two are not timed on a GPU yet.
            limits=(60 120 240 420 300 60)
            i=0
            for t in $tests; do
                echo "== cargo test --test $t -- --ignored"
                timeout "${limits[$i]}" "$pack/$t" --ignored --test-threads 1 || status=1
                i=$((i + 1))
            done
            ;;
        *)
            echo "unknown part $part: python, layers, bench or tests"
            status=1
            ;;
        esac
    done
    exit $status
    ;;
*)
    sed -n '2,12p' "$0"
    exit 2
    ;;
esac
