"""The one reader of COCO annotation files, and the one record type of an image that every
reader of the package returns (:class:`ImageRecord`, with its labelled objects in
:class:`ImageObjects` where the caller needs them).

* :func:`coco_records`: the images of a COCO file, for pre-training (no annotation is read; image
  folders: :func:`d3ssl_zoo.data.images.folder_records`).
* :func:`read_coco_objects`: the images with their labelled objects, for evaluation
  (:func:`d3ssl_zoo.evaluation.objects.load_coco_objects`) and detection
  (:func:`d3ssl_zoo.detection.data.read_coco`). One box rule (:func:`clip_box`) and one skip
  counter (:data:`SKIP_REASONS`, reported by :func:`format_read`) for both.

:func:`load_coco` checks a json before pycocotools indexes it.

pycocotools keys images by id in a dict, so a file that lists an id twice silently loses
images, and a file without ``images`` reads as an empty dataset. Here both are errors naming
the file; so are invalid JSON (with its line), images without an id or a file name, and
categories without an id or with one listed twice.
Annotations whose ``bbox`` is not four finite numbers (a string, NaN) or that lack
``image_id``/``category_id`` are dropped and counted: every reader reports them with its other
skipped boxes.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
from collections import Counter
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

__all__ = ["ImageObjects", "ImageRecord", "CocoObjects", "SKIP_REASONS", "no_skips", "format_read", "valid_bbox",
           "clip_box", "load_coco", "coco_records", "read_coco_objects"]


@dataclass(frozen=True, eq=False)  # arrays: records compare and hash their objects by identity
class ImageObjects:
    """The labelled objects of one image, one row per object."""

    boxes: np.ndarray  # (n, 4) float32 xyxy pixels of the stored image (COCO's xywh converted by the reader)
    labels: np.ndarray  # (n,) int64 class index, 0-based and contiguous (the reader's sorted category ids)
    difficult: Optional[np.ndarray] = None  # (n,) bool: VOC's flag (all False for COCO); None: not read
    segmentations: Optional[List[object]] = None  # COCO polygons / RLE, one per object (Mask R-CNN); None: not read


@dataclass(frozen=True)
class ImageRecord:
    """One image of a dataset, as every reader returns it.

    ``image_id`` keys the image: COCO's id, the position in the sorted file list of an image
    folder, VOC's image name (a string such as ``"000005"``). ``path`` is the file to decode
    (with :func:`d3ssl_zoo.data.load_rgb`: stored pixels, the pixels ``objects`` refer to).
    ``file_name`` is the path relative to the images folder (the key of proposal files).
    ``width``/``height`` are the stored image's size as the annotation file states it (``None``
    where no file states it: image folders). ``objects`` are its labelled objects, read by
    evaluation and detection (``None`` for pre-training, which reads no annotation).
    """

    image_id: int | str
    path: str
    _: KW_ONLY
    file_name: Optional[str] = None
    width: Optional[int] = None
    height: Optional[int] = None
    objects: Optional[ImageObjects] = None


def valid_bbox(bbox: Any) -> bool:
    """Is ``bbox`` a COCO ``[x, y, w, h]`` of four finite numbers?"""
    return (isinstance(bbox, (list, tuple)) and len(bbox) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox))


def _check_images(path: str, images: Any, image_keys: Sequence[str]) -> None:
    if not isinstance(images, list):
        raise ValueError(f"{path} has no 'images' list; a COCO annotation file lists its images as "
                         f"\"images\": [{{\"id\": 1, \"file_name\": \"a.jpg\", \"width\": 640, \"height\": 480}}, ...]")
    for i, im in enumerate(images):
        missing = [k for k in image_keys if not isinstance(im, dict) or k not in im]
        if missing:
            raise ValueError(f"{path}: images[{i}] has no {', '.join(repr(k) for k in missing)}; every image "
                             f"needs {', '.join(image_keys)}")
        if isinstance(im["id"], bool) or not isinstance(im["id"], int):
            raise ValueError(f"{path}: images[{i}] has id {im['id']!r}; image ids must be integers")
    counts = Counter(im["id"] for im in images)
    dups = sorted(i for i, n in counts.items() if n > 1)
    if dups:
        shown = ", ".join(map(str, dups[:10])) + (f" and {len(dups) - 10} more" if len(dups) > 10 else "")
        raise ValueError(f"{path} lists image id(s) {shown} more than once ({len(dups)} duplicated ids); "
                         f"image ids must be unique: give every image its own id")


def _check_categories(path: str, cats: Any) -> None:
    if not isinstance(cats, list):
        raise ValueError(f"{path}: 'categories' must be a list of {{\"id\": 1, \"name\": \"cat\"}}, got a "
                         f"{type(cats).__name__}")
    for i, c in enumerate(cats):
        if not isinstance(c, dict) or isinstance(c.get("id"), bool) or not isinstance(c.get("id"), int):
            raise ValueError(f"{path}: categories[{i}] has no integer 'id'; every category needs one")
    dups = sorted(i for i, n in Counter(c["id"] for c in cats).items() if n > 1)
    if dups:
        raise ValueError(f"{path} lists category id(s) {dups[:10]} more than once; category ids must be unique")


def load_coco(path: str | os.PathLike, image_keys: Sequence[str] = ("id", "file_name")) -> Tuple[Any, int]:
    """Read and check a COCO json; returns the pycocotools ``COCO`` object and the number of
    invalid annotations dropped (see the module doc). ``image_keys``: fields every image must have."""
    from pycocotools.coco import COCO

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"COCO annotation file {path} does not exist; pass a COCO-format json")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); "
                         f"fix the file or export it again") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not a UTF-8 text file ({e.reason}); pass a COCO-format json") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, not the object of a COCO annotation file "
                         f"(with 'images', 'annotations', 'categories')")
    _check_images(path, data.get("images"), image_keys)
    _check_categories(path, data.get("categories", []))
    anns = data.get("annotations") or []
    if not isinstance(anns, list):
        raise ValueError(f"{path}: 'annotations' must be a list, got a {type(anns).__name__}")
    kept = [a for a in anns if isinstance(a, dict) and "image_id" in a and "category_id" in a
            and ("bbox" not in a or valid_bbox(a["bbox"]))]
    dropped = len(anns) - len(kept)
    data["annotations"] = kept
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco.createIndex()
    return coco, dropped


def _int_or_none(v: Any) -> Optional[int]:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def coco_records(ann_file: str | os.PathLike, images_dir: str | os.PathLike | None = None) -> list[ImageRecord]:
    """The images of a COCO annotation file, for pre-training (no annotation is read).

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
    return [ImageRecord(int(i), str(images_dir / info["file_name"]), file_name=info["file_name"],
                        width=_int_or_none(info.get("width")), height=_int_or_none(info.get("height")))
            for i, info in sorted(coco.imgs.items())]


#: Why a reader leaves an image or an object out, with the words of its report. Every reader counts
#: each skip under one of these keys (all present, in this order, zeros included); none is silent.
SKIP_REASONS: Dict[str, str] = {
    "missing_image_files": "image files missing on disk",
    "images_without_objects": "images without objects",
    "crowd_boxes": "crowd boxes",
    "boxes_outside_image": "boxes outside their image",
    "boxes_too_small": "boxes under the minimum size",
    "boxes_unknown_category": "boxes of a category id not in 'categories'",
    "annotations_without_bbox": "annotations without bbox",
    "invalid_annotations": ("invalid annotations (a box that is not 4 finite numbers, a VOC box whose max corner "
                            "is below its min, or no image/category id)"),
}


def no_skips() -> Dict[str, int]:
    """A fresh skip counter: every key of :data:`SKIP_REASONS` at 0."""
    return dict.fromkeys(SKIP_REASONS, 0)


def format_read(images: int, objects: int, skips: Mapping[str, int]) -> str:
    """One line of what a reader kept and skipped, e.g. ``"3 images, 5 objects; skipped: 1 crowd boxes"``."""
    skipped = [f"{n} {SKIP_REASONS[k]}" for k, n in skips.items() if n]
    return f"{images} images, {objects} objects" + ("; skipped: " + ", ".join(skipped) if skipped else "")


@dataclass
class CocoObjects:
    """The labelled objects of one split, as :func:`read_coco_objects` returns them.

    Every record has its ``width``, ``height`` and ``objects`` (boxes xyxy float pixels of the
    stored image, labels the contiguous class index of ``category_ids``). ``skips`` counts
    everything left out and why (the keys of :data:`SKIP_REASONS`); ``clipped_boxes`` the boxes
    cut to their image. ``coco`` is the pycocotools ``COCO`` object where the caller asked for the
    ground truth (COCO AP), else ``None``.
    """

    images: List[ImageRecord]
    class_names: List[str]
    category_ids: List[int]
    skips: Dict[str, int] = field(default_factory=no_skips)
    clipped_boxes: int = 0
    coco: Any = field(default=None, repr=False, compare=False)

    @property
    def num_objects(self) -> int:
        return int(sum(len(r.objects.labels) for r in self.images))

    def summary(self) -> str:
        return format_read(len(self.images), self.num_objects, self.skips)


def _xyxy(bbox: Sequence[float]) -> np.ndarray:
    x, y, w, h = (float(v) for v in bbox)
    return np.array([x, y, x + w, y + h], np.float64)


def clip_box(bbox: Sequence[float], width: int, height: int,
             min_box_size: float = 1.0) -> Tuple[Optional[np.ndarray], str]:
    """The package's one rule for a labelled box: COCO ``[x, y, w, h]`` -> xyxy float64 pixels cut to
    the ``width x height`` image. Returns ``(box, "")``, or ``(None, reason)`` (a key of
    :data:`SKIP_REASONS`) for a box with nothing inside the image or a side under ``min_box_size``
    pixels once cut (pycocotools, detectron2 and torchvision's references cut boxes the same way)."""
    box = np.clip(_xyxy(bbox), 0, [width, height, width, height])
    if box[2] <= box[0] or box[3] <= box[1]:
        return None, "boxes_outside_image"
    if min(box[2] - box[0], box[3] - box[1]) < min_box_size:
        return None, "boxes_too_small"
    return box, ""


def read_coco_objects(ann_file: str | os.PathLike, images_dir: str | os.PathLike, *, min_box_size: float = 1.0,
                      keep_crowd: bool = False, keep_images_without_objects: bool = False,
                      skip_missing_files: bool = False, segmentations: bool = False,
                      ground_truth: bool = False) -> CocoObjects:
    """The images of a COCO instances json with their labelled objects, every skip counted.

    Each annotation becomes an object unless it has no ``bbox``, is a crowd region (unless
    ``keep_crowd``), names a category id not in ``categories``, or fails :func:`clip_box`; images
    left without objects are skipped unless ``keep_images_without_objects`` (a test split keeps
    every image). ``skip_missing_files``: images whose file is not under ``images_dir`` are skipped
    (else they fail when read). ``segmentations``: keep each object's polygons / RLE (Mask R-CNN).
    ``ground_truth``: keep the pycocotools object in ``CocoObjects.coco`` (the ground truth of COCO AP).
    Errors: no categories, no annotation with a box, no images folder, no usable image.
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
        raise ValueError(f"{ann_file} has no 'categories'; labelled objects need a COCO instances json "
                         f"(a COCO detection json, not an image-only list)")
    if not any("bbox" in a and "category_id" in a for a in anns):
        raise ValueError(f"{ann_file} has no annotations with 'bbox' and 'category_id'; "
                         f"labelled objects need ground-truth boxes with categories")
    category_ids = sorted(c["id"] for c in cats)
    names = {c["id"]: c.get("name", str(c["id"])) for c in cats}
    label_of = {cid: i for i, cid in enumerate(category_ids)}

    skips = no_skips()
    skips["invalid_annotations"] = invalid
    clipped = 0
    records: List[ImageRecord] = []
    for img_id in sorted(coco.imgs):
        info = coco.imgs[img_id]
        path = os.path.join(images_dir, info["file_name"])
        if skip_missing_files and not os.path.isfile(path):
            skips["missing_image_files"] += 1
            continue
        w, h = int(info["width"]), int(info["height"])
        boxes, labels, segs = [], [], []
        for a in coco.imgToAnns.get(img_id, []):
            if "bbox" not in a or "category_id" not in a:
                skips["annotations_without_bbox"] += 1
                continue
            if a.get("iscrowd", 0) and not keep_crowd:
                skips["crowd_boxes"] += 1
                continue
            if a["category_id"] not in label_of:
                skips["boxes_unknown_category"] += 1
                continue
            box, reason = clip_box(a["bbox"], w, h, min_box_size)
            if box is None:
                skips[reason] += 1
                continue
            clipped += int(not np.array_equal(box, _xyxy(a["bbox"])))
            boxes.append(box)
            labels.append(label_of[a["category_id"]])
            segs.append(a.get("segmentation"))
        if not boxes and not keep_images_without_objects:
            skips["images_without_objects"] += 1
            continue
        records.append(ImageRecord(
            int(img_id), path, file_name=info["file_name"], width=w, height=h,
            objects=ImageObjects(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64),
                                 difficult=np.zeros(len(boxes), bool), segmentations=segs if segmentations else None)))
    if not records:
        raise ValueError(f"no usable image in {ann_file} with images under {images_dir} "
                         f"(skips: {skips}); check that the images directory matches the json")
    return CocoObjects(records, [names[c] for c in category_ids], category_ids, skips, clipped,
                       coco if ground_truth else None)
