"""The mini ladder: a small-scale reproduction of the paper's directions that runs on 2 CPU cores.

    python -m experiments.mini_ladder            # every rung, 2 seeds, all evaluations (~2 h at 1.75 s/step)
    python -m experiments.mini_ladder --rungs d3ssl soco --seeds 0 --out experiments/results/mine --runs-dir runs/mine
    python -m experiments.mini_ladder --out experiments/results/cuefree_ladder --report-only   # results.md again

Rungs (one recipe each in ``experiments/recipes/``, same data, model, resolution, batch and steps):
``d3ssl`` (full method), ``d3ssl_dconly`` (w/o L_dp, Tab. 7), ``d3ssl_dp1`` (L_dp on one of the K
proposals, a reading of Sec. 4.2 in which the shift t can move the pasted region), ``soco`` and
``soco_d3aug`` (Tab. 6).

Each run is ``accelerate launch train/pretrain.py --recipe <rung> ...`` in a subprocess (the path
a user takes), into ``<runs-dir>/<rung>_s<seed>``; it resumes from its newest checkpoint when the
ladder is relaunched. Every checkpoint of every run is evaluated on the scene set's labelled split
(O-KNN at every checkpoint; disturbed O-KNN, coupling rate and positional MCS per stage, each with
its standard error, at the end), and so are the random initialisation of each seed and a supervised
ceiling (the same backbone trained with the labels). Evaluations are stored in
``<out>/results.json`` as they finish and are never recomputed, so a killed ladder continues where
it stopped; a final evaluation stored without the CR / MCS standard errors gets them on relaunch,
where its checkpoint is still there. ``results.json`` also keeps the command that built the folder
(a list where several did) and the readings of the paper its runs follow (``experiments.ladder.READINGS``,
printed in ``results.md``; a folder made with other readings is refused). ``results.md``, the figures
and ``command.sh`` are rewritten after every evaluation (``experiments.report``).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

from d3ssl_zoo.checkpoint import list_checkpoints
from d3ssl_zoo.data.scenes import SceneConfig, get_scene_dataset
from d3ssl_zoo.engine.config import apply_overrides
from d3ssl_zoo.recipe import resolve_recipe_file
from experiments.ladder import (
    PAPER,
    READINGS,
    RUNGS,
    Results,
    add_standard_errors,
    backbone_from_checkpoint,
    checkpoint_step,
    evaluate,
    initial_backbone,
    recipe_path,
    shift_statistics,
    supervised_ceiling,
)
from experiments.report import write_report

ROOT = Path(__file__).resolve().parents[1]  # the repository root
PRETRAIN = ROOT / "train" / "pretrain.py"  # the user's entry point, which every rung is trained through


# ---------------------------------------------------------------- evaluation settings
def eval_settings(args) -> dict:
    return dict(short_side=args.short_side, num_pairs=args.num_pairs, num_crops=args.num_crops,
                object_size=args.object_size, min_object_size=args.min_object_size)


# ---------------------------------------------------------------- the ladder
def run_rung(rung: str, seed: int, runs_dir: Path, overrides: list[str], log_dir: Path) -> Path:
    """Train (or resume) one run through the user's entry point; returns its output folder."""
    out = runs_dir / f"{rung}_s{seed}"
    if (out / "export" / "model.safetensors").is_file():
        return out
    # one process with every core: accelerate launch would otherwise set OMP_NUM_THREADS=1
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
           "--num_cpu_threads_per_process", str(os.cpu_count() or 1), "--mixed_precision", "no",
           "--dynamo_backend", "no",
           str(PRETRAIN), "--recipe", str(recipe_path(rung)),
           "--output-dir", str(out), "--no-eval", f"train.seed={seed}", *overrides]
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{rung}_s{seed}.log"
    print(f"[ladder] training {rung} seed {seed}: {' '.join(cmd)} (log {log})", flush=True)
    tic = time.time()
    with open(log, "a") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise RuntimeError(f"{rung} seed {seed} failed (exit {rc}); see {log}")
    print(f"[ladder] {rung} seed {seed} trained in {time.time() - tic:.0f} s", flush=True)
    return out


def parser() -> argparse.ArgumentParser:
    """The ladder's command line."""
    p = argparse.ArgumentParser(prog="python -m experiments.mini_ladder", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rungs", nargs="+", default=list(RUNGS), choices=list(RUNGS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--out", default=str(ROOT / "experiments" / "results" / "coloured_ladder"),
                   help="the result folder: results.json, results.md, figures, command.sh")
    p.add_argument("--runs-dir", default="runs/coloured_ladder", help="training runs (checkpoints, exports)")
    p.add_argument("--override", nargs="*", default=[], metavar="key=value",
                   help="recipe overrides for every rung (e.g. a smaller dataset.source for a quick check)")
    p.add_argument("--short-side", type=int, default=256,
                   help="O-KNN image scale (scenes are 160 px: objects 77-141 px)")
    p.add_argument("--num-pairs", type=int, default=100, help="coupling-rate pairs")
    p.add_argument("--num-crops", type=int, default=100, help="positional-MCS crops")
    p.add_argument("--object-size", type=int, default=128, help="CR / MCS object crop side (multiple of 32)")
    p.add_argument("--min-object-size", type=float, default=32)
    p.add_argument("--ceiling-steps", type=int, default=300,
                   help="supervised ceiling: SGD steps of 16 images (0: no ceiling, e.g. for a one-rung diagnostic)")
    p.add_argument("--intermediate", action=argparse.BooleanOptionalAction, default=True,
                   help="O-KNN of every intermediate checkpoint (the learning curves)")
    p.add_argument("--report-only", action="store_true",
                   help="only rewrite results.md, the figures and command.sh from the --out folder's results.json")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = parser()
    args = p.parse_args(argv)
    if args.ceiling_steps < 0:
        p.error(f"--ceiling-steps must be >= 0 (0 skips the supervised ceiling), got {args.ceiling_steps}")
    out = Path(args.out)
    if args.report_only:
        write_report(Results.read(out / "results.json"), out)
        print(f"[ladder] rewritten: {out / 'results.md'}")
        return 0

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    runs_dir = Path(args.runs_dir)
    settings = eval_settings(args)
    # The rungs' shared recipe with the ladder's overrides, for what every rung shares (data, model).
    base = apply_overrides(resolve_recipe_file(recipe_path("d3ssl"))[0], args.override)
    scenes = get_scene_dataset(SceneConfig.from_source(base["dataset"]["source"]))
    results = Results(out / "results.json", {"settings": {**settings, "overrides": args.override,
                                                          "scenes": scenes.config.key()},
                                             "rungs": RUNGS, "paper": PAPER, "readings": READINGS})
    results.record_command(shlex.join(["python", "-m", "experiments.mini_ladder", *argv]))

    if "shift_statistics" not in results.data:
        results.put_extra("shift_statistics", shift_statistics(base, scenes))
    for seed in args.seeds:  # the floor: each seed's random initialisation
        key = f"random_init/s{seed}"
        if not results.has(key):
            results.put(key, {"step": 0, **evaluate(initial_backbone(base, seed), scenes, settings, seed, True)})
            write_report(results, out)
        elif "cr_se" not in results.data["evals"][key]:
            add_standard_errors(results, key, initial_backbone(base, seed), scenes, settings, seed)
    # the ceiling: the same backbone trained with the labels
    if args.ceiling_steps > 0 and not results.has("supervised/s0"):
        model, info = supervised_ceiling(base, scenes, args.ceiling_steps, args.short_side)
        results.put("supervised/s0", {"training": info, **evaluate(model, scenes, settings, 0, True)})
        write_report(results, out)

    for seed in args.seeds:
        for rung in args.rungs:
            done = [k for k, v in results.data["evals"].items() if k.startswith(f"{rung}/s{seed}/") and v.get("final")]
            if done:  # evaluated to the end already (checkpoints are evaluated in step order)
                if "cr_se" not in results.data["evals"][done[0]]:
                    stored_before_standard_errors(results, done[0], runs_dir / f"{rung}_s{seed}", base, scenes,
                                                  settings, seed)
                continue
            run = run_rung(rung, seed, runs_dir, args.override, out / "logs")
            ckpts = list_checkpoints(run)
            final = max(ckpts, key=checkpoint_step)
            for ckpt in ckpts:
                state = json.loads((ckpt / "trainer_state.json").read_text())
                is_final = ckpt == final
                if not (is_final or args.intermediate):
                    continue
                key = f"{rung}/s{seed}/step{state['step']}"
                if results.has(key):
                    continue
                model = backbone_from_checkpoint(ckpt)
                tic = time.time()
                results.put(key, {"step": state["step"], "total_steps": state["total_steps"], "final": is_final,
                                  **evaluate(model, scenes, settings, seed, is_final)})
                print(f"[ladder] evaluated {key} in {time.time() - tic:.0f} s", flush=True)
                write_report(results, out)
    write_report(results, out)
    print(f"[ladder] done: {out / 'results.md'}")
    return 0


def stored_before_standard_errors(results: Results, key: str, run: Path, base: dict, scenes, settings: dict,
                                  seed: int) -> None:
    """A rung's final evaluation from before the standard errors: add them from its checkpoint, if kept."""
    step = results.data["evals"][key]["step"]
    ckpt = next((c for c in list_checkpoints(run) if checkpoint_step(c) == step), None)
    if ckpt is None:
        print(f"[ladder] {key}: no step-{step} checkpoint in {run}, so its CR and MCS keep no standard error",
              flush=True)
        return
    add_standard_errors(results, key, backbone_from_checkpoint(ckpt), scenes, settings, seed)


if __name__ == "__main__":
    sys.exit(main())
