#!/usr/bin/env bash
# cuefree_batch16: Does half the batch (16, the same images seen in twice the steps) lift the D3SSL rung on the cue-free scenes?
# Generated from results.json by python -m experiments.report (do not edit by hand).
set -euo pipefail
cd "$(dirname "$0")/../../.."

python -m experiments.mini_ladder \
    --rungs d3ssl \
    --seeds 1 \
    --ceiling-steps 0 \
    --out experiments/results/cuefree_batch16 \
    --runs-dir runs/cuefree_batch16 \
    --override dataset.source=scenes:instance_cues=0 train.global_batch=16 train.batch_size=16 method.queue_size=2048 train.checkpoint_every=186
