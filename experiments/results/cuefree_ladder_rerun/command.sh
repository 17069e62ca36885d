#!/usr/bin/env bash
# cuefree_ladder_rerun: Does the D3SSL rung's seed 0 on the cue-free scenes give the same numbers when rerun from a fresh clone on another CPU?
# Generated from results.json by python -m experiments.report (do not edit by hand).
set -euo pipefail
cd "$(dirname "$0")/../../.."

python -m experiments.mini_ladder \
    --rungs d3ssl \
    --seeds 0 \
    --ceiling-steps 150 \
    --out experiments/results/cuefree_ladder_rerun \
    --runs-dir runs/cuefree_ladder_rerun \
    --override dataset.source=scenes:instance_cues=0
