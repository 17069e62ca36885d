#!/usr/bin/env bash
# cuefree_teacher0999: Does MoCo's teacher momentum (base 0.999 instead of SoCo's 0.99) help the D3SSL rung on the cue-free scenes?
# Generated from results.json by python -m experiments.report (do not edit by hand).
set -euo pipefail
cd "$(dirname "$0")/../../.."

python -m experiments.mini_ladder \
    --rungs d3ssl \
    --seeds 1 \
    --ceiling-steps 0 \
    --out experiments/results/cuefree_teacher0999 \
    --runs-dir runs/cuefree_teacher0999 \
    --override dataset.source=scenes:instance_cues=0 method.momentum_base=0.999
