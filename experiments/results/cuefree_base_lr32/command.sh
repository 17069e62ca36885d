#!/usr/bin/env bash
# cuefree_base_lr32: What does four times the recipe's learning rate (base lr 32 instead of 8) change for the D3SSL rung on the cue-free scenes?
# Generated from results.json by python -m experiments.report (do not edit by hand).
set -euo pipefail
cd "$(dirname "$0")/../../.."

python -m experiments.mini_ladder \
    --rungs d3ssl \
    --seeds 1 \
    --ceiling-steps 0 \
    --out experiments/results/cuefree_base_lr32 \
    --runs-dir runs/cuefree_base_lr32 \
    --override dataset.source=scenes:instance_cues=0 optim.base_lr=32
