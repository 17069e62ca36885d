#!/usr/bin/env bash
# cuefree_teacher0996: Does a slower teacher (momentum base 0.996, BYOL's, instead of SoCo's 0.99) help the rungs on the cue-free scenes?
# Generated from results.json by python -m experiments.report (do not edit by hand).
set -euo pipefail
cd "$(dirname "$0")/../../.."

python -m experiments.mini_ladder \
    --rungs d3ssl \
    --seeds 1 2 3 \
    --ceiling-steps 0 \
    --out experiments/results/cuefree_teacher0996 \
    --runs-dir runs/cuefree_teacher0996 \
    --override dataset.source=scenes:instance_cues=0 method.momentum_base=0.996
python -m experiments.mini_ladder \
    --rungs soco \
    --seeds 1 3 \
    --ceiling-steps 0 \
    --out experiments/results/cuefree_teacher0996 \
    --runs-dir runs/cuefree_teacher0996 \
    --override dataset.source=scenes:instance_cues=0 method.momentum_base=0.996
python -m experiments.mini_ladder \
    --rungs d3ssl_dconly soco_d3aug \
    --seeds 1 3 \
    --ceiling-steps 0 \
    --out experiments/results/cuefree_teacher0996 \
    --runs-dir runs/cuefree_teacher0996 \
    --override dataset.source=scenes:instance_cues=0 method.momentum_base=0.996
