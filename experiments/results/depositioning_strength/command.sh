#!/usr/bin/env bash
# depositioning_strength: Do the regions pasted into x3 move more from x2 to x3 than from x1 to x2, as the paper's "views with higher variance than one in the de-coupling module" (Sec. 1) says, and for which number n of the K proposals in x3 (data.dp_proposals)?
# Generated from results.json by python -m experiments.report (do not edit by hand).
set -euo pipefail
cd "$(dirname "$0")/../../.."

python -m experiments.depositioning_strength \
    --out experiments/results/depositioning_strength
