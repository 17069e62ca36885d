#!/usr/bin/env bash
# cuefree_teacher095: What does a faster teacher (momentum base 0.95 instead of SoCo's 0.99) do to the D3SSL rung on the cue-free scenes?
# Generated from results.json by python -m experiments.report (do not edit by hand).
set -euo pipefail
cd "$(dirname "$0")/../../.."

python -m experiments.mini_ladder \
    --rungs d3ssl \
    --seeds 1 3 \
    --ceiling-steps 0 \
    --out experiments/results/cuefree_teacher095 \
    --runs-dir runs/cuefree_teacher095 \
    --override dataset.source=scenes:instance_cues=0 method.momentum_base=0.95
