#!/usr/bin/env bash
# The family comparison of docs/family-comparison.md: TTT-Linear, TTT-MLP, LaCT, Mamba and Llama
# models of about the same size (examples/comparison/), trained with the same budget on the demo
# corpus, then their validation losses side by side (and LaCT beside TTT-Linear for docs/lact.md). STEPS (default 300) sets the budget; RUNS (default
# runs/comparison) where the runs go.
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${STEPS:-300}
runs=${RUNS:-runs/comparison}
cargo build --release
mkdir -p "$runs"
for family in ttt-linear ttt-mlp lact mamba llama; do
    rm -rf "${runs:?}/$family"
    ./target/release/tttc train "examples/comparison/$family.toml" --data tests/data/tinyshakespeare.txt \
        -o "$runs/$family" --steps "$steps" --batch-size 8 --context 64 --eval-every 25 --seed 0
done
./target/release/tttc compare "$runs"/ttt-linear "$runs"/ttt-mlp "$runs"/lact "$runs"/mamba "$runs"/llama \
    -o docs/family-comparison.png --title "validation loss, tiny shakespeare ($steps steps, batch 8 × 64 tokens)"
./target/release/tttc compare "$runs"/ttt-linear "$runs"/lact \
    -o docs/lact-vs-ttt-linear.png --title "LaCT and TTT-Linear, tiny shakespeare ($steps steps, batch 8 × 64 tokens)"
