"""The objects the evaluation protocols read: labelled objects per image of a COCO-format json
(the package's one reader, :func:`d3ssl_zoo.data.coco_json.read_coco_objects`, with the
evaluation's choices), and crops of them.

Boxes are xyxy float pixels of the stored image (cut to it; see
:func:`~d3ssl_zoo.data.coco_json.clip_box`); ``scale_boxes`` maps them to the resized image.
Bad input is a clear error (no boxes or categories at all) or a counted skip reported in
``CocoObjects.skips``.
"""
from __future__ import annotations

import os
from typing import List, Sequence, Tuple

import cv2
import numpy as np
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor

from d3ssl_zoo.data.coco_json import CocoObjects, ImageRecord, read_coco_objects
from d3ssl_zoo.data.images import load_rgb

__all__ = ["load_coco_objects", "resized_size", "scale_boxes", "read_image", "to_tensor", "crop_object",
           "objects_of_min_size", "load_objects_of_min_size"]

IMAGENET_MEAN, IMAGENET_STD = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD  # timm's


def load_coco_objects(ann_file: str | os.PathLike, images_dir: str | os.PathLike, *,
                      min_box_size: float = 1.0) -> CocoObjects:
    """The labelled objects of a COCO detection json whose images are on disk under ``images_dir``.

    Skips (counted in ``CocoObjects.skips``): images missing on disk, images without kept objects,
    crowd boxes, boxes entirely outside their image or smaller than ``min_box_size`` pixels once
    cut to it, boxes of an unknown category, invalid annotations (a bbox that is not 4 finite
    numbers, no image or category id). Boxes partly outside are cut to the image (counted in
    ``clipped_boxes``).
    """
    return read_coco_objects(ann_file, images_dir, min_box_size=min_box_size, skip_missing_files=True)


def resized_size(height: int, width: int, short_side: int) -> Tuple[int, int]:
    """(h, w) after resizing so that the shorter side is ``short_side`` (aspect kept)."""
    s = short_side / min(height, width)
    return max(1, round(height * s)), max(1, round(width * s))


def scale_boxes(boxes: np.ndarray, src_hw: Sequence[int], dst_hw: Sequence[int]) -> np.ndarray:
    """Map xyxy pixel boxes of an image of size ``src_hw`` to the same image resized to ``dst_hw``."""
    sy, sx = dst_hw[0] / src_hw[0], dst_hw[1] / src_hw[1]
    return (boxes * np.array([sx, sy, sx, sy], np.float32)).astype(np.float32)


def read_image(record: ImageRecord, size_hw: Sequence[int]) -> np.ndarray:
    """Decode ``record`` as RGB uint8 and resize it to ``size_hw`` (bilinear).

    The package's one decoder (:func:`d3ssl_zoo.data.load_rgb`): stored pixels, EXIF orientation not
    applied, as COCO's boxes, pycocotools and torchvision's COCO reader take them (``cv2.imread``
    would rotate EXIF-tagged photos and put every box on the wrong pixels).
    """
    img = load_rgb(record.path)
    if img.shape[:2] != (record.height, record.width):
        raise ValueError(f"image {record.path} is {img.shape[1]}x{img.shape[0]} but its annotation "
                         f"says {record.width}x{record.height}; boxes would be misplaced")
    return cv2.resize(img, (int(size_hw[1]), int(size_hw[0])), interpolation=cv2.INTER_LINEAR)


def to_tensor(img: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> Tensor:
    """RGB uint8 ``(H, W, 3)`` -> normalised float ``(3, H, W)``."""
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255)
    return (t - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def crop_object(record: ImageRecord, box: np.ndarray, size: int) -> np.ndarray:
    """The pixels of one xyxy ``box`` of ``record`` as RGB uint8, resized to ``size`` x ``size``."""
    img = read_image(record, (record.height, record.width))
    x1, y1 = int(np.floor(box[0])), int(np.floor(box[1]))
    x2, y2 = max(int(np.ceil(box[2])), x1 + 1), max(int(np.ceil(box[3])), y1 + 1)
    return cv2.resize(img[y1:y2, x1:x2], (size, size), interpolation=cv2.INTER_LINEAR)


def objects_of_min_size(objects: CocoObjects, min_size: float) -> List[Tuple[int, int]]:
    """(image index, object index) of every object whose shorter box side is >= ``min_size``."""
    return [(i, j) for i, r in enumerate(objects.images) for j, b in enumerate(r.objects.boxes)
            if min(b[2] - b[0], b[3] - b[1]) >= min_size]


def load_objects_of_min_size(ann_file: str | os.PathLike, images_dir: str | os.PathLike,
                             min_size: float) -> Tuple[CocoObjects, List[Tuple[int, int]]]:
    """``load_coco_objects`` and the objects large enough to crop; an error if there are none."""
    objects = load_coco_objects(ann_file, images_dir)
    candidates = objects_of_min_size(objects, min_size)
    if not candidates:
        raise ValueError(f"no object in {ann_file} has both box sides >= {min_size} px; "
                         f"lower --min-object-size")
    return objects, candidates
