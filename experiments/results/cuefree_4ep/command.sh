#!/usr/bin/env bash
# cuefree_4ep: Does a fourth epoch (372 steps) lift the D3SSL rung on the cue-free scenes?
# Generated from results.json by python -m experiments.report (do not edit by hand).
set -euo pipefail
cd "$(dirname "$0")/../../.."

python -m experiments.mini_ladder \
    --rungs d3ssl \
    --seeds 1 3 \
    --ceiling-steps 0 \
    --out experiments/results/cuefree_4ep \
    --runs-dir runs/cuefree_4ep \
    --override dataset.source=scenes:instance_cues=0 train.epochs=4
