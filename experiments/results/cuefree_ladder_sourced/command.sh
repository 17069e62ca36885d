#!/usr/bin/env bash
# cuefree_ladder_sourced: With every open reading decided by a source before this run (PRC by the authors' RCC, one of the K proposals in x3 by the paper's stated property, SoCo's data path as SoCo's C4 code runs it), do the paper's directions (Tab. 4, 6, 7; Sec. 3) show on the cue-free scenes, judged by a paired t-test over 4 seeds?
# Generated from results.json by python -m experiments.report (do not edit by hand).
set -euo pipefail
cd "$(dirname "$0")/../../.."

python -m experiments.mini_ladder \
    --rungs d3ssl d3ssl_dconly soco soco_d3aug \
    --seeds 0 1 2 3 \
    --ceiling-steps 0 \
    --no-intermediate \
    --out experiments/results/cuefree_ladder_sourced \
    --runs-dir runs/cuefree_ladder_sourced \
    --override dataset.source=scenes:instance_cues=0
