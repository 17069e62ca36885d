#!/usr/bin/env bash
# cuefree_circular_padding: With circular padding (no position signal from the image border), what do the rungs learn on the cue-free scenes, and which of the paper's directions show?
# Generated from results.json by python -m experiments.report (do not edit by hand).
set -euo pipefail
cd "$(dirname "$0")/../../.."

python -m experiments.mini_ladder \
    --rungs d3ssl d3ssl_dconly soco soco_d3aug \
    --seeds 0 1 2 3 \
    --ceiling-steps 0 \
    --out experiments/results/cuefree_circular_padding \
    --runs-dir runs/cuefree_circular_padding \
    --override dataset.source=scenes:instance_cues=0 model.padding_mode=circular
