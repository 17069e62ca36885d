"""The embedded sample dataset: real photos bundled with scikit-image, made on first use.

* labelled multi-object split (for O-KNN, CR, MCS and detection demos): 128x128 crops of the
  photos with 2-4 handwritten digits of scikit-learn's bundled 8x8 set pasted at recorded
  places (24-48 px, not overlapping); COCO json with boxes and 10 classes ``digit 0..9``.
  Train and val use disjoint halves of the digit set.
* pre-training part (unlabelled): the 16 photos (colour, grayscale and one RGBA, long side
  256 px) and the images of the labelled *train* split, copied into ``images/``, as a COCO json
  with images only, plus their selective-search proposal file. Self-supervised pre-training on
  the target domain's unlabelled images, as the paper pre-trains on COCO and evaluates O-KNN on
  COCO; no label, no box of the split and no val image is used.

Built into ``$D3SSL_ZOO_CACHE/sample-v<SAMPLE_VERSION>`` (default ``~/.cache/d3ssl_zoo``) in a
temp folder renamed into place when complete, so a crash or a concurrent build never leaves a
half-made dataset; later calls return at once. The version in the folder name keeps a cache of
an older layout from being used.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from .cache import build_atomically, cache_base
from .coco_json import coco_records
from .selective_search import make_proposals

__all__ = ["SampleDataset", "get_sample_dataset", "default_cache_dir", "SAMPLE_VERSION"]

SAMPLE_VERSION = 2
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
          "stereo_motorcycle", "colorwheel", "brick", "grass", "gravel", "camera", "coins", "clock", "logo")
LONG_SIDE = 256
LABELLED_SIZE = 128
NUM_TRAIN, NUM_VAL = 120, 40  # train images are also (unlabelled) pre-training images


@dataclass(frozen=True)
class SampleDataset:
    root: Path
    images_dir: Path
    pretrain_ann: Path
    proposals: Path
    train_ann: Path
    val_ann: Path
    train_images: Path
    val_images: Path


def default_cache_dir() -> Path:
    return cache_base() / f"sample-v{SAMPLE_VERSION}"


def _layout(root: Path) -> SampleDataset:
    return SampleDataset(root=root, images_dir=root / "images", pretrain_ann=root / "pretrain.json",
                         proposals=root / "proposals.safetensors", train_ann=root / "train.json",
                         val_ann=root / "val.json", train_images=root / "labelled" / "train",
                         val_images=root / "labelled" / "val")


def _photo(name: str) -> np.ndarray:
    import skimage.data

    a = getattr(skimage.data, name)()
    return a[0] if isinstance(a, tuple) else a  # stereo_motorcycle: (left, right, disparity)


def _shrink(a: np.ndarray, long_side: int) -> np.ndarray:
    h, w = a.shape[:2]
    s = long_side / max(h, w)
    return cv2.resize(a, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA) if s < 1 else a


def _write_pretrain(ds: SampleDataset, photos: dict[str, np.ndarray]) -> None:
    """The unlabelled pre-training set: the photos and the labelled train split's images (no boxes)."""
    images = []
    for name, a in photos.items():
        file_name = f"{name}.png" if a.ndim == 3 and a.shape[2] == 4 else f"{name}.jpg"  # keep the RGBA one
        Image.fromarray(a).save(ds.images_dir / file_name, quality=92)
        images.append({"id": len(images) + 1, "file_name": file_name, "width": a.shape[1], "height": a.shape[0]})
    for im in json.loads(ds.train_ann.read_text())["images"]:
        shutil.copyfile(ds.train_images / im["file_name"], ds.images_dir / im["file_name"])
        images.append({"id": len(images) + 1, "file_name": im["file_name"], "width": im["width"],
                       "height": im["height"]})
    ds.pretrain_ann.write_text(json.dumps({"info": {"description": "d3ssl_zoo sample: scikit-image photos and "
                                                                   "the labelled train images, unlabelled",
                                                    "version": SAMPLE_VERSION},
                                           "images": images, "annotations": [], "categories": []}))
    # The images are small: search at native size (the tool's default resizes to 500 px).
    make_proposals(coco_records(ds.pretrain_ann, ds.images_dir), ds.proposals, mode="fast", resize_long=None,
                   workers=1, progress=False)


def _paste_digits(bg: np.ndarray, glyphs, labels, rng: np.random.Generator):
    """Paste digit glyphs onto ``bg`` at random non-overlapping places; returns image and xyxy boxes."""
    out = bg.astype(np.float32)
    size = bg.shape[0]
    taken: list[tuple[int, int, int, int]] = []
    boxes, cats = [], []
    for g, label in zip(glyphs, labels):
        for _ in range(50):
            s = int(rng.integers(24, 49))
            x, y = int(rng.integers(0, size - s + 1)), int(rng.integers(0, size - s + 1))
            if all(x + s <= a or x >= c or y + s <= b or y >= d for a, b, c, d in taken):
                break
        else:
            continue
        alpha = np.clip(cv2.resize(g.astype(np.float32) / 16.0, (s, s), interpolation=cv2.INTER_CUBIC), 0, 1)
        colour = rng.uniform(0, 255, 3).astype(np.float32)
        colour[rng.integers(3)] = 255.0 if out[y:y + s, x:x + s].mean() < 128 else 0.0  # contrast with the photo
        region = out[y:y + s, x:x + s]
        out[y:y + s, x:x + s] = region * (1 - alpha[..., None]) + colour * alpha[..., None]
        ys, xs = np.nonzero(alpha > 0.25)
        boxes.append([int(x + xs.min()), int(y + ys.min()), int(x + xs.max() + 1), int(y + ys.max() + 1)])
        cats.append(int(label))
        taken.append((x, y, x + s, y + s))
    return np.clip(out + 0.5, 0, 255).astype(np.uint8), boxes, cats


def _write_labelled(ds: SampleDataset, photos: dict[str, np.ndarray], split: str, count: int, digit_ids: np.ndarray,
                    rng: np.random.Generator) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder = ds.train_images if split == "train" else ds.val_images
    folder.mkdir(parents=True)
    backgrounds = [a for n, a in photos.items() if n != "logo"]
    images, anns = [], []
    pos = 0
    for i in range(1, count + 1):
        photo = backgrounds[int(rng.integers(len(backgrounds)))]
        photo = photo if photo.ndim == 3 else np.repeat(photo[..., None], 3, axis=2)
        h, w = photo.shape[:2]
        side = int(rng.integers(min(h, w) // 2, min(h, w) + 1))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        bg = cv2.resize(photo[y:y + side, x:x + side], (LABELLED_SIZE, LABELLED_SIZE), interpolation=cv2.INTER_AREA)
        n = int(rng.integers(2, 5))
        chosen = digit_ids[np.arange(pos, pos + n) % len(digit_ids)]
        pos += n
        img, boxes, cats = _paste_digits(bg, digits.images[chosen], digits.target[chosen], rng)
        file_name = f"{split}_{i:04d}.jpg"
        Image.fromarray(img).save(folder / file_name, quality=95)
        images.append({"id": i, "file_name": file_name, "width": LABELLED_SIZE, "height": LABELLED_SIZE})
        for b, c in zip(boxes, cats):
            bw, bh = b[2] - b[0], b[3] - b[1]
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": c + 1, "bbox": [b[0], b[1], bw, bh],
                         "area": bw * bh, "iscrowd": 0})
    cats = [{"id": d + 1, "name": f"digit {d}", "supercategory": "digit"} for d in range(10)]
    ann = {"info": {"description": f"d3ssl_zoo sample: sklearn digits pasted on scikit-image photos ({split})",
                    "version": SAMPLE_VERSION}, "images": images, "annotations": anns, "categories": cats}
    (ds.train_ann if split == "train" else ds.val_ann).write_text(json.dumps(ann))


def _build(root: Path, seed: int) -> None:
    ds = _layout(root)
    photos = {name: _shrink(_photo(name), LONG_SIDE) for name in PHOTOS}
    rng = np.random.default_rng(seed)
    order = rng.permutation(1797)  # sklearn's digit set; halves keep train and val glyphs apart
    _write_labelled(ds, photos, "train", NUM_TRAIN, order[: len(order) // 2], rng)
    _write_labelled(ds, photos, "val", NUM_VAL, order[len(order) // 2:], rng)
    ds.images_dir.mkdir(parents=True)
    _write_pretrain(ds, photos)
    (root / "complete.json").write_text(json.dumps({"version": SAMPLE_VERSION, "seed": seed}))


def get_sample_dataset(cache_dir: str | os.PathLike | None = None) -> SampleDataset:
    """The embedded sample dataset, built on first use (idempotent, atomic). See module doc."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    marker = root / "complete.json"
    if marker.is_file() and json.loads(marker.read_text()).get("version") == SAMPLE_VERSION:
        return _layout(root)
    if root.exists() and any(root.iterdir()):
        raise RuntimeError(f"{root} exists but holds no complete sample dataset of version {SAMPLE_VERSION}; "
                           f"delete it and call get_sample_dataset() again")
    build_atomically(root, lambda t: _build(t, seed=0))
    return _layout(root)
