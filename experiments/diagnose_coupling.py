"""Why the mini ladder's coupling rate reads 1.000 on the paper's model

With zero padding every self-supervised rung of the mini ladder has a layer4 coupling rate (CR,
Sec. 3.1) of 1.000-1.002, like its random initialisation, while the supervised ceiling reads 1.08.
A CR of 1 can mean three things, and this script tells them apart for a run's final checkpoint:

* B does not move A's feature at all: cos(A1, A2) = 1, where A1 is A beside B and A2 is A alone;
* B moves it, but not towards B;
* the features of all objects are so nearly parallel that no move can raise the ratio: a pair's
  CR = cos(A1, B) / cos(A2, B) is at most 1 / cos(A2, B).

It reads the three cosines (``run_coupling``'s ``per_stage_cosines``) and, to see where the mixing
would come from, how open each residual block is: the mean over val images and positions of
``|branch(x)| / |shortcut(x)|`` per stage (0 for a block whose last BN weight is 0: the block is then
its shortcut, a 1x1 convolution or the identity, and mixes nothing across space), and the mean
``|weight|`` of the blocks' last BN. SoCo's ResNet, and so the mini recipes (``model.zero_init_last``),
starts every block's last BN weight at 0. The rows: the run's seed initialised both ways, with the
last BN weights at 0 (SoCo's) and at 1 (torchvision's, as the supervised ceiling starts), one of
which is the run's exact start; the trained checkpoint(s); and, with ``--ceiling-steps``, the supervised ceiling of
``experiments.mini_ladder`` trained again here (the ladder does not keep its weights):

    python -m experiments.diagnose_coupling --run runs/cuefree_ladder/d3ssl_s0 runs/cuefree_ladder/soco_s0 \\
        --ceiling-steps 150 --out coupling.json

The first run's recipe sets the data and the seed of the random initialisations.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from d3ssl_zoo.data import load_rgb
from d3ssl_zoo.data import scenes as gen
from d3ssl_zoo.evaluation.coupling import run_coupling
from d3ssl_zoo.evaluation.features import STAGES, eval_mode, model_mean_std
from d3ssl_zoo.evaluation.objects import load_coco_objects, to_tensor
from experiments import ladder


def last_norm(block: nn.Module) -> nn.Module:
    """The norm layer that ends a residual block's branch (timm: ``bn3`` of a bottleneck, ``bn2`` of a basic block)."""
    return block.bn3 if hasattr(block, "bn3") else block.bn2


def branch_openness(model: nn.Module, images: torch.Tensor) -> dict[str, dict[str, float]]:
    """Per stage: mean ``|branch| / |shortcut|`` over images and positions, and mean ``|last BN weight|``."""
    ratios: dict[str, list[float]] = {s: [] for s in STAGES}
    handles, seen = [], {}
    for stage in STAGES:
        for block in getattr(model, stage):
            # copies: the block adds the shortcut into its branch's output in place
            def pre(mod, args, _b=block):
                seen[_b] = {"shortcut": args[0].clone()}

            def post_branch(mod, args, out, _b=block):
                seen[_b]["branch"] = out.clone()

            def post_down(mod, args, out, _b=block):
                seen[_b]["shortcut"] = out.clone()

            handles.append(block.register_forward_pre_hook(pre))
            handles.append(last_norm(block).register_forward_hook(post_branch))
            if block.downsample is not None:
                handles.append(block.downsample.register_forward_hook(post_down))
    try:
        with torch.inference_mode(), eval_mode(model):
            model.forward_features(images)
    finally:
        for h in handles:
            h.remove()
    for stage in STAGES:
        for block in getattr(model, stage):
            b, s = seen[block]["branch"], seen[block]["shortcut"]
            ratios[stage].append(float((b.norm(dim=1) / s.norm(dim=1).clamp_min(1e-12)).mean()))
    return {stage: {"branch_to_shortcut": float(np.mean(ratios[stage])),
                    "last_bn_weight": float(np.mean([last_norm(b).weight.abs().mean().item()
                                                     for b in getattr(model, stage)]))}
            for stage in STAGES}


def val_batch(scenes, model: nn.Module, count: int, side: int) -> torch.Tensor:
    """The first ``count`` val images, resized to ``side`` (the scenes are square), normalised for ``model``."""
    objects = load_coco_objects(scenes.val_ann, scenes.val_images)
    mean, std = model_mean_std(model)
    out = [to_tensor(cv2.resize(load_rgb(r.path), (side, side), interpolation=cv2.INTER_AREA), mean, std)
           for r in objects.images[:count]]
    return torch.stack(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.diagnose_coupling", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", nargs="+", required=True, help="mini-ladder run folders (train/pretrain.py output)")
    p.add_argument("--ceiling-steps", type=int, default=0,
                   help="also train the supervised ceiling as the ladder does (its --ceiling-steps; 0: no)")
    p.add_argument("--num-pairs", type=int, default=100, help="coupling-rate pairs (the ladder's default)")
    p.add_argument("--object-size", type=int, default=128, help="CR object crop side (the ladder's default)")
    p.add_argument("--short-side", type=int, default=256, help="the ceiling's training scale and the branch images'")
    p.add_argument("--images", type=int, default=32, help="val images for the branch-to-shortcut ratios")
    p.add_argument("--out", default=None, help="JSON of every number printed")
    args = p.parse_args(argv)
    if args.ceiling_steps < 0 or args.images < 1:
        p.error(f"need --ceiling-steps >= 0 and --images >= 1, got {args.ceiling_steps} and {args.images}")

    runs = [Path(r) for r in args.run]
    finals = [ladder.final_checkpoint(r) for r in runs]
    recipe = finals[0][1]
    seed = recipe["train"]["seed"]
    scenes = gen.get_scene_dataset(gen.SceneConfig.from_source(recipe["dataset"]["source"]))
    # the same seed and draws, with the blocks' last BN weights at 0 and at 1; one of them is the run's start
    runs_own = bool(recipe["model"].get("zero_init_last", False))
    models = {}
    for zero_init, init in ((True, "last BN weight 0, SoCo"), (False, "last BN weight 1, torchvision")):
        name = f"random init s{seed} ({init}" + (", the run's)" if zero_init == runs_own else ")")
        models[name] = ladder.initial_backbone({"model": {**recipe["model"], "zero_init_last": zero_init}}, seed)
    for run, (ckpt, _) in zip(runs, finals):
        models[f"{run.name} (step {ladder.checkpoint_step(ckpt)})"] = ladder.backbone_from_checkpoint(ckpt)
    if args.ceiling_steps:
        models[f"supervised ceiling ({args.ceiling_steps} steps)"] = ladder.supervised_ceiling(
            recipe, scenes, args.ceiling_steps, args.short_side)[0]

    images = val_batch(scenes, next(iter(models.values())), args.images, args.short_side)
    res = {"runs": [str(r) for r in runs], "seed": seed, "num_pairs": args.num_pairs,
           "object_size": args.object_size, "models": {}}
    print("| model | stage | CR | largest CR possible | cos(A2, B) | cos(A1, B) | cos(A1, A2) | "
          "branch / shortcut | last BN weight |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, model in models.items():
        cr = run_coupling(model, scenes.val_ann, scenes.val_images, num_pairs=args.num_pairs,
                          object_size=args.object_size, min_object_size=32, seed=seed, progress=False)
        opened = branch_openness(model, images)
        res["models"][name] = {"cr": cr["per_stage"], "cr_max": cr["per_stage_max_rate"],
                               "cosines": cr["per_stage_cosines"], "blocks": opened}
        for s in STAGES:
            c = cr["per_stage_cosines"][s]
            print(f"| {name} | {s} | {cr['per_stage'][s]:.4f} | {cr['per_stage_max_rate'][s]:.4f} | "
                  f"{c['a2_b']:.4f} | {c['a1_b']:.4f} | {c['a1_a2']:.4f} | "
                  f"{opened[s]['branch_to_shortcut']:.3f} | {opened[s]['last_bn_weight']:.3f} |", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
