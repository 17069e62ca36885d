#!/usr/bin/env bash
# cuefree_diagnostics: What do the rungs learn on the cue-free scenes besides the shape (the place, the pose, the context), and what do O-KNN's read, the teacher's momentum, the learning rate and the initialisation change?
# Generated from results.json by python -m experiments.report (do not edit by hand).
# Reads the training runs of experiments/results/cuefree_ladder/ (made by its command.sh): run that first.
# Reads the training runs of experiments/results/cuefree_ladder_rerun/ (made by its command.sh): run that first.
# Reads the training runs of experiments/results/cuefree_circular_padding/ (made by its command.sh): run that first.
# Reads the training runs of experiments/results/cuefree_4ep/ (made by its command.sh): run that first.
# Reads the training runs of experiments/results/cuefree_4ep_teacher0996/ (made by its command.sh): run that first.
# Reads the training runs of experiments/results/cuefree_base_lr2/ (made by its command.sh): run that first.
# Reads the training runs of experiments/results/cuefree_base_lr32/ (made by its command.sh): run that first.
# Reads the training runs of experiments/results/cuefree_teacher095/ (made by its command.sh): run that first.
# Reads the training runs of experiments/results/cuefree_teacher0996/ (made by its command.sh): run that first.
# Reads the training runs of experiments/results/cuefree_teacher0999/ (made by its command.sh): run that first.
# Reads the training runs of experiments/results/cuefree_no_zero_init/ (made by its command.sh): run that first.
# Reads the training runs of experiments/results/cuefree_views192/ (made by its command.sh): run that first.
set -euo pipefail
cd "$(dirname "$0")/../../.."

python -m experiments.diagnose_instance_cues \
    --run runs/cuefree_ladder/d3ssl_s2 \
    --out experiments/results/cuefree_diagnostics/instance_cues_d3ssl_s2.json
python -m experiments.diagnose_instance_cues \
    --run runs/cuefree_ladder/d3ssl_s3 \
    --out experiments/results/cuefree_diagnostics/instance_cues_d3ssl_s3.json
python -m experiments.diagnose_instance_cues \
    --run runs/cuefree_ladder/d3ssl_dconly_s0 \
    --out experiments/results/cuefree_diagnostics/instance_cues_d3ssl_dconly_s0.json
python -m experiments.diagnose_instance_cues \
    --run runs/cuefree_ladder/d3ssl_dconly_s1 \
    --out experiments/results/cuefree_diagnostics/instance_cues_d3ssl_dconly_s1.json
python -m experiments.diagnose_instance_cues \
    --run runs/cuefree_ladder/d3ssl_dconly_s2 \
    --out experiments/results/cuefree_diagnostics/instance_cues_d3ssl_dconly_s2.json
python -m experiments.diagnose_instance_cues \
    --run runs/cuefree_ladder/d3ssl_dconly_s3 \
    --out experiments/results/cuefree_diagnostics/instance_cues_d3ssl_dconly_s3.json
python -m experiments.diagnose_instance_cues \
    --run runs/cuefree_ladder/d3ssl_dp1_s2 \
    --out experiments/results/cuefree_diagnostics/instance_cues_d3ssl_dp1_s2.json
python -m experiments.diagnose_instance_cues \
    --run runs/cuefree_ladder/soco_s0 \
    --out experiments/results/cuefree_diagnostics/instance_cues_soco_s0.json
python -m experiments.diagnose_instance_cues \
    --run runs/cuefree_ladder/soco_s1 \
    --out experiments/results/cuefree_diagnostics/instance_cues_soco_s1.json
python -m experiments.diagnose_instance_cues \
    --run runs/cuefree_ladder/soco_s2 \
    --out experiments/results/cuefree_diagnostics/instance_cues_soco_s2.json
python -m experiments.diagnose_instance_cues \
    --run runs/cuefree_ladder/soco_s3 \
    --out experiments/results/cuefree_diagnostics/instance_cues_soco_s3.json
python -m experiments.diagnose_instance_cues \
    --run runs/cuefree_ladder/soco_d3aug_s2 \
    --out experiments/results/cuefree_diagnostics/instance_cues_soco_d3aug_s2.json
python -m experiments.diagnose_instance_cues \
    --run runs/cuefree_ladder/soco_d3aug_s3 \
    --out experiments/results/cuefree_diagnostics/instance_cues_soco_d3aug_s3.json
python -m experiments.diagnose_instance_cues \
    --run runs/cuefree_ladder_rerun/d3ssl_s0 \
    --out experiments/results/cuefree_diagnostics/instance_cues_d3ssl_rerun_s0.json
python -m experiments.diagnose_instance_cues \
    --run runs/cuefree_ladder_rerun/d3ssl_s0 \
    --features c4_head:7 \
    --out experiments/results/cuefree_diagnostics/instance_cues_d3ssl_rerun_s0_c4head.json
python -m experiments.diagnose_instance_cues \
    --run runs/cuefree_circular_padding/d3ssl_s2 \
    --out experiments/results/cuefree_diagnostics/instance_cues_d3ssl_circular_padding_s2.json
python -m experiments.diagnose_instance_cues \
    --run runs/cuefree_circular_padding/d3ssl_s3 \
    --out experiments/results/cuefree_diagnostics/instance_cues_d3ssl_circular_padding_s3.json
python -m experiments.diagnose_instance_cues \
    --run runs/cuefree_circular_padding/d3ssl_dconly_s2 \
    --out experiments/results/cuefree_diagnostics/instance_cues_d3ssl_dconly_circular_padding_s2.json
python -m experiments.diagnose_instance_cues \
    --run runs/cuefree_circular_padding/soco_s3 \
    --out experiments/results/cuefree_diagnostics/instance_cues_soco_circular_padding_s3.json
python -m experiments.diagnose_instance_cues \
    --run runs/cuefree_circular_padding/soco_d3aug_s2 \
    --out experiments/results/cuefree_diagnostics/instance_cues_soco_d3aug_circular_padding_s2.json
python -m experiments.diagnose_instance_cues \
    --run runs/cuefree_4ep/d3ssl_s1 \
    --out experiments/results/cuefree_diagnostics/instance_cues_d3ssl_4ep_s1.json
python -m experiments.diagnose_instance_cues \
    --run runs/cuefree_base_lr2/d3ssl_s1 \
    --out experiments/results/cuefree_diagnostics/instance_cues_d3ssl_base_lr2_s1.json
python -m experiments.diagnose_instance_cues \
    --run runs/cuefree_base_lr2/d3ssl_s3 \
    --out experiments/results/cuefree_diagnostics/instance_cues_d3ssl_base_lr2_s3.json
python -m experiments.diagnose_instance_cues \
    --run runs/cuefree_base_lr32/d3ssl_s1 \
    --out experiments/results/cuefree_diagnostics/instance_cues_d3ssl_base_lr32_s1.json
python -m experiments.diagnose_instance_cues \
    --run runs/cuefree_teacher095/d3ssl_s1 \
    --out experiments/results/cuefree_diagnostics/instance_cues_d3ssl_teacher095_s1.json
python -m experiments.diagnose_instance_cues \
    --run runs/cuefree_teacher0996/d3ssl_s1 \
    --out experiments/results/cuefree_diagnostics/instance_cues_d3ssl_teacher0996_s1.json
python -m experiments.diagnose_instance_cues \
    --run runs/cuefree_no_zero_init/d3ssl_s0 \
    --out experiments/results/cuefree_diagnostics/instance_cues_d3ssl_no_zero_init_s0.json
python -m experiments.diagnose_coupling \
    --run runs/cuefree_ladder_rerun/d3ssl_s0 \
    --out experiments/results/cuefree_diagnostics/coupling_d3ssl_s0.json
python -m experiments.diagnose_coupling \
    --run runs/cuefree_no_zero_init/d3ssl_s0 \
    --out experiments/results/cuefree_diagnostics/coupling_d3ssl_no_zero_init_s0.json
python -m experiments.diagnose_teacher \
    --run runs/cuefree_ladder_rerun/d3ssl_s0 runs/cuefree_teacher095/d3ssl_s1 runs/cuefree_teacher095/d3ssl_s3 runs/cuefree_teacher0996/d3ssl_s1 \
    --oknn \
    --out experiments/results/cuefree_diagnostics/teacher_momentum.json
python -m experiments.diagnose_teacher \
    --run runs/cuefree_teacher0996/d3ssl_s3 runs/cuefree_teacher0999/d3ssl_s1 \
    --oknn \
    --out experiments/results/cuefree_diagnostics/teacher_momentum_later.json
python -m experiments.diagnose_teacher \
    --run runs/cuefree_4ep/d3ssl_s3 runs/cuefree_4ep_teacher0996/d3ssl_s1 runs/cuefree_4ep_teacher0996/d3ssl_s3 \
    --out experiments/results/cuefree_diagnostics/teacher_momentum_long.json
python -m experiments.diagnose_teacher \
    --run runs/cuefree_base_lr32/d3ssl_s1 \
    --out experiments/results/cuefree_diagnostics/teacher_base_lr32.json
python -m experiments.diagnose_teacher \
    --run runs/cuefree_base_lr2/d3ssl_s1 runs/cuefree_base_lr2/d3ssl_s3 \
    --out experiments/results/cuefree_diagnostics/teacher_base_lr2.json
python -m experiments.diagnose_oknn_read \
    --runs-dir runs/cuefree_ladder_rerun \
    --seed 0 \
    --sides 256 128 160 192 \
    --out experiments/results/cuefree_diagnostics/oknn_read_d3ssl_rerun_s0.json
python -m experiments.diagnose_oknn_read \
    --runs-dir runs/cuefree_teacher0996 \
    --seed 1 \
    --sides 256 \
    --out experiments/results/cuefree_diagnostics/oknn_read_teacher0996.json
python -m experiments.diagnose_oknn_read \
    --runs-dir runs/cuefree_teacher0996 \
    --rung d3ssl_dconly \
    --seed 1 \
    --sides 256 \
    --out experiments/results/cuefree_diagnostics/oknn_read_teacher0996.json
python -m experiments.diagnose_oknn_read \
    --runs-dir runs/cuefree_teacher0996 \
    --rung soco \
    --seed 1 \
    --sides 256 \
    --out experiments/results/cuefree_diagnostics/oknn_read_teacher0996.json
python -m experiments.diagnose_oknn_read \
    --runs-dir runs/cuefree_teacher0996 \
    --rung soco_d3aug \
    --seed 1 \
    --sides 256 \
    --out experiments/results/cuefree_diagnostics/oknn_read_teacher0996.json
python -m experiments.diagnose_oknn_read \
    --runs-dir runs/cuefree_teacher0996 \
    --seed 3 \
    --sides 256 \
    --out experiments/results/cuefree_diagnostics/oknn_read_teacher0996.json
python -m experiments.diagnose_oknn_read \
    --runs-dir runs/cuefree_teacher0996 \
    --rung d3ssl_dconly \
    --seed 3 \
    --sides 256 \
    --out experiments/results/cuefree_diagnostics/oknn_read_teacher0996.json
python -m experiments.diagnose_oknn_read \
    --runs-dir runs/cuefree_teacher0996 \
    --rung soco \
    --seed 3 \
    --sides 256 \
    --out experiments/results/cuefree_diagnostics/oknn_read_teacher0996.json
python -m experiments.diagnose_oknn_read \
    --runs-dir runs/cuefree_teacher0996 \
    --rung soco_d3aug \
    --seed 3 \
    --sides 256 \
    --out experiments/results/cuefree_diagnostics/oknn_read_teacher0996.json
python -m experiments.diagnose_oknn_read \
    --runs-dir runs/cuefree_views192 \
    --seed 1 \
    --sides 256 \
    --out experiments/results/cuefree_diagnostics/oknn_read_views192.json
python -m experiments.diagnose_oknn_read \
    --runs-dir runs/cuefree_teacher0996 \
    --seed 1 \
    --sides 256 \
    --bn precise-res5 \
    --out experiments/results/cuefree_diagnostics/oknn_read_bn.json
python -m experiments.diagnose_oknn_read \
    --runs-dir runs/cuefree_teacher0996 \
    --seed 1 \
    --sides 256 \
    --bn precise \
    --out experiments/results/cuefree_diagnostics/oknn_read_bn.json
python -m experiments.diagnose_oknn_read \
    --runs-dir runs/cuefree_4ep \
    --seed 3 \
    --sides 256 \
    --features c4_head:7 \
    --all-checkpoints \
    --out experiments/results/cuefree_diagnostics/oknn_read_steps.json
python -m experiments.diagnose_oknn_read \
    --runs-dir runs/cuefree_4ep_teacher0996 \
    --seed 1 \
    --sides 256 \
    --features c4_head:7 \
    --all-checkpoints \
    --out experiments/results/cuefree_diagnostics/oknn_read_steps.json
python -m experiments.diagnose_oknn_read \
    --runs-dir runs/cuefree_4ep_teacher0996 \
    --seed 3 \
    --sides 256 \
    --features c4_head:7 \
    --all-checkpoints \
    --out experiments/results/cuefree_diagnostics/oknn_read_steps.json
python -m experiments.diagnose_oknn_read \
    --runs-dir runs/cuefree_base_lr2 \
    --seed 1 \
    --sides 256 \
    --features c4_head:7 \
    --all-checkpoints \
    --out experiments/results/cuefree_diagnostics/oknn_read_steps.json
python -m experiments.diagnose_oknn_read \
    --runs-dir runs/cuefree_base_lr2 \
    --seed 2 \
    --sides 256 \
    --features c4_head:7 \
    --all-checkpoints \
    --out experiments/results/cuefree_diagnostics/oknn_read_steps.json
python -m experiments.diagnose_oknn_read \
    --runs-dir runs/cuefree_base_lr2 \
    --seed 3 \
    --sides 256 \
    --features c4_head:7 \
    --all-checkpoints \
    --out experiments/results/cuefree_diagnostics/oknn_read_steps.json
python -m experiments.diagnose_oknn_read \
    --runs-dir runs/cuefree_base_lr32 \
    --seed 1 \
    --sides 256 \
    --features c4_head:7 \
    --all-checkpoints \
    --out experiments/results/cuefree_diagnostics/oknn_read_steps.json
python -m experiments.diagnose_oknn_read \
    --runs-dir runs/cuefree_ladder_rerun \
    --seed 0 \
    --sides 256 \
    --features c4_head:7 \
    --all-checkpoints \
    --out experiments/results/cuefree_diagnostics/oknn_read_steps.json
python -m experiments.diagnose_oknn_read \
    --runs-dir runs/cuefree_teacher095 \
    --seed 1 \
    --sides 256 \
    --features c4_head:7 \
    --all-checkpoints \
    --out experiments/results/cuefree_diagnostics/oknn_read_steps.json
python -m experiments.diagnose_oknn_read \
    --runs-dir runs/cuefree_teacher095 \
    --seed 3 \
    --sides 256 \
    --features c4_head:7 \
    --all-checkpoints \
    --out experiments/results/cuefree_diagnostics/oknn_read_steps.json
python -m experiments.diagnose_oknn_read \
    --runs-dir runs/cuefree_teacher0996 \
    --rung d3ssl_dconly \
    --seed 1 \
    --sides 256 \
    --features c4_head:7 \
    --all-checkpoints \
    --out experiments/results/cuefree_diagnostics/oknn_read_steps.json
python -m experiments.diagnose_oknn_read \
    --runs-dir runs/cuefree_teacher0996 \
    --rung d3ssl_dconly \
    --seed 3 \
    --sides 256 \
    --features c4_head:7 \
    --all-checkpoints \
    --out experiments/results/cuefree_diagnostics/oknn_read_steps.json
python -m experiments.diagnose_oknn_read \
    --runs-dir runs/cuefree_teacher0996 \
    --seed 1 \
    --sides 256 \
    --features c4_head:7 \
    --all-checkpoints \
    --out experiments/results/cuefree_diagnostics/oknn_read_steps.json
python -m experiments.diagnose_oknn_read \
    --runs-dir runs/cuefree_teacher0996 \
    --seed 2 \
    --sides 256 \
    --features c4_head:7 \
    --all-checkpoints \
    --out experiments/results/cuefree_diagnostics/oknn_read_steps.json
python -m experiments.diagnose_oknn_read \
    --runs-dir runs/cuefree_teacher0996 \
    --seed 3 \
    --sides 256 \
    --features c4_head:7 \
    --all-checkpoints \
    --out experiments/results/cuefree_diagnostics/oknn_read_steps.json
python -m experiments.diagnose_oknn_read \
    --runs-dir runs/cuefree_teacher0996 \
    --rung soco_d3aug \
    --seed 1 \
    --sides 256 \
    --features c4_head:7 \
    --all-checkpoints \
    --out experiments/results/cuefree_diagnostics/oknn_read_steps.json
python -m experiments.diagnose_oknn_read \
    --runs-dir runs/cuefree_teacher0996 \
    --rung soco_d3aug \
    --seed 3 \
    --sides 256 \
    --features c4_head:7 \
    --all-checkpoints \
    --out experiments/results/cuefree_diagnostics/oknn_read_steps.json
python -m experiments.diagnose_oknn_read \
    --runs-dir runs/cuefree_teacher0996 \
    --rung soco \
    --seed 1 \
    --sides 256 \
    --features c4_head:7 \
    --all-checkpoints \
    --out experiments/results/cuefree_diagnostics/oknn_read_steps.json
python -m experiments.diagnose_oknn_read \
    --runs-dir runs/cuefree_teacher0996 \
    --rung soco \
    --seed 3 \
    --sides 256 \
    --features c4_head:7 \
    --all-checkpoints \
    --out experiments/results/cuefree_diagnostics/oknn_read_steps.json
python -m experiments.diagnose_oknn_read \
    --runs-dir runs/cuefree_teacher0999 \
    --seed 1 \
    --sides 256 \
    --features c4_head:7 \
    --all-checkpoints \
    --out experiments/results/cuefree_diagnostics/oknn_read_steps.json
python -m experiments.diagnose_oknn_read \
    --runs-dir runs/cuefree_views192 \
    --seed 1 \
    --sides 256 \
    --features c4_head:7 \
    --all-checkpoints \
    --out experiments/results/cuefree_diagnostics/oknn_read_steps.json
