#!/usr/bin/env bash
# coloured_ladder_9ep: Does the D3SSL rung trained three times as long (9 epochs, 837 steps) lift O-KNN on the coloured scenes?
# Generated from results.json by python -m experiments.report (do not edit by hand).
set -euo pipefail
cd "$(dirname "$0")/../../.."

python -m experiments.mini_ladder \
    --rungs d3ssl \
    --seeds 0 \
    --ceiling-steps 0 \
    --out experiments/results/coloured_ladder_9ep \
    --runs-dir runs/coloured_ladder_9ep \
    --override train.epochs=9
