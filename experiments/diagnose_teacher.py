"""How far the momentum teacher follows the student in a mini-ladder run

The teacher f_k is an exponential moving average of the student, theta_k <- m theta_k + (1 - m) theta_q,
with m going from ``method.momentum_base`` to 1 on a cosine (SoCo / BYOL). After n steps the teacher
still holds ``prod_t m_t`` of its random initialisation. SoCo's 0.99 is set for runs of 10^5 steps,
where that product is 0; over the mini ladder's 279 steps it is 0.25, and from the last third of the
run on m is so close to 1 that the teacher hardly moves. Its embeddings are the targets and the
memory bank's negatives of every loss, so a teacher that stays near the random network would hold the
student near it too, whatever more the data could teach.

For every checkpoint of each run this prints the schedule's momentum and that product, how far student
and teacher have moved from the run's exact random initialisation and from each other (the L2 norm of
the parameter difference over the backbone's weights, without the BN running statistics, as a fraction
of the initial weights' norm), and with ``--oknn`` the O-KNN top-1 of both backbones as the ladder
evaluates it:

    python -m experiments.diagnose_teacher --run runs/cuefree_ladder/d3ssl_s0 --oknn --out teacher.json
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from d3ssl_zoo.data import scenes as gen
from d3ssl_zoo.engine import list_checkpoints
from d3ssl_zoo.method import momentum_at
from experiments import ladder


def init_weight_held(steps: int, total_steps: int, base: float, final: float) -> float:
    """``prod_{t < steps} m_t``: the share of its initial weights the teacher still holds after ``steps``
    updates of the run's schedule (the EMA after step t uses m_t)."""
    return math.exp(sum(math.log(momentum_at(t, total_steps, base, final)) for t in range(steps)))


def distances(state: dict[str, torch.Tensor], init: dict[str, torch.Tensor]) -> dict[str, float]:
    """Student and teacher moves from ``init`` and their gap, as fractions of ``|init|`` over the learnt
    tensors (conv and BN weights and biases; the running statistics are not learnt)."""
    sums = {"student_moved": 0.0, "teacher_moved": 0.0, "teacher_to_student": 0.0}
    norm = 0.0
    for name, w0 in init.items():
        if not w0.is_floating_point() or name.split(".")[-1].startswith("running_"):
            continue
        s, t = state[f"student.backbone.{name}"], state[f"teacher.backbone.{name}"]
        sums["student_moved"] += float((s - w0).pow(2).sum())
        sums["teacher_moved"] += float((t - w0).pow(2).sum())
        sums["teacher_to_student"] += float((t - s).pow(2).sum())
        norm += float(w0.pow(2).sum())
    return {k: math.sqrt(v / norm) for k, v in sums.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.diagnose_teacher", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", nargs="+", required=True, help="mini-ladder run folders (train/pretrain.py output)")
    p.add_argument("--oknn", action="store_true", help="also O-KNN top-1 of student and teacher per checkpoint")
    p.add_argument("--short-side", type=int, default=256, help="O-KNN scale (the ladder's default)")
    p.add_argument("--out", default=None, help="JSON of every number printed")
    args = p.parse_args(argv)

    res = {"runs": {}}
    print("| run | step | momentum | init weight the teacher holds | student moved | teacher moved | "
          "teacher to student |" + (" O-KNN student | O-KNN teacher |" if args.oknn else ""))
    print("|---|---|---|---|---|---|---|" + ("---|---|" if args.oknn else ""))
    for run in map(Path, args.run):
        ckpts = sorted(list_checkpoints(run), key=ladder.checkpoint_step)
        if not ckpts:
            raise SystemExit(f"{run} has no checkpoints")
        recipe = yaml.safe_load((ckpts[-1] / ladder.RECIPE_FILE).read_text())
        seed, method = recipe["train"]["seed"], recipe["method"]
        total = json.loads((ckpts[-1] / "trainer_state.json").read_text())["total_steps"]
        init = ladder.initial_backbone(recipe, seed).state_dict()
        scenes = (gen.get_scene_dataset(gen.SceneConfig.from_source(recipe["dataset"]["source"]))
                  if args.oknn else None)
        rows = []
        for ckpt in ckpts:
            step = ladder.checkpoint_step(ckpt)
            row = {"step": step, "momentum": momentum_at(step, total, method["momentum_base"],
                                                          method["momentum_final"]),
                   "init_weight_held": init_weight_held(step, total, method["momentum_base"],
                                                        method["momentum_final"]),
                   **distances(load_file(str(ckpt / "model.safetensors")), init)}
            if args.oknn:
                for network in ("student", "teacher"):
                    model = ladder.backbone_from_checkpoint(ckpt, network)
                    row[f"oknn_{network}"] = ladder.evaluate(model, scenes, {"short_side": args.short_side},
                                                             seed, full=False)["oknn"]["top1"]
            rows.append(row)
            line = (f"| {run.parent.name}/{run.name} | {step} | {row['momentum']:.4f} | "
                    f"{row['init_weight_held']:.3f} | "
                    f"{row['student_moved']:.3f} | {row['teacher_moved']:.3f} | {row['teacher_to_student']:.3f} |")
            if args.oknn:
                line += f" {row['oknn_student']:.1f} | {row['oknn_teacher']:.1f} |"
            print(line, flush=True)
        res["runs"][str(run)] = {"seed": seed, "total_steps": total, "momentum_base": method["momentum_base"],
                                 "momentum_final": method["momentum_final"], "checkpoints": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
