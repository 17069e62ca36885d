#!/usr/bin/env bash
# cuefree_ladder: Does pre-training learn shape on the cue-free scenes, and do the paper's directions (Tab. 4, 6, 7; Sec. 3) show there?
# Generated from results.json by python -m experiments.report (do not edit by hand).
set -euo pipefail
cd "$(dirname "$0")/../../.."

python -m experiments.mini_ladder \
    --rungs d3ssl soco d3ssl_dconly soco_d3aug d3ssl_dp1 \
    --ceiling-steps 150 \
    --out experiments/results/cuefree_ladder \
    --runs-dir runs/cuefree_ladder \
    --override dataset.source=scenes:instance_cues=0
python -m experiments.mini_ladder \
    --rungs d3ssl soco d3ssl_dconly soco_d3aug \
    --seeds 2 3 \
    --ceiling-steps 150 \
    --out experiments/results/cuefree_ladder \
    --runs-dir runs/cuefree_ladder \
    --override dataset.source=scenes:instance_cues=0
python -m experiments.mini_ladder \
    --rungs d3ssl_dp1 \
    --seeds 2 \
    --ceiling-steps 150 \
    --out experiments/results/cuefree_ladder \
    --runs-dir runs/cuefree_ladder \
    --override dataset.source=scenes:instance_cues=0
