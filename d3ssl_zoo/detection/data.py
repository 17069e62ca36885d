"""Readers for the transfer datasets (paper §5 "Setting"): PASCAL VOC XML, and COCO json through the
package's one COCO reader (:func:`~d3ssl_zoo.data.coco_json.read_coco_objects`), into the package's
one record type (:class:`~d3ssl_zoo.data.coco_json.ImageRecord`, objects with VOC's difficult flags
and COCO's segmentations in ``record.objects``). Skips are counted in the package's one skip
counter (:data:`~d3ssl_zoo.data.coco_json.SKIP_REASONS`).

Boxes follow the package convention (xyxy float pixels). VOC's 1-based inclusive corners are
read as detectron2 reads them (``xmin - 1, ymin - 1, xmax, ymax``); the VOC evaluator converts
back at its edge. Labels are 0-based class indices here; the torchvision detector adds 1
(its class 0 is the background) inside ``DetectionDataset``.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from d3ssl_zoo.data.coco_json import CocoObjects, ImageObjects, ImageRecord, no_skips, read_coco_objects
from d3ssl_zoo.data.images import load_rgb

__all__ = ["VOC_CLASSES", "read_voc", "read_voc_splits", "read_coco", "DetectionDataset", "hflip_sample",
           "collate_detection"]

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)



def read_voc(root: Path, year: str, split: str, class_names: Sequence[str] = VOC_CLASSES,
             skips: Optional[Dict[str, int]] = None) -> List[ImageRecord]:
    """Read ``root/VOC<year>/ImageSets/Main/<split>.txt`` and its ``Annotations/*.xml``.

    Difficult objects are kept and flagged: detectron2 trains on them and its evaluator ignores
    them. Objects without 4 finite box corners, or whose xmax / ymax is below xmin / ymin (VOC's corners
    are inclusive, so xmax = xmin is a 1-pixel box), are left out and counted as
    ``skips["invalid_annotations"]`` (``skips``: a counter of :func:`~d3ssl_zoo.data.coco_json.no_skips`).
    """
    base = Path(root) / f"VOC{year}"
    ids_file = base / "ImageSets" / "Main" / f"{split}.txt"
    if not ids_file.is_file():
        raise FileNotFoundError(
            f"{ids_file} not found; --data must be the VOCdevkit folder holding VOC2007/ and VOC2012/")
    skips = skips if skips is not None else no_skips()
    index = {c: i for i, c in enumerate(class_names)}
    records = []
    for image_id in ids_file.read_text().split():
        xml = base / "Annotations" / f"{image_id}.xml"
        if not xml.is_file():
            raise FileNotFoundError(f"{xml} listed in {ids_file} is missing")
        try:
            tree = ET.parse(xml)
        except ET.ParseError as e:
            raise ValueError(f"{xml} is not valid XML ({e}); fix or restore that annotation file") from None
        size = tree.find("size")
        boxes, labels, difficult = [], [], []
        for obj in tree.findall("object"):
            name = obj.findtext("name", "").strip()
            if name not in index:
                raise ValueError(f"{xml}: class {name!r} is not one of the {len(class_names)} VOC classes")
            bb = obj.find("bndbox")
            try:
                corners = [float(bb.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")]
            except (AttributeError, TypeError, ValueError):  # no bndbox, a missing or non-numeric corner
                corners = []
            inverted = len(corners) == 4 and (corners[2] < corners[0] or corners[3] < corners[1])
            if len(corners) != 4 or not np.isfinite(corners).all() or inverted:
                skips["invalid_annotations"] += 1  # torchvision's detectors refuse a box of no width or height
                continue
            x1, y1, x2, y2 = corners
            boxes.append([x1 - 1.0, y1 - 1.0, x2, y2])
            labels.append(index[name])
            difficult.append(int(obj.findtext("difficult", "0") or 0) == 1)
        records.append(ImageRecord(
            image_id, str(base / "JPEGImages" / f"{image_id}.jpg"), file_name=f"{image_id}.jpg",
            height=int(size.findtext("height")), width=int(size.findtext("width")),
            objects=ImageObjects(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64),
                                 difficult=np.asarray(difficult, bool))))
    return records


def read_voc_splits(root: Path, splits: Sequence[Tuple[str, str]],
                    skips: Optional[Dict[str, int]] = None) -> List[ImageRecord]:
    """Concatenate VOC splits, e.g. ``[("2007", "trainval"), ("2012", "trainval")]`` (VOC07+12)."""
    out: List[ImageRecord] = []
    for year, split in splits:
        out += read_voc(root, year, split, skips=skips)
    return out


def read_coco(ann_file: Path, image_root: Path, *, train: bool) -> CocoObjects:
    """A COCO instances json as detection reads it (detectron2's choices), with every object's
    segmentation (Mask R-CNN) and the pycocotools ground truth (``.coco``, for COCO AP).

    For training, crowd regions are left out and images left with no object are skipped; the test
    split keeps every image and every box (pycocotools ignores crowd regions when it scores).
    Boxes follow the package's one rule (:func:`~d3ssl_zoo.data.coco_json.clip_box`: cut to the
    image, at least 1 px a side); every skip is counted in ``.skips``.
    """
    return read_coco_objects(ann_file, image_root, keep_crowd=not train, keep_images_without_objects=not train,
                             segmentations=True, ground_truth=True)


def _masks(record: ImageRecord) -> Tensor:
    from pycocotools import mask as mask_utils

    h, w = record.height, record.width
    segmentations = record.objects.segmentations or []
    out = np.zeros((len(segmentations), h, w), np.uint8)
    for i, seg in enumerate(segmentations):
        if seg is None:
            raise ValueError(f"image {record.image_id}: object {i} has no segmentation, needed for Mask R-CNN")
        if isinstance(seg, list):
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
        elif isinstance(seg.get("counts"), list):
            rle = mask_utils.frPyObjects(seg, h, w)
        else:
            rle = seg
        out[i] = mask_utils.decode(rle)
    return torch.from_numpy(out)


def hflip_sample(image: Tensor, target: Dict[str, Tensor]) -> Tuple[Tensor, Dict[str, Tensor]]:
    """Mirror an image (C, H, W) and its boxes / masks left-right."""
    w = image.shape[-1]
    out = dict(target)
    b = target["boxes"]
    out["boxes"] = torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], dim=1)
    if "masks" in target:
        out["masks"] = target["masks"].flip(-1)
    return image.flip(-1), out


class DetectionDataset(Dataset):
    """Images as float RGB tensors in [0, 1] with torchvision detection targets.

    Training samples are flipped with probability 0.5, drawn from a generator seeded by
    ``(seed, epoch, index)`` so a run is reproducible and resumable (call ``set_epoch``).
    Labels become 1-based (torchvision's 0 is the background).
    """

    def __init__(self, records: Sequence[ImageRecord], *, train: bool, mask_on: bool = False, seed: int = 0):
        self.records = list(records)
        self.train = train
        self.mask_on = mask_on
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Tuple[Tensor, Dict[str, Tensor]]:
        r = self.records[i]
        arr = load_rgb(r.path)  # the package's one decoder: stored pixels, EXIF orientation not applied
        if arr.shape[:2] != (r.height, r.width):
            raise ValueError(f"{r.path} is {arr.shape[1]}x{arr.shape[0]} but its annotation says "
                             f"{r.width}x{r.height}")
        image = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)
        target = {"boxes": torch.from_numpy(r.objects.boxes).float(),
                  "labels": torch.from_numpy(r.objects.labels) + 1,
                  "index": torch.tensor(i)}
        if self.mask_on:
            target["masks"] = _masks(r)
        if self.train:
            g = torch.Generator().manual_seed(hash((self.seed, self.epoch, i)) & 0x7FFFFFFF)
            if torch.rand((), generator=g) < 0.5:
                image, target = hflip_sample(image, target)
        return image, target


def collate_detection(batch):
    """Lists of images and targets (images differ in size; the model's transform batches them)."""
    images, targets = zip(*batch)
    return list(images), list(targets)
