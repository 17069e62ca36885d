"""What do the mini ladder's region features encode besides the shape? (issue 9 diagnostic)

The scene set's class is a shape's outline; everything else about an object is drawn at random per
instance: the photo its image's background is cut from, the fill (solid or a gradient), the fill's
colour, the size. Region-instance discrimination can tell instances apart by any of these, and
only the outline is scored by O-KNN. This script replays the generator of the labelled splits
(same seed, same random streams, checked against the stored labels) to recover each object's
nuisance attributes, reads the O-KNN features (RoIAlign 7x7 on C5 at the protocol's scale) of a
run's final checkpoint and of its exact random initialisation, and runs the same weighted k-NN
(k 20, T 0.07) with each attribute as the label:

    python train/diagnose_instance_cues.py --run runs/mini/d3ssl_s0 [--out cues.json]

The bank is every object of the train split (O-KNN proper takes one per image, balanced over the
shapes; a balanced bank per attribute would need one extraction per attribute). A backbone that
learned the pretext through instance cues gains on those attributes, not on the shape.
"""
from __future__ import annotations

import argparse
import colorsys
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reproduce_mini as ladder  # noqa: E402  (checkpoint and random-init loaders)
from d3ssl_zoo.data import scenes as gen  # noqa: E402
from d3ssl_zoo.evaluation.features import eval_mode  # noqa: E402
from d3ssl_zoo.evaluation.objects import load_coco_objects  # noqa: E402
from d3ssl_zoo.evaluation.oknn import extract_object_features, iter_shards, knn_topk, topk_accuracy, weighted_vote  # noqa: E402

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
    """Per object of ``split`` (in annotation order): shape, photo, fill kind, fill hue bin, size bin."""
    photos = _Recorder(gen._photos())
    fills: list[tuple[int, int]] = []
    original = gen._texture

    def texture(size, rng, cues=True):
        tex = original(size, rng, cues)
        solid = bool((tex == tex[0, 0]).all())
        r, g, b = tex.reshape(-1, 3).mean(0) / 255.0
        fills.append((0 if solid else 1, int(colorsys.rgb_to_hsv(r, g, b)[0] * HUE_BINS) % HUE_BINS))
        return tex

    gen._texture = texture
    try:
        rng = np.random.default_rng([cfg.seed, ("pretrain", "train", "val").index(split)])
        out = {k: [] for k in ("shape", "photo", "fill", "hue", "size")}
        for _ in range(count):
            fills.clear()
            _, boxes, labels = gen.render_scene(photos, cfg, rng)
            side = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
            out["shape"] += labels.tolist()
            out["photo"] += [photos.picked[-1]] * len(labels)
            out["fill"] += [f for f, _ in fills]
            out["hue"] += [h for _, h in fills]
            out["size"] += np.digitize(side, [56, 72]).tolist()  # 3 size bins of the 48-88 px shapes
    finally:
        gen._texture = original
    return {k: np.asarray(v, np.int64) for k, v in out.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a mini-ladder run folder (train/pretrain.py output)")
    p.add_argument("--short-side", type=int, default=256)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    run = Path(args.run)
    final, recipe = ladder.final_checkpoint(run)
    scenes = gen.get_scene_dataset(gen.SceneConfig.from_source(recipe["dataset"]["source"]))
    models = {"random init": ladder.initial_backbone(recipe, recipe["train"]["seed"]),
              "trained": ladder.backbone_from_checkpoint(final, recipe["model"]["name"])}
    splits = {}
    for split, ann, images, count in (("train", scenes.train_ann, scenes.train_images, scenes.config.num_train),
                                      ("val", scenes.val_ann, scenes.val_images, scenes.config.num_val)):
        objects = load_coco_objects(ann, images)
        attrs = replay_attributes(scenes.config, split, count)
        stored = np.concatenate([r.objects.labels for r in objects.images])
        if not np.array_equal(stored, attrs["shape"]):
            raise SystemExit(f"replaying the {split} split did not give its stored labels: the generator changed")
        splits[split] = (objects, attrs)
    sizes = {name: len(np.unique(a)) for name, a in splits["train"][1].items()}
    res = {"run": str(run), "checkpoint": final.name, "short_side": args.short_side, "classes": sizes, "top1": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in models.items():
            feats = {}
            with eval_mode(model):
                for split, (objects, _) in splits.items():
                    sel = [np.arange(len(r.objects.labels)) for r in objects.images]
                    folder = extract_object_features(model, objects, sel, tmp, short_side=args.short_side,
                                                     progress=False)
                    f, lab = (torch.cat(t) for t in zip(*iter_shards(folder)))
                    # the images are one size, so the shards keep annotation order: check it
                    if not np.array_equal(lab.numpy(), splits[split][1]["shape"]):
                        raise SystemExit("feature order differs from annotation order")
                    feats[split] = f
            row = {}
            for attr in sizes:
                bank_labels = torch.from_numpy(splits["train"][1][attr])
                sims, labels = knn_topk(feats["val"], [(feats["train"], bank_labels)], 20)
                scores = weighted_vote(sims, labels, int(bank_labels.max()) + 1, 0.07)
                row[attr] = topk_accuracy(scores, torch.from_numpy(splits["val"][1][attr]), (1,))[1]
            res["top1"][name] = row
            print(f"{name:>11}: " + "  ".join(f"{a} {v:5.1f} % (of {sizes[a]})" for a, v in row.items()), flush=True)
    gain = {a: res["top1"]["trained"][a] - res["top1"]["random init"][a] for a in sizes}
    res["gain"] = gain
    print("trained - random init: " + "  ".join(f"{a} {v:+5.1f}" for a, v in gain.items()))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
