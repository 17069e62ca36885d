#!/usr/bin/env bash
# coloured_diagnostics: Why does D3SSL learn little of the shapes on the coloured scenes: a BatchNorm shortcut (MoCo's "cheating") or the instance cues of the data?
# Generated from results.json by python -m experiments.report (do not edit by hand).
set -euo pipefail
cd "$(dirname "$0")/../../.."

python -m accelerate.commands.launch \
    --num_processes 1 \
    --num_cpu_threads_per_process 2 \
    train/pretrain.py \
    --recipe experiments/recipes/d3ssl.yaml \
    --output-dir runs/coloured_diagnostics/d3ssl_s0 \
    --no-eval train.seed=0
python -m accelerate.commands.launch \
    --num_processes 1 \
    --num_cpu_threads_per_process 2 \
    train/pretrain.py \
    --recipe experiments/recipes/d3ssl.yaml \
    --output-dir runs/coloured_diagnostics/d3ssl_bn4_s0 \
    --no-eval train.seed=0 method.bn_groups=4
python -m accelerate.commands.launch \
    --num_processes 1 \
    --num_cpu_threads_per_process 2 \
    train/pretrain.py \
    --recipe experiments/recipes/d3ssl.yaml \
    --output-dir runs/coloured_diagnostics/d3ssl_flatbg_s0 \
    --no-eval train.seed=0 dataset.source=scenes:background_contrast=0
python -m experiments.diagnose_bn_leak \
    --run runs/coloured_diagnostics/d3ssl_s0 \
    --out experiments/results/coloured_diagnostics/bn_leak_d3ssl_s0.json
python -m experiments.diagnose_bn_leak \
    --run runs/coloured_diagnostics/d3ssl_bn4_s0 \
    --out experiments/results/coloured_diagnostics/bn_leak_d3ssl_bn4_s0.json
python -m experiments.diagnose_instance_cues \
    --run runs/coloured_diagnostics/d3ssl_s0 \
    --out experiments/results/coloured_diagnostics/instance_cues_d3ssl_s0.json
python -m experiments.diagnose_instance_cues \
    --run runs/coloured_diagnostics/d3ssl_bn4_s0 \
    --out experiments/results/coloured_diagnostics/instance_cues_d3ssl_bn4_s0.json
python -m experiments.diagnose_instance_cues \
    --run runs/coloured_diagnostics/d3ssl_flatbg_s0 \
    --out experiments/results/coloured_diagnostics/instance_cues_d3ssl_flatbg_s0.json
