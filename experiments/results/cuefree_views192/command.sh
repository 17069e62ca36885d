#!/usr/bin/env bash
# cuefree_views192: Do 192 px training views (instead of 128 px) lift the D3SSL rung on the cue-free scenes?
# Generated from results.json by python -m experiments.report (do not edit by hand).
set -euo pipefail
cd "$(dirname "$0")/../../.."

python -m experiments.mini_ladder \
    --rungs d3ssl \
    --seeds 1 \
    --ceiling-steps 0 \
    --out experiments/results/cuefree_views192 \
    --runs-dir runs/cuefree_views192 \
    --override dataset.source=scenes:instance_cues=0 data.image_size=192 data.small_size=96
