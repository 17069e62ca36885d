"""The one reader of COCO annotation files: checks a json before pycocotools indexes it.

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
from typing import Any, Sequence, Tuple

__all__ = ["valid_bbox", "load_coco"]


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
