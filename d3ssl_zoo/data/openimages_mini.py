"""OpenImage-MINI builder (Sec. 5.1) and the dataset statistics of Tab. 2.

From OpenImages' box CSV and class-description CSV, keep images that (1) hold at least one
object of a class shared with COCO and (2) keep, per shared class, the total number of objects
no larger than COCO's (counted from a COCO instances json). Images are visited in a seeded random
order and accepted greedily while every shared class stays within its COCO budget. The output is
a COCO json (all OpenImages box classes of the kept images, boxes in pixels); ``IsGroupOf`` boxes
become ``iscrowd=1``. The COCO<->OpenImages class map is ``coco_openimages_classes.csv`` next to
this file (ours: the paper does not publish its map; OpenImages labels people Man/Woman/Boy/Girl
as well as Person, all mapped to COCO's person).

    d3ssl-zoo oimini --boxes train-annotations-bbox.csv \\
        --classes class-descriptions-boxable.csv --images train/ --coco instances_train2017.json \\
        --out openimage_mini.json
"""
from __future__ import annotations

import csv
import json
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from d3ssl_zoo.disk import DiskFullError, check_destination

from .proposal_store import NotWritableError, write_atomically

__all__ = ["load_class_map", "read_class_descriptions", "read_boxes", "select_images", "check_output",
           "build_openimages_mini", "dataset_statistics", "format_statistics", "add_arguments", "run"]

CLASS_MAP_FILE = Path(__file__).with_name("coco_openimages_classes.csv")


def load_class_map(path: str | os.PathLike = CLASS_MAP_FILE) -> dict[str, int]:
    """OpenImages display name -> COCO category id (several names may map to one COCO class)."""
    out = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            for name in row["openimages_names"].split("|"):
                out[name.strip()] = int(row["coco_id"])
    return out


def read_class_descriptions(path: str | os.PathLike) -> dict[str, str]:
    """OpenImages ``LabelName`` (MID) -> ``DisplayName``; with or without a header row."""
    out = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.reader(f):
            if len(row) < 2 or row[0] == "LabelName":
                continue
            out[row[0]] = row[1]
    if not out:
        raise ValueError(f"{path} holds no class descriptions (expected rows 'LabelName,DisplayName')")
    return out


def read_boxes(path: str | os.PathLike, label_index: dict[str, int]):
    """Read the box CSV into arrays: ``image_names`` (list), ``image`` int32, ``label`` int32,
    ``xyxy`` float32 normalised, ``group`` bool. Rows with an unknown label are counted and reported."""
    names: dict[str, int] = {}
    img, lab, xyxy, group = [], [], [], []
    unknown = Counter()
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        need = {"ImageID", "LabelName", "XMin", "XMax", "YMin", "YMax"}
        if not need <= set(reader.fieldnames or ()):
            raise ValueError(f"{path} is not an OpenImages box CSV: needs columns {sorted(need)}, "
                             f"has {reader.fieldnames}")
        for row in reader:
            li = label_index.get(row["LabelName"])
            if li is None:
                unknown[row["LabelName"]] += 1
                continue
            img.append(names.setdefault(row["ImageID"], len(names)))
            lab.append(li)
            xyxy.append((float(row["XMin"]), float(row["YMin"]), float(row["XMax"]), float(row["YMax"])))
            group.append(row.get("IsGroupOf", "0") == "1")
    if unknown:
        print(f"skipped {sum(unknown.values())} boxes of {len(unknown)} labels missing from the class "
              f"descriptions", file=sys.stderr)
    return (list(names), np.asarray(img, np.int32), np.asarray(lab, np.int32),
            np.asarray(xyxy, np.float32).reshape(-1, 4), np.asarray(group, bool))


def select_images(image: np.ndarray, shared_coco_id: np.ndarray, budget: dict[int, int], num_images: int,
                  seed: int = 0) -> np.ndarray:
    """Greedy selection of Sec. 5.1. ``shared_coco_id[i]`` is box ``i``'s COCO class or 0.

    Returns the sorted indices of the kept images.
    """
    rows = np.flatnonzero(shared_coco_id > 0)
    order = np.argsort(image[rows], kind="stable")
    rows = rows[order]
    starts = np.searchsorted(image[rows], np.arange(num_images + 1))
    cap = np.zeros(max(max(budget, default=0), int(shared_coco_id.max(initial=0))) + 1, np.int64)
    for k, v in budget.items():
        cap[k] = v
    used = np.zeros_like(cap)
    kept = []
    for i in np.random.default_rng(seed).permutation(num_images):
        a, b = starts[i], starts[i + 1]
        if a == b:
            continue  # no shared-class object: criterion 1
        cls, cnt = np.unique(shared_coco_id[rows[a:b]], return_counts=True)
        if np.all(used[cls] + cnt <= cap[cls]):  # criterion 2
            used[cls] += cnt
            kept.append(i)
    return np.sort(np.asarray(kept, dtype=np.int64))


def dataset_statistics(coco: dict) -> dict:
    """Tab. 2 statistics of a COCO-format dict: #images, objects/image, categories/image, #categories."""
    n = len(coco["images"])
    per_image = Counter(a["image_id"] for a in coco["annotations"])
    cats = {}
    for a in coco["annotations"]:
        cats.setdefault(a["image_id"], set()).add(a["category_id"])
    return {"images": n, "objects_per_image": sum(per_image.values()) / max(n, 1),
            "categories_per_image": sum(len(c) for c in cats.values()) / max(n, 1),
            "categories": len({a["category_id"] for a in coco["annotations"]})}


def format_statistics(rows: dict[str, dict]) -> str:
    lines = [f"{'':16s} {'#Imgs':>9s} {'#Obj/Img':>9s} {'#Cat/Img':>9s} {'#Cat':>6s}"]
    for name, s in rows.items():
        lines.append(f"{name:16s} {s['images']:9d} {s['objects_per_image']:9.2f} {s['categories_per_image']:9.2f} "
                     f"{s['categories']:6d}")
    return "\n".join(lines)


def check_output(out, inputs=(), *, overwrite: bool = False) -> None:
    """Refuse, before reading anything, an ``out`` that is a directory, one of the ``inputs``, an
    existing file (unless ``overwrite``) or in a folder that cannot be written."""
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"output json {out} is a directory; name the file to write, e.g. {out / 'oimini.json'}")
    for given in inputs:
        if out.exists() and Path(given).exists() and out.samefile(given):
            raise ValueError(f"output json {out} is the input {given}; choose another --out")
    if out.exists() and not overwrite:
        raise ValueError(f"output json {out} already exists; choose another --out, or replace it with --overwrite "
                         f"(overwrite=True in Python)")
    check_destination(out.parent, f"output json {out}")


def build_openimages_mini(boxes_csv, classes_csv, images_dir, coco_json, out, *, seed: int = 0,
                          overwrite: bool = False) -> dict:
    """Build OpenImage-MINI as a COCO json at ``out``; returns its Tab. 2 statistics.

    Images missing from ``images_dir`` or unreadable are counted, reported and left out. ``out``
    is checked before any input is read (:func:`check_output`); an existing file is replaced only
    with ``overwrite=True``, and never when it is one of the inputs.
    """
    check_output(out, (boxes_csv, classes_csv, coco_json), overwrite=overwrite)
    descriptions = read_class_descriptions(classes_csv)
    mids = sorted(descriptions)
    label_index = {m: i for i, m in enumerate(mids)}
    class_map = load_class_map()
    unmatched = sorted(set(class_map) - set(descriptions.values()))
    if unmatched:
        print(f"class map names not in {classes_csv}: {unmatched}", file=sys.stderr)
    coco_of_label = np.array([class_map.get(descriptions[m], 0) for m in mids], dtype=np.int64)
    with open(coco_json) as f:
        coco = json.load(f)
    budget = Counter(int(a["category_id"]) for a in coco["annotations"])
    names, image, label, xyxy, group = read_boxes(boxes_csv, label_index)
    kept = select_images(image, coco_of_label[label] if label.size else label.astype(np.int64), dict(budget),
                         len(names), seed)
    images_dir = Path(images_dir)
    keep_rows = np.isin(image, kept)
    images, annotations, missing = [], [], Counter()
    new_id = {}
    for i in kept:
        path = images_dir / f"{names[i]}.jpg"
        try:
            with Image.open(path) as im:
                w, h = im.size
        except OSError:
            missing["missing or unreadable"] += 1
            continue
        new_id[int(i)] = len(images) + 1
        images.append({"id": len(images) + 1, "file_name": path.name, "width": w, "height": h,
                       "openimages_id": names[i]})
    used_labels = sorted({int(label[r]) for r in np.flatnonzero(keep_rows) if int(image[r]) in new_id})
    cat_id = {li: k + 1 for k, li in enumerate(used_labels)}
    sizes = {im["id"]: (im["width"], im["height"]) for im in images}
    for r in np.flatnonzero(keep_rows):
        iid = new_id.get(int(image[r]))
        if iid is None:
            continue
        w, h = sizes[iid]
        x0, y0, x1, y1 = (xyxy[r] * np.array([w, h, w, h], np.float32)).tolist()
        annotations.append({"id": len(annotations) + 1, "image_id": iid, "category_id": cat_id[int(label[r])],
                            "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                            "iscrowd": int(group[r])})
    categories = [{"id": cat_id[li], "name": descriptions[mids[li]], "openimages_label": mids[li],
                   **({"coco_id": int(coco_of_label[li])} if coco_of_label[li] else {})} for li in used_labels]
    result = {"info": {"description": "OpenImage-MINI (D3SSL Sec. 5.1) built by d3ssl_zoo", "seed": seed},
              "images": images, "annotations": annotations, "categories": categories}
    if missing:
        print(f"left out {sum(missing.values())} selected images: {dict(missing)}", file=sys.stderr)
    out = Path(out)
    kept = (f"{'the earlier ' + str(out) + ' is as it was' if out.exists() else 'nothing was written'}; the "
            f"selection is seeded (--seed {seed}), so a rerun writes the same file")
    write_atomically(out, lambda tmp: tmp.write_text(json.dumps(result)), kept)
    return {"openimage_mini": dataset_statistics(result), "coco": dataset_statistics(coco),
            "skipped": dict(missing)}


def add_arguments(p) -> None:
    """Command-line options of ``d3ssl-zoo oimini``."""
    p.add_argument("--boxes", required=True, help="OpenImages box CSV (e.g. oidv6-train-annotations-bbox.csv)")
    p.add_argument("--classes", required=True, help="OpenImages class descriptions CSV (boxable)")
    p.add_argument("--images", required=True, help="folder with the OpenImages <ImageID>.jpg files")
    p.add_argument("--coco", required=True, help="COCO instances json giving the per-class object budget")
    p.add_argument("--out", required=True, help="output COCO json")
    p.add_argument("--seed", type=int, default=0, help="order in which images are considered")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists (never an input file)")


def run(args) -> int:
    try:
        stats = build_openimages_mini(args.boxes, args.classes, args.images, args.coco, args.out, seed=args.seed,
                                      overwrite=args.overwrite)
    except (ValueError, FileNotFoundError, DiskFullError, NotWritableError) as e:
        print(f"d3ssl-zoo oimini: {e}", file=sys.stderr)
        return 2
    print(format_statistics({"OpenImage-MINI": stats["openimage_mini"], "COCO": stats["coco"]}))
    return 0
