"""The one reader of COCO annotation files, and the one record type of an image that every
reader of the package returns (:class:`ImageRecord`, with its labelled objects in
:class:`ImageObjects` where the caller needs them): pre-training (:func:`coco_records`,
:func:`d3ssl_zoo.data.images.folder_records`), the diagnostics
(:func:`d3ssl_zoo.evaluation.objects.load_coco_objects`) and detection
(:func:`d3ssl_zoo.detection.data.read_coco`, :func:`~d3ssl_zoo.detection.data.read_voc`).

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
from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["ImageObjects", "ImageRecord", "valid_bbox", "load_coco", "coco_records"]


@dataclass(frozen=True, eq=False)  # arrays: records compare and hash their objects by identity
class ImageObjects:
    """The labelled objects of one image, one row per object."""

    boxes: np.ndarray  # (n, 4) float32 xyxy pixels of the stored image (COCO's xywh converted by the reader)
    labels: np.ndarray  # (n,) int64 class index, 0-based and contiguous (the reader's sorted category ids)
    difficult: Optional[np.ndarray] = None  # (n,) bool: VOC's flag (all False for detection's COCO); None: not read
    segmentations: Optional[List[object]] = None  # COCO polygons / RLE, one per object (Mask R-CNN); None: not read


@dataclass(frozen=True)
class ImageRecord:
    """One image of a dataset, as every reader returns it.

    ``image_id`` keys the image: COCO's id, the position in the sorted file list of an image
    folder, VOC's image name (a string such as ``"000005"``). ``path`` is the file to decode
    (with :func:`d3ssl_zoo.data.load_rgb`: stored pixels, the pixels ``objects`` refer to).
    ``file_name`` is the path relative to the images folder (the key of proposal files).
    ``width``/``height`` are the stored image's size as the annotation file states it (``None``
    where no file states it: image folders). ``objects`` are its labelled objects, read by the
    diagnostics and detection (``None`` for pre-training, which reads no annotation).
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
