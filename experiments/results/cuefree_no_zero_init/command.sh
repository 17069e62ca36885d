#!/usr/bin/env bash
# cuefree_no_zero_init: Does SoCo's zero-init of each residual block's last BN weight hold D3SSL and SoCo back on the cue-free scenes (torchvision's init instead)?
# Generated from results.json by python -m experiments.report (do not edit by hand).
set -euo pipefail
cd "$(dirname "$0")/../../.."

python -m experiments.mini_ladder \
    --rungs d3ssl soco \
    --seeds 0 \
    --ceiling-steps 0 \
    --out experiments/results/cuefree_no_zero_init \
    --runs-dir runs/cuefree_no_zero_init \
    --override dataset.source=scenes:instance_cues=0 model.zero_init_last=false
