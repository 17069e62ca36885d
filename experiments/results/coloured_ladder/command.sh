#!/usr/bin/env bash
# coloured_ladder: Does pre-training learn on the coloured scenes, and do the paper's directions (Tab. 4, 6, 7; Sec. 3) show at this scale?
# Generated from results.json by python -m experiments.report (do not edit by hand).
set -euo pipefail
cd "$(dirname "$0")/../../.."

python -m experiments.mini_ladder \
    --out experiments/results/coloured_ladder \
    --runs-dir runs/coloured_ladder
