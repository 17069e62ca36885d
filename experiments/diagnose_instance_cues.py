"""What do the mini ladder's region features encode besides the shape?

The generated scenes' class is a shape's outline; everything else about an object is drawn at random per
instance: the photo its image's background is cut from, the fill (solid or a gradient), the fill's
colour, the size. Region-instance discrimination can tell instances apart by any of these, and
only the outline is scored by O-KNN. This script replays the generator of the labelled splits
(same seed, same random streams, checked against the stored labels) to recover each object's
nuisance attributes, reads the O-KNN features (RoIAlign 7x7 on C5 at the protocol's scale; ``--features
c4_head:7`` reads the pre-training path instead, RoIAlign on C4 -> res5) of a
run's final checkpoint and of its exact random initialisation, and runs the same weighted k-NN
(k 20, T 0.07) with each attribute as the label:

    python -m experiments.diagnose_instance_cues --run runs/coloured_ladder/d3ssl_s0 [--out cues.json]

The attributes: the shape (the class); the instance cues of the coloured scenes (the photo behind the
object, a solid or gradient fill, the fill's hue; the cue-free scenes, ``instance_cues=0``, do not draw
them, so they are left out); the pose (size, rotation, aspect); the object's place (the cell of a
3x3 grid of the image its box centre falls in, and that cell's row and column apart: the views are
flipped left-right independently, so only the row is shared by both views of every pair); and its
context in the image (how many shapes the image holds, the shape of its nearest neighbour). Pose,
place and context survive both views of one image as well as the colours do, so a pretext that can
tell instances apart by them need not learn the outline.

The bank is every object of the train split (O-KNN proper takes one per image, balanced over the
shapes; a balanced bank per attribute would need one extraction per attribute), so the attributes
are not balanced: ``chance`` in the output is the val share of each attribute's commonest value. A
backbone that learned the pretext through instance cues gains on those attributes, not on the shape.

What the object's place costs the shape read-out: the shape k-NN again, once with each query's bank
cut down to the train objects in the query's grid cell, once with as many train objects drawn at
random (``shape_within_position``). Features that encode the place find their neighbours among the
objects at the same place, whatever their shape; taking the place out of the comparison shows how
much that hides.
"""
from __future__ import annotations

import argparse
import colorsys
import copy
import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from d3ssl_zoo.data import scenes as gen
from d3ssl_zoo.evaluation.features import eval_mode
from d3ssl_zoo.evaluation.objects import load_coco_objects
from d3ssl_zoo.evaluation.oknn import (
    extract_object_features,
    iter_shards,
    knn_topk,
    topk_accuracy,
    weighted_vote,
)
from experiments import ladder

HUE_BINS = 6


class _Recorder(list):
    """The photo list of the generator, remembering which photo each background is cut from."""

    def __init__(self, items):
        super().__init__(items)
        self.picked: list[int] = []

    def __getitem__(self, i):
        self.picked.append(int(i))
        return super().__getitem__(i)


def replay_attributes(cfg: gen.SceneConfig, split: str, count: int) -> dict[str, np.ndarray]:
    """Per object of ``split`` (in annotation order): its shape and the attributes above (the photo,
    fill and hue only where the set draws them, ``instance_cues=1``)."""
    photos = _Recorder(gen._photos())
    placed: list[tuple] = []  # (fill, hue bin, rotation, aspect) of each shape placed in the current image
    poses: list[tuple[float, float]] = []
    texture_fn, mask_fn = gen._texture, gen.shape_mask

    def mask(name, size, rng, max_rotation=180.0):
        peek = copy.deepcopy(rng)  # the generator's own first two draws, without moving its stream
        poses.append((peek.uniform(-max_rotation, max_rotation), peek.uniform(math.log(0.8), math.log(1.25))))
        return mask_fn(name, size, rng, max_rotation)

    def texture(size, rng, cues=True):  # called once per placed shape, right after its accepted mask
        tex = texture_fn(size, rng, cues)
        solid = bool((tex == tex[0, 0]).all())
        r, g, b = tex.reshape(-1, 3).mean(0) / 255.0
        placed.append((0 if solid else 1, int(colorsys.rgb_to_hsv(r, g, b)[0] * HUE_BINS) % HUE_BINS) + poses[-1])
        return tex

    gen._texture, gen.shape_mask = texture, mask
    try:
        rng = np.random.default_rng([cfg.seed, ("pretrain", "train", "val").index(split)])
        names = ["shape"] + (["photo", "fill", "hue"] if cfg.instance_cues else []) + [
            "size", "rotation", "aspect", "position", "row", "column", "count", "neighbour"]
        out = {k: [] for k in names}
        third, cut = cfg.max_rotation / 3, math.log(1.25) / 3  # bin edges: a third of the drawn range either way
        for _ in range(count):
            placed.clear()
            poses.clear()
            _, boxes, labels = gen.render_scene(photos, cfg, rng)
            side = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
            centre = (boxes[:, :2] + boxes[:, 2:]) / 2
            cell = np.minimum((centre * 3 / cfg.image_size).astype(np.int64), 2)
            dist = np.linalg.norm(centre[:, None] - centre[None], axis=-1) + np.diag(np.full(len(labels), np.inf))
            out["shape"] += labels.tolist()
            if cfg.instance_cues:
                out["photo"] += [photos.picked[-1]] * len(labels)
                out["fill"] += [p[0] for p in placed]
                out["hue"] += [p[1] for p in placed]
            out["size"] += np.digitize(side, [56, 72]).tolist()  # 3 size bins of the 48-88 px shapes
            out["rotation"] += np.digitize([p[2] for p in placed], [-third, third]).tolist()  # 3 bins
            out["aspect"] += np.digitize([p[3] for p in placed], [-cut, cut]).tolist()  # 3 bins of log aspect
            out["position"] += (cell[:, 1] * 3 + cell[:, 0]).tolist()
            out["row"] += cell[:, 1].tolist()  # kept by a horizontal flip, which moves the column
            out["column"] += cell[:, 0].tolist()
            out["count"] += [len(labels)] * len(labels)
            # the nearest other shape's class, or len(SHAPES) when the image holds one shape
            out["neighbour"] += ([int(labels[j]) for j in dist.argmin(1)] if len(labels) > 1 else [len(gen.SHAPES)])
    finally:
        gen._texture, gen.shape_mask = texture_fn, mask_fn
    return {k: np.asarray(v, np.int64) for k, v in out.items()}


def knn_top1(feats: dict[str, torch.Tensor], attrs: dict[str, dict[str, np.ndarray]]) -> dict[str, float]:
    """Weighted k-NN top-1 (k 20, T 0.07, O-KNN's) of each attribute: the train split is the bank, val the queries."""
    row = {}
    for attr, bank in attrs["train"].items():
        query = attrs["val"][attr]
        sims, labels = knn_topk(feats["val"], [(feats["train"], torch.from_numpy(bank))], 20)
        scores = weighted_vote(sims, labels, int(max(bank.max(), query.max())) + 1, 0.07)
        row[attr] = topk_accuracy(scores, torch.from_numpy(query), (1,))[1]
    return row


def shape_within(feats: dict[str, torch.Tensor], attrs: dict[str, dict[str, np.ndarray]], attr: str,
                 seed: int = 0) -> dict[str, float]:
    """Shape k-NN top-1 when each query's bank is only the train objects that share its ``attr`` value
    (``same``), and when it is as many train objects drawn at random (``random``, the control for the
    smaller bank). A gain from ``random`` to ``same`` is what ``attr`` costs the shape read-out."""
    rng = np.random.default_rng(seed)
    bank_attr, query_attr, shape = attrs["train"][attr], attrs["val"][attr], attrs["train"]["shape"]
    correct, scored = {"same": 0.0, "random": 0.0}, 0
    for value in np.unique(query_attr):
        queries = np.nonzero(query_attr == value)[0]
        same = np.nonzero(bank_attr == value)[0]
        if len(same) == 0:  # no train object shares it: these queries have nothing to be compared with
            print(f"shape_within: no train object has {attr} {value}; its {len(queries)} val objects are left out")
            continue
        for name, bank in (("same", same), ("random", rng.choice(len(bank_attr), len(same), replace=False))):
            sims, labels = knn_topk(feats["val"][queries], [(feats["train"][bank], torch.from_numpy(shape[bank]))],
                                    min(20, len(bank)))  # fewer neighbours only where a small set has fewer
            scores = weighted_vote(sims, labels, len(gen.SHAPES), 0.07)
            top1 = topk_accuracy(scores, torch.from_numpy(attrs["val"]["shape"][queries]), (1,))[1]
            correct[name] += top1 * len(queries)
        scored += len(queries)
    return {name: c / scored for name, c in correct.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.diagnose_instance_cues",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a mini-ladder run folder (train/pretrain.py output)")
    p.add_argument("--short-side", type=int, default=256)
    p.add_argument("--features", default="c5",
                   help="the region read: c5 (O-KNN's) or c4_head:<roi size> (the pre-training path, e.g. c4_head:7)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    run = Path(args.run)
    final, recipe = ladder.final_checkpoint(run)
    scenes = gen.get_scene_dataset(gen.SceneConfig.from_source(recipe["dataset"]["source"]))
    models = {"random init": ladder.initial_backbone(recipe, recipe["train"]["seed"]),
              "trained": ladder.backbone_from_checkpoint(final)}
    objects, attrs = {}, {}
    for split, ann, images, count in (("train", scenes.train_ann, scenes.train_images, scenes.config.num_train),
                                      ("val", scenes.val_ann, scenes.val_images, scenes.config.num_val)):
        objects[split] = load_coco_objects(ann, images)
        attrs[split] = replay_attributes(scenes.config, split, count)
        stored = np.concatenate([r.objects.labels for r in objects[split].images])
        if not np.array_equal(stored, attrs[split]["shape"]):
            raise SystemExit(f"replaying the {split} split did not give its stored labels: the generator changed")
    sizes = {name: len(np.unique(a)) for name, a in attrs["train"].items()}
    chance = {name: 100.0 * np.bincount(a).max() / len(a) for name, a in attrs["val"].items()}
    res = {"run": str(run), "checkpoint": final.name, "short_side": args.short_side, "features": args.features,
           "classes": sizes,
           "chance": chance, "top1": {}}
    print(f"{'chance':>11}: " + "  ".join(f"{a} {v:5.1f} %" for a, v in chance.items()), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        for name, model in models.items():
            feats = {}
            with eval_mode(model):
                for split, objs in objects.items():
                    sel = [np.arange(len(r.objects.labels)) for r in objs.images]
                    folder = extract_object_features(model, objs, sel, tmp, short_side=args.short_side,
                                                     features=args.features, progress=False)
                    f, lab = (torch.cat(t) for t in zip(*iter_shards(folder)))
                    # the images are one size, so the shards keep annotation order: check it
                    if not np.array_equal(lab.numpy(), attrs[split]["shape"]):
                        raise SystemExit("feature order differs from annotation order")
                    feats[split] = f
            row = res["top1"][name] = knn_top1(feats, attrs)
            print(f"{name:>11}: " + "  ".join(f"{a} {v:5.1f} % (of {sizes[a]})" for a, v in row.items()), flush=True)
            within = res.setdefault("shape_within_position", {})[name] = shape_within(feats, attrs, "position")
            print(f"{'':>11}  shape with a bank of the query's position cell only {within['same']:5.1f} %, "
                  f"of as many objects from anywhere {within['random']:5.1f} %", flush=True)
    gain = {a: res["top1"]["trained"][a] - res["top1"]["random init"][a] for a in sizes}
    res["gain"] = gain
    print("trained - random init: " + "  ".join(f"{a} {v:+5.1f}" for a, v in gain.items()))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
