"""Does a D3SSL run recognise the batch instead of the region?

D3SSL's InfoNCE (Eq. 5) takes every negative from the memory bank, i.e. from earlier batches, while
the positive key is computed in the same forward -- the same BatchNorm batch -- as its query. MoCo
(He et al., CVPR 2020, Sec. 3.3) found that this lets a model "cheat the pretext task": batch
statistics mark the positive, and the loss falls without better features. MoCo's answer is
shuffling BN (``method.bn_groups``).

This script measures the cheat on a trained run. For batches of the run's own pre-training data, in
training mode, it compares the student's region queries with

* a memory bank: the teacher keys of other batches, each embedded as its own BN batch, as the
  bank's negatives were during training, and
* the teacher keys of the *other images* of the same batch (same BN batch, never negatives),

and reports the mean cosine similarity to each and the chance that the positive scores above a
random one of them. A model that uses batch statistics finds its positive among the old negatives far more
easily than among same-batch regions, and sits closer to same-batch keys than to old ones; with BN
on running statistics (eval mode) the batch can no longer be seen and the gap must close. The
run's exact random initialisation is measured the same way as the reference.

    python -m experiments.diagnose_bn_leak --run runs/coloured_ladder/d3ssl_s0 [--batches 8] [--out bn_leak.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate.utils import set_seed
from safetensors.torch import load_file

import d3ssl_zoo
from d3ssl_zoo.data.datasets import (
    build_pretrain_dataset,
    prepare_batch,
    pretrain_loader,
)
from d3ssl_zoo.engine.config import recipe_from_dict
from d3ssl_zoo.engine.trainer import EpochShuffleSampler, build_method
from experiments import ladder


def build(recipe, state: dict | None):
    """The run's method module: its exact random init (``state=None``) or a checkpoint's weights."""
    set_seed(recipe.train.seed)  # as the engine: seed, then build
    method = build_method(recipe, d3ssl_zoo.create_model(recipe.model.name, pretrained=False, **recipe.model.kwargs()))
    if state is not None:
        method.load_state_dict(state, strict=True)
    return method


@torch.no_grad()
def measure(method, batches: list[dict], bank_batches: list[dict], mode: str) -> dict:
    """Query-vs-key statistics of ``method`` on ``batches`` with BN in ``mode`` ('train' or 'eval').

    The bank holds the teacher's keys of ``bank_batches``, each embedded as its own BN batch, as the
    memory bank's keys were enqueued. ``p_*`` is the chance that the positive scores above a
    negative drawn at random from the set (an AUC: independent of how many negatives there are).
    """
    method.train(mode == "train")
    bank = F.normalize(torch.cat([method.teacher(b["x2"], b["boxes2"], method.roi_size) for b in bank_batches]), dim=1)
    stats = {"cos_positive": [], "cos_bank": [], "cos_same_batch": [], "p_above_bank": [], "p_above_same_batch": []}
    for batch in batches:
        k = batch["boxes1"].shape[1]
        q = F.normalize(method.student(batch["x1"], batch["boxes1"], method.roi_size), dim=1)
        key = F.normalize(method.teacher(batch["x2"], batch["boxes2"], method.roi_size), dim=1)
        pos = (q * key).sum(1, keepdim=True)
        to_bank = q @ bank.t()
        same = q @ key.t()
        image = torch.arange(len(q)) // k
        other_image = image[:, None] != image[None, :]  # keys of the batch's other images
        stats["cos_positive"].append(pos.mean().item())
        stats["cos_bank"].append(to_bank.mean().item())
        stats["cos_same_batch"].append(same[other_image].mean().item())
        stats["p_above_bank"].append((pos > to_bank).float().mean().item())
        stats["p_above_same_batch"].append((pos > same)[other_image].float().mean().item())
    return {name: sum(v) / len(v) for name, v in stats.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.diagnose_bn_leak", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a train/pretrain.py output folder of a d3ssl recipe")
    p.add_argument("--batches", type=int, default=8, help="pre-training batches to measure on")
    p.add_argument("--epoch", type=int, default=1000, help="sampler epoch the batches are drawn from (any; "
                   "a large one gives views the run never saw)")
    p.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = p.parse_args(argv)

    run = Path(args.run)
    final, resolved = ladder.final_checkpoint(run)
    recipe = recipe_from_dict(resolved)
    if recipe.method.name != "d3ssl":
        raise SystemExit(f"{run} is a {recipe.method.name} run; the leak needs d3ssl's memory bank")

    dataset = build_pretrain_dataset(recipe.data, recipe.dataset.source, recipe.dataset.proposals,
                                     seed=recipe.train.seed)
    sampler = EpochShuffleSampler(len(dataset), recipe.train.seed)
    sampler.set_epoch(args.epoch)
    loader = pretrain_loader(dataset, recipe.data, recipe.train.batch_size, sampler, 0)
    batches = []
    for batch in loader:  # the first half is measured, the second half makes the bank
        batches.append(prepare_batch(batch, recipe.data.mean, recipe.data.std))
        if len(batches) == 2 * args.batches:
            break
    batches, bank_batches = batches[:args.batches], batches[args.batches:]

    trained = build(recipe, load_file(str(final / "model.safetensors")))
    initial = build(recipe, None)
    res = {"run": str(run), "checkpoint": final.name, "step": ladder.checkpoint_step(final),
           "bn_groups": recipe.method.bn_groups, "batches": len(batches), "batch_size": recipe.train.batch_size}
    for name, method in (("random init", initial), ("trained", trained)):
        for mode in ("train", "eval"):
            r = measure(method, batches, bank_batches, mode)
            res[f"{name}/{mode}"] = r
            print(f"{name:>11}, BN {mode:5}: cos(q, positive) {r['cos_positive']:.3f}  cos(q, bank) "
                  f"{r['cos_bank']:.3f}  cos(q, same-batch keys) {r['cos_same_batch']:.3f}  |  P(positive above) "
                  f"bank {r['p_above_bank']:.3f}  same-batch {r['p_above_same_batch']:.3f}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
