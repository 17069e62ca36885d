"""Image files: the one decoder of the package (:func:`decode_rgb`, :func:`load_rgb`) and the
listing of an image folder (:func:`folder_records`).

Orientation rule: the stored pixels, EXIF orientation not applied. COCO's boxes, pycocotools and
torchvision's COCO reader take an image this way, and so do the proposal files, pre-training, the
diagnostics (O-KNN, CR, MCS) and detection, which all decode here.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from .coco_json import ImageRecord

__all__ = ["IMAGE_EXTENSIONS", "Decoded", "decode_rgb", "load_rgb", "folder_records"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class Decoded(NamedTuple):
    image: np.ndarray  # RGB uint8 (h, w, 3)
    reduce: int  # the factor applied: 1, or the ``reduce`` asked for
    stored_size: tuple[int, int]  # (width, height) of the stored image


def decode_rgb(path: str | os.PathLike, reduce: int = 1) -> Decoded:
    """Decode an image to RGB uint8, at ``1 / reduce`` of its size where the decoder can do it cheaply.

    ``reduce`` (1, 2, 4 or 8): a JPEG is decoded at ``ceil(W / reduce) x ceil(H / reduce)`` by
    libjpeg's DCT scaling (a fraction of the cost of a full decode and resize; deterministic);
    other formats come whole, and ``Decoded.reduce`` says which. Pixel ``(i, j)`` of a reduced
    image covers stored pixels ``[i * reduce, (i + 1) * reduce)``: divide coordinates by ``reduce``.
    Grayscale, palette, CMYK, RGBA (alpha dropped) and 16-bit/float images are converted.
    EXIF orientation is not applied: proposals and COCO boxes refer to the stored pixels.
    Unreadable or truncated files raise ``ValueError`` naming the file.
    """
    if reduce not in (1, 2, 4, 8):
        raise ValueError(f"decode_rgb: reduce must be 1, 2, 4 or 8 (the JPEG decoder's scales), got {reduce}")
    try:
        with Image.open(path) as im:
            stored = im.size
            if reduce > 1 and im.format == "JPEG" and min(stored) >= reduce:
                im.draft(None, (stored[0] // reduce, stored[1] // reduce))  # picks exactly 1/reduce
            applied = reduce if im.size != stored else 1
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                a = np.asarray(im, dtype=np.float64)
                hi = 65535.0 if im.mode.startswith("I;16") else max(float(a.max()), 1.0)
                g = np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
                return Decoded(np.repeat(g[:, :, None], 3, axis=2), applied, stored)
            if im.mode != "RGB":
                im = im.convert("RGB")
            return Decoded(np.asarray(im), applied, stored)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read image {path}: {e} (unreadable or truncated file; remove or "
                         f"replace it, or rerun d3ssl-zoo proposals, which records it as skipped)") from e


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """The whole image as RGB uint8 ``(H, W, 3)`` (:func:`decode_rgb` without reduction)."""
    return decode_rgb(path).image


def folder_records(images_dir: str | os.PathLike) -> list[ImageRecord]:
    """Every image under ``images_dir`` (recursive), ids = position in sorted relative paths."""
    root = Path(images_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    rel = sorted(str(p.relative_to(root)) for p in root.rglob("*")
                 if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not rel:
        raise ValueError(f"image folder {root} holds no images with extensions {IMAGE_EXTENSIONS}")
    return [ImageRecord(i, str(root / r), file_name=r) for i, r in enumerate(rel)]
