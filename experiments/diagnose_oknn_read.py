"""Does O-KNN's read hide what the mini ladder's D3SSL backbone learned?

O-KNN reads RoIAlign 7x7 on the full-image C5 map at 256 px short side (the paper's protocol);
pre-training optimises RoIAlign on C4 -> res5 (the region head) on 128 px views. This evaluates a
ladder run's final checkpoint and the exact random initialisation of the same seed through both
reads, at both scales, and prints trained - random init for each:

    python -m experiments.diagnose_oknn_read --runs-dir runs/coloured_ladder --seed 0

The scenes and the random init are the run's own (its checkpoint's recipe). Results are stored in
``--out`` as they finish (a rerun skips what is there). ``--all-checkpoints`` reads every checkpoint
the run kept, to see whether a read rises with training.

``--bn precise`` (or ``precise-res5``) reads each model again after recomputing its BatchNorm running
statistics (detectron2's PreciseBN) over whole images of the unlabelled pre-training split at the
read's short side, every BN (or res5's only): pre-training runs res5 on RoI features only, so the
statistics the checkpoint carries for res5 were never measured on the full-image C5 map that O-KNN
reads. No label enters the recalibration.
"""
import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch

from d3ssl_zoo.data.coco_json import coco_records
from d3ssl_zoo.data.scenes import SceneConfig, SceneDataset, get_scene_dataset
from d3ssl_zoo.detection.finetune import precise_bn
from d3ssl_zoo.engine import list_checkpoints
from d3ssl_zoo.evaluation.features import model_mean_std, stage_maps
from d3ssl_zoo.evaluation.objects import read_image, resized_size, to_tensor
from d3ssl_zoo.evaluation.oknn import run_oknn
from experiments import ladder

BN_MODES = ("checkpoint", "precise", "precise-res5")


def recalibration_batches(scenes: SceneDataset, side: int, num_images: int, seed: int, mean, std,
                          batch_size: int = 32) -> list[torch.Tensor]:
    """``num_images`` pre-training images (drawn with ``seed``) at ``side`` short side, read as O-KNN reads
    its images (normalised by ``mean``/``std``) and batched by size: what ``--bn precise*`` averages BN
    statistics over."""
    records = coco_records(scenes.pretrain_ann, scenes.images_dir)
    if len(records) < num_images:
        raise SystemExit(f"--bn-images {num_images}: {scenes.pretrain_ann} lists only {len(records)} images; "
                         f"use at most that")
    by_size = {}
    for i in np.random.default_rng(seed).choice(len(records), num_images, replace=False):
        size = resized_size(records[i].height, records[i].width, side)
        by_size.setdefault(size, []).append(records[i])
    return [torch.stack([to_tensor(read_image(r, size), mean, std) for r in group[j:j + batch_size]])
            for size, group in by_size.items() for j in range(0, len(group), batch_size)]


def recalibrated(model: torch.nn.Module, batches: list[torch.Tensor], mode: str) -> torch.nn.Module:
    """A copy of ``model`` whose BN running statistics (all, or res5's for ``precise-res5``) are their
    average over ``batches``."""
    model = copy.deepcopy(model).eval()
    target = model if mode == "precise" else model.layer4
    precise_bn(target, batches, len(batches), run=lambda x: stage_maps(model, x, ("layer4",)))
    return model.eval()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.diagnose_oknn_read", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs-dir", required=True, help="the ladder's --runs-dir (holds <rung>_s<seed>)")
    p.add_argument("--rung", default="d3ssl", choices=sorted(ladder.RUNGS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--roi-size", type=int, default=7, help="the recipe's method.roi_size (mini: 7)")
    p.add_argument("--sides", type=int, nargs="+", default=[128, 256], help="O-KNN short sides")
    p.add_argument("--bn", default="checkpoint", choices=BN_MODES,
                   help="BN statistics of the read: the checkpoint's (O-KNN's), or recomputed over whole pre-training "
                        "images at the read's side for every BN (precise) or res5's only (precise-res5)")
    p.add_argument("--bn-images", type=int, default=512, help="pre-training images that --bn precise* averages over")
    p.add_argument("--features", nargs="+", default=None,
                   help="reads to run (default: c5 and c4_head:<--roi-size>)")
    p.add_argument("--all-checkpoints", action="store_true",
                   help="read every checkpoint of the run (does the read rise with training?), not only the last")
    p.add_argument("--out", default="oknn_read.json")
    args = p.parse_args(argv)

    run = Path(args.runs_dir) / f"{args.rung}_s{args.seed}"
    hint = f"; run python -m experiments.mini_ladder --runs-dir {args.runs_dir} first"
    final, recipe = ladder.final_checkpoint(run, hint)
    # The run's own recipe: its scene set (the coloured scenes or the cue-free scenes) and its model's init.
    scenes = get_scene_dataset(SceneConfig.from_source(recipe["dataset"]["source"]))
    ckpts = sorted(list_checkpoints(run), key=ladder.checkpoint_step) if args.all_checkpoints else [final]
    # (name, checkpoint): the random init is one model, keyed under the last checkpoint as before
    targets = [("random init", final)] + [("trained", c) for c in ckpts]
    out = Path(args.out)
    res = json.loads(out.read_text()) if out.is_file() else {}
    bn = "" if args.bn == "checkpoint" else f"/bn={args.bn}:{args.bn_images}"
    models = {}  # (name, checkpoint) -> model, built on first need
    reads = {}  # (name, checkpoint, side) -> the model as read at that side
    images = {}  # (side, mean, std) -> the recalibration batches, decoded once for every model

    def model_at(name: str, ckpt: Path, side: int) -> torch.nn.Module:
        if (name, ckpt) not in models:
            models[name, ckpt] = (ladder.initial_backbone(recipe, args.seed) if name == "random init"
                                  else ladder.backbone_from_checkpoint(ckpt))
        if args.bn == "checkpoint":
            return models[name, ckpt]
        if (name, ckpt, side) not in reads:
            norm = model_mean_std(models[name, ckpt])
            batches = (side, *norm)  # decoded once per side and normalisation, for every model
            if batches not in images:
                images[batches] = recalibration_batches(scenes, side, args.bn_images, args.seed, *norm)
            reads[name, ckpt, side] = recalibrated(models[name, ckpt], images[batches], args.bn)
        return reads[name, ckpt, side]

    for features in args.features or ("c5", f"c4_head:{args.roi_size}"):
        for side in args.sides:
            row = []
            for name, ckpt in targets:
                # keyed by the run folder, so one --out can hold many runs' reads
                key = f"{run.as_posix()}/{ckpt.name}/{name}/{features}/{side}{bn}"
                if key not in res:
                    res[key] = run_oknn(model_at(name, ckpt, side), scenes.train_ann, scenes.train_images,
                                        scenes.val_ann, scenes.val_images, short_side=side, seed=args.seed,
                                        progress=False, features=features)["top1"]
                    out.write_text(json.dumps(res, indent=1, sort_keys=True))
                row.append(res[key])
            steps = "  ".join(f"step {ladder.checkpoint_step(c)} {r:5.1f} % ({r - row[0]:+5.1f})"
                              for c, r in zip(ckpts, row[1:]))
            print(f"{features:>10}{bn} at {side:4d} px: random init {row[0]:5.1f} %  trained {steps}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
