"""Pre-training datasets (COCO via pycocotools, an image folder, the embedded sample) and the
collator that turns samples into the batch of the engine contract (SPEC Sec. 3).

Per-sample randomness comes from ``numpy.random.default_rng([seed, epoch, index])``, so a
resumed run sees the same samples. The engine's sampler yields ``(epoch, index)`` keys, so data
workers (persistent ones too) need no epoch state; a plain integer index uses the epoch last given
to ``set_epoch``.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .coco_json import load_coco
from .composite import composite_depositioned
from .config import PretrainDataConfig
from .proposals import ProposalStore
from .views import make_views

__all__ = ["ImageRecord", "load_rgb", "coco_records", "folder_records", "PretrainDataset",
           "PretrainCollator", "build_pretrain_dataset", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class ImageRecord:
    image_id: int
    path: str
    file_name: str  # relative to the images folder; identifies the image in proposal files


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode an image to RGB uint8 ``(H, W, 3)``.

    Grayscale, palette, CMYK, RGBA (alpha dropped) and 16-bit/float images are converted.
    EXIF orientation is not applied: proposals and COCO boxes refer to the stored pixels.
    Unreadable or truncated files raise ``ValueError`` naming the file.
    """
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                a = np.asarray(im, dtype=np.float64)
                hi = 65535.0 if im.mode.startswith("I;16") else max(float(a.max()), 1.0)
                g = np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
                return np.repeat(g[:, :, None], 3, axis=2)
            if im.mode != "RGB":
                im = im.convert("RGB")
            return np.asarray(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read image {path}: {e} (unreadable or truncated file; remove or "
                         f"replace it, or rerun make_proposals which records it as skipped)") from e


def coco_records(ann_file: str | os.PathLike, images_dir: str | os.PathLike | None = None) -> list[ImageRecord]:
    """Images of a COCO annotation file (annotations are not used for pre-training).

    ``images_dir`` defaults to the first existing of ``<ann dir>/images``,
    ``<ann dir>/<split>`` and ``<ann dir>/../<split>`` (``instances_train2017.json`` -> ``train2017``).
    """
    ann_file = Path(ann_file)
    coco, _ = load_coco(ann_file)  # checked first: a bad json is not blamed on the images folder
    if not coco.imgs:
        raise ValueError(f"{ann_file} lists no images; pre-training needs at least one")
    if images_dir is None:
        split = ann_file.stem.split("_")[-1]
        tried = [ann_file.parent / "images", ann_file.parent / split, ann_file.parent.parent / split]
        found = [p for p in tried if p.is_dir()]
        if not found:
            raise FileNotFoundError(
                f"no images folder found for {ann_file} (tried {[str(p) for p in tried]}); "
                f"set PretrainDataConfig.images_dir or pass --images")
        images_dir = found[0]
    images_dir = Path(images_dir)
    return [ImageRecord(int(i), str(images_dir / coco.imgs[i]["file_name"]), coco.imgs[i]["file_name"])
            for i in sorted(coco.imgs)]


def folder_records(images_dir: str | os.PathLike) -> list[ImageRecord]:
    """Every image under ``images_dir`` (recursive), ids = position in sorted relative paths."""
    root = Path(images_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    rel = sorted(str(p.relative_to(root)) for p in root.rglob("*")
                 if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not rel:
        raise ValueError(f"image folder {root} holds no images with extensions {IMAGE_EXTENSIONS}")
    return [ImageRecord(i, str(root / r), r) for i, r in enumerate(rel)]


class PretrainDataset(Dataset):
    """Images + their proposals -> one view sample (:func:`d3ssl_zoo.data.views.make_views`).

    Images the proposal file recorded as skipped (unreadable, too small) and images with a side
    below ``cfg.min_image_side`` are left out with a warning and listed in ``self.skipped``;
    images the file lacks are an error.
    """

    def __init__(self, cfg: PretrainDataConfig, records: list[ImageRecord], proposals: ProposalStore, seed: int = 0):
        self.cfg = cfg
        self.proposals = proposals
        self.seed = int(seed)
        self.epoch = 0
        usable, self.skipped = proposals.check_images((r.image_id, r.file_name) for r in records)
        names = {r.image_id: r.file_name for r in records}
        keep = set()
        for image_id in usable:
            if min(proposals.image_size(image_id)) < cfg.min_image_side:
                self.skipped.append({"image_id": image_id, "file_name": names[image_id], "reason": "too_small"})
            else:
                keep.add(image_id)
        self.records = [r for r in records if r.image_id in keep]
        if self.skipped:
            reasons = {}
            for s in self.skipped:
                reasons[s["reason"]] = reasons.get(s["reason"], 0) + 1
            warnings.warn(f"pre-training dataset: skipped {len(self.skipped)} of {len(records)} images "
                          f"(proposal file {proposals.path}): {reasons}")
        if not self.records:
            raise ValueError(f"pre-training dataset is empty: all {len(records)} images were skipped")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """``index`` (views of the epoch last set with :meth:`set_epoch`) or ``(epoch, index)`` (what the
        engine's sampler yields, so that data workers need no epoch state)."""
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        rec = self.records[index]
        image = load_rgb(rec.path)
        w, h = self.proposals.image_size(rec.image_id)
        if image.shape[:2] != (h, w):
            raise ValueError(f"image {rec.path} is {image.shape[1]}x{image.shape[0]} but proposal file "
                             f"{self.proposals.path} was made for a {w}x{h} image; remake the proposals")
        rng = np.random.default_rng([self.seed, epoch, index])
        sample = make_views(image, self.proposals[rec.image_id], self.cfg, rng)
        sample["image_id"] = rec.image_id
        return sample


def _check_view_boxes(boxes: np.ndarray, key: str, image_ids: torch.Tensor) -> None:
    """The box checks of :func:`d3ssl_zoo.validate_boxes`, made once here on the CPU so that the
    training step builds its RoIs without a host sync."""
    bad = ~np.isfinite(boxes).all(-1) | (boxes[..., 2] < boxes[..., 0]) | (boxes[..., 3] < boxes[..., 1])
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(f"{key} of image id {int(image_ids[i])} has a non-finite or negative-size box "
                         f"{boxes[i, j].tolist()} (xyxy pixels of the view); check that image's proposals")


class PretrainCollator:
    """List of samples -> the batch dict of the contract (normalised float tensors, float boxes).

    Keys: ``x1``, ``x2``, ``boxes1``, ``boxes2``, ``image_id``; d3ssl views add ``x2s``,
    ``boxes2s``; with ``depositioning`` also ``x3`` (Eq. 8, background ``x_b`` = x2 of the next
    image in the batch, so every image gets another one; a batch of one uses its own x2
    upside down) and ``boxes3``.
    """

    def __init__(self, cfg: PretrainDataConfig):
        self.cfg = cfg
        std = torch.tensor(cfg.std, dtype=torch.float32).view(1, 3, 1, 1) * 255
        self.scale = 1.0 / std
        self.shift = -torch.tensor(cfg.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255 / std

    def _images(self, arrays) -> torch.Tensor:
        # permute while still uint8 (4x less memory traffic than after the float conversion)
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().mul_(self.scale).add_(self.shift)

    def __call__(self, samples: list[dict]) -> dict:
        batch = {"image_id": torch.tensor([s["image_id"] for s in samples], dtype=torch.int64)}
        x2 = self._images([s["x2"] for s in samples])
        for key in ("x1", "x2s"):
            if key in samples[0]:
                batch[key] = self._normalise(self._images([s[key] for s in samples]))
        for key in ("boxes1", "boxes2", "boxes2s", "boxes3"):
            if key in samples[0]:
                boxes = np.stack([s[key] for s in samples]).astype(np.float32)
                _check_view_boxes(boxes, key, batch["image_id"])
                batch[key] = torch.from_numpy(boxes)
        if "m_hat" in samples[0]:
            m = torch.from_numpy(np.stack([s["m"] for s in samples]))
            m_hat = torch.from_numpy(np.stack([s["m_hat"] for s in samples]))
            t = torch.from_numpy(np.stack([s["t"] for s in samples]))
            x_b = torch.roll(x2, shifts=-1, dims=0) if len(samples) > 1 else x2.flip(2)
            batch["x3"] = self._normalise(composite_depositioned(x2, m, x_b, m_hat, t))
        batch["x2"] = self._normalise(x2)
        return batch


def build_pretrain_dataset(cfg: PretrainDataConfig, source: str | os.PathLike, proposals: str | os.PathLike | None,
                           seed: int = 0) -> PretrainDataset:
    """Dataset of the contract: ``source`` is a COCO annotation json, an image folder, ``"sample"``
    (the embedded sample) or ``"scenes"`` / ``"scenes:key=value,..."`` (the generated scene set, :mod:`d3ssl_zoo.data.scenes`).

    ``proposals`` is the file written by ``train/make_proposals.py`` (for ``"sample"`` and
    ``"scenes"`` it may be ``None``: they bring their own).
    """
    if str(source) == "sample" or str(source).partition(":")[0] == "scenes":
        if str(source) == "sample":
            from .sample import get_sample_dataset

            builtin = get_sample_dataset()
        else:
            from .scenes import SceneConfig, get_scene_dataset

            builtin = get_scene_dataset(SceneConfig.from_source(str(source)))
        records = coco_records(builtin.pretrain_ann, builtin.images_dir)
        proposals = proposals or builtin.proposals
    else:
        src = Path(source)
        if src.is_dir():
            records = folder_records(src)
        elif src.suffix == ".json":
            records = coco_records(src, cfg.images_dir)
        else:
            raise ValueError(f"pre-training source {source!r} is neither a COCO annotation .json, an "
                             f"image folder, 'sample' nor 'scenes'")
    if proposals is None:
        raise ValueError(f"no proposal file given for {source}; make one with `python train/make_proposals.py "
                         f"{'--coco' if str(source).endswith('.json') else '--images'} {source} --out FILE` "
                         f"and pass it")
    return PretrainDataset(cfg, records, ProposalStore(proposals), seed)
