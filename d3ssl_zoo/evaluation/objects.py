"""The diagnostics' objects: labelled objects per image of a COCO-format json, read with the
package's checked reader into its one record type
(:class:`~d3ssl_zoo.data.coco_json.ImageRecord`, objects in ``record.objects``), and crops of them.

Boxes are converted at this edge from COCO ``xywh`` to the package's ``xyxy`` float pixels of
the original image; ``scale_boxes`` maps them to the resized image. Bad input is a clear error
(no boxes or categories at all) or a counted skip reported in ``CocoObjects.skips``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor
from torchvision.ops import box_convert

from d3ssl_zoo.data.coco_json import ImageObjects, ImageRecord, load_coco
from d3ssl_zoo.data.images import load_rgb

__all__ = ["CocoObjects", "load_coco_objects", "resized_size", "scale_boxes",
           "read_image", "to_tensor", "crop_object", "objects_of_min_size", "load_objects_of_min_size"]

IMAGENET_MEAN, IMAGENET_STD = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD  # timm's


@dataclass
class CocoObjects:
    """Labelled objects of one split; ``skips`` counts everything not used and why. Every record
    has its ``width``, ``height`` and ``objects`` (boxes xyxy float pixels of the original image,
    labels the contiguous class index of ``category_ids``)."""
    images: List[ImageRecord]
    class_names: List[str]
    category_ids: List[int]
    skips: Dict[str, int] = field(default_factory=dict)
    clipped_boxes: int = 0

    @property
    def num_objects(self) -> int:
        return int(sum(len(r.objects.labels) for r in self.images))


def load_coco_objects(ann_file: str | os.PathLike, images_dir: str | os.PathLike, *,
                      min_box_size: float = 1.0) -> CocoObjects:
    """Read a COCO detection json and keep, per image on disk, its valid non-crowd boxes.

    Skips (counted): images missing on disk, images without kept objects, crowd boxes, boxes
    entirely outside their image or smaller than ``min_box_size`` pixels after clipping,
    invalid annotations (a bbox that is not 4 finite numbers, no image or category id).
    Boxes partly outside are clipped to the image (counted in ``clipped_boxes``).
    """
    ann_file, images_dir = os.fspath(ann_file), os.fspath(images_dir)
    # the json is checked first: a bad file is not blamed on the images directory
    coco, invalid = load_coco(ann_file, image_keys=("id", "file_name", "width", "height"))
    if not os.path.isdir(images_dir):
        raise FileNotFoundError(f"images directory {images_dir} does not exist; pass the folder of "
                                f"the images named in {ann_file}")
    anns = coco.dataset.get("annotations") or []
    cats = coco.dataset.get("categories") or []
    if not cats:
        raise ValueError(f"{ann_file} has no 'categories'; the diagnostics need labelled boxes "
                         f"(a COCO detection json, not an image-only list)")
    if not any("bbox" in a and "category_id" in a for a in anns):
        raise ValueError(f"{ann_file} has no annotations with 'bbox' and 'category_id'; "
                         f"the diagnostics need ground-truth boxes with categories")
    category_ids = sorted(c["id"] for c in cats)
    names = {c["id"]: c.get("name", str(c["id"])) for c in cats}
    label_of = {cid: i for i, cid in enumerate(category_ids)}

    skips = {"missing_image_files": 0, "images_without_objects": 0, "crowd_boxes": 0,
             "boxes_outside_image": 0, "boxes_too_small": 0, "boxes_unknown_category": 0,
             "annotations_without_bbox": 0, "invalid_annotations": invalid}
    clipped = 0
    records: List[ImageRecord] = []
    for img_id in sorted(coco.imgs):
        info = coco.imgs[img_id]
        path = os.path.join(images_dir, info["file_name"])
        img_anns = coco.imgToAnns.get(img_id, [])
        if not os.path.isfile(path):
            skips["missing_image_files"] += 1
            continue
        w, h = int(info["width"]), int(info["height"])
        boxes, labels = [], []
        for a in img_anns:
            if "bbox" not in a or "category_id" not in a:
                skips["annotations_without_bbox"] += 1
                continue
            if a.get("iscrowd", 0):
                skips["crowd_boxes"] += 1
                continue
            if a["category_id"] not in label_of:
                skips["boxes_unknown_category"] += 1
                continue
            b = box_convert(torch.tensor(a["bbox"], dtype=torch.float64), "xywh", "xyxy").numpy()
            c = np.clip(b, 0, [w, h, w, h])
            if c[2] <= c[0] or c[3] <= c[1]:
                skips["boxes_outside_image"] += 1
                continue
            if min(c[2] - c[0], c[3] - c[1]) < min_box_size:
                skips["boxes_too_small"] += 1
                continue
            clipped += int(not np.array_equal(b, c))
            boxes.append(c)
            labels.append(label_of[a["category_id"]])
        if not boxes:
            skips["images_without_objects"] += 1
            continue
        records.append(ImageRecord(int(img_id), path, file_name=info["file_name"], width=w, height=h,
                                   objects=ImageObjects(np.asarray(boxes, np.float32), np.asarray(labels, np.int64))))
    if not records:
        raise ValueError(f"no usable image in {ann_file} with images under {images_dir} "
                         f"(skips: {skips}); check that the images directory matches the json")
    return CocoObjects(records, [names[c] for c in category_ids], category_ids, skips, clipped)


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
