"""Agreement of OpenCV's selective-search settings with SoCo's Python selective search, and their speed.

    pip install -e ".[bench]"            # the selectivesearch package (0.4), the Python reference
    OMP_NUM_THREADS=1 python benchmarks/bench_proposals.py [--out proposals.json] [--photos astronaut coffee]

The reference is SoCo's proposal step as its code runs it: ``selective_search(img, scale=300,
sigma=0.9, min_size=100)`` on the full-resolution RGB image (SoCo's
``selective_search/generate_imagenet_ss_proposals.py``), with the one change SoCo's bundled copy
makes to the ``selectivesearch`` 0.4 package: the LBP texture histogram spans LBP's codes [0, 255]
instead of [0, 1]. Its regions then go through SoCo's ``ratio3size0308`` filter
(``selective_search/filters.py``'s ``filter_ratio_size`` with ratio 3, sizes 0.3-0.8, as its
``filter_ss_proposals_json.py`` calls it; images left with none get ``filter_ratio`` r=3, then
``filter_none``, as its ``filter_ss_proposals_json_post_no_prop.py`` does): the boxes pre-training uses.

Every OpenCV setting (``d3ssl_zoo.data.selective_search``) goes through ``filter_proposals``. Per
setting: recall of the reference's filtered boxes (distinct ones) by the setting's filtered boxes at
IoU >= 0.7 (mean over photos, and pooled over all boxes), the share of the setting's boxes that
match a reference box, the boxes kept per image, and CPU seconds per image of the search alone
(one thread; CPU time, which other processes on a shared machine disturb less than wall time).
Two more rows calibrate the scale: the ``selectivesearch`` 0.4 package as released, and the
reference itself run on the mirrored photo (boxes mirrored back), a measure of how stable the
reference's own boxes are. The photos are scikit-image's bundled natural colour photos. The
script also checks that ``filter_proposals`` keeps exactly the boxes SoCo's filter keeps, on the
reference's own boxes.

Decision rule (``docs/benchmarks.md``): among the settings the ``proposals`` tool can run that are at
most 10x slower than the default (``fast`` at 500 px), the one with the highest mean recall; if none
reaches 0.5, the default stays.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from contextlib import contextmanager
from importlib import metadata

import numpy as np

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "stereo_motorcycle")
IOU = 0.7
# (name, mode, resize_long, soco_weights, a setting the ``proposals`` tool can run)
SETTINGS = (
    ("fast@500 (default)", "fast", 500, None, True),
    ("fast@full", "fast", None, None, True),
    ("single@full", "single", None, None, True),
    ("quality@500", "quality", 500, None, True),
    ("soco", "soco", None, None, True),
    ("soco, equal weights", "soco", None, {"color": 1.0, "texture": 1.0, "size": 1.0, "fill": 1.0}, False),
)
DEFAULT = SETTINGS[0][0]
SOCO_CALL = {"scale": 300, "sigma": 0.9, "min_size": 100}


def load_photo(name: str) -> np.ndarray:
    import skimage.data

    image = getattr(skimage.data, name)()
    if isinstance(image, tuple):  # stereo_motorcycle: (left, right, disparity)
        image = image[0]
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"skimage.data.{name} is not an RGB photo (shape {image.shape})")
    return np.ascontiguousarray(image)


def reference_module():
    """The ``selectivesearch`` package's module, or exit 2 with how to install it."""
    try:
        import selectivesearch.selectivesearch as module
    except ImportError:
        print("bench_proposals.py needs the Python reference, the selectivesearch package (0.4):\n"
              "    pip install -e \".[bench]\"    (or: pip install selectivesearch==0.4)", file=sys.stderr)
        raise SystemExit(2) from None
    version = metadata.version("selectivesearch")
    if version != "0.4":
        print(f"note: selectivesearch {version} installed; SoCo's copy derives from 0.4", file=sys.stderr)
    return module, version


def lbp_hist_full_range(lbp: np.ndarray) -> np.ndarray:
    """Texture histogram of a region as SoCo's copy computes it: per colour channel, 10 bins over
    LBP's codes [0, 255], each channel's counts divided by the region's pixel count."""
    hists = [np.histogram(lbp[:, c], 10, (0.0, 255.0))[0] for c in range(lbp.shape[1])]
    return np.concatenate(hists) / len(lbp)


@contextmanager
def soco_texture(module, enabled: bool):
    original = module._calc_texture_hist
    if enabled:
        module._calc_texture_hist = lbp_hist_full_range
    try:
        yield
    finally:
        module._calc_texture_hist = original


def run_reference(module, image: np.ndarray, soco_copy: bool = True):
    """SoCo's call -> (rects (N, 4) x, y, w, h as SoCo stores them, CPU seconds)."""
    with soco_texture(module, soco_copy), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skimage's LBP warns about float input; SoCo passes the same floats
        start = time.process_time()
        _, regions = module.selective_search(image, **SOCO_CALL)[:2]
        seconds = time.process_time() - start
    rects = np.array([r["rect"] for r in regions], dtype=np.float64).reshape(-1, 4)
    return rects, seconds


def soco_filter(rects: np.ndarray, height: int, width: int) -> tuple[np.ndarray, str]:
    """SoCo's json filter on (x, y, w, h) rects, duplicates kept as its json keeps them."""
    w, h = rects[:, 2], rects[:, 3]
    size = (w >= 32) & (h >= 32)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = size & (w / h >= 1 / 3) & (w / h <= 3)
    rel = np.sqrt(w * h) / math.sqrt(width * height)
    for name, keep in (("ratio3size0308", ratio & (rel >= 0.3) & (rel <= 0.8)), ("ratio3", ratio),
                       ("none", size)):
        if keep.any():
            return rects[keep], name
    return rects[:0], "no proposal"


def xywh_to_xyxy(rects: np.ndarray) -> np.ndarray:
    return np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod((rb - lt).clip(0), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def relative_sizes(boxes: np.ndarray, width: int, height: int) -> list[float]:
    """sqrt(wh) / sqrt(WH) of each box, the quantity SoCo's size filter bounds."""
    return (np.sqrt(np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)) / math.sqrt(width * height)).tolist()


def agreement(reference: np.ndarray, boxes: np.ndarray, iou: float, width: int, height: int) -> dict:
    m = iou_matrix(reference, boxes)
    found = (m >= iou).any(axis=1) if m.size else np.zeros(len(reference), bool)
    matching = (m >= iou).any(axis=0) if m.size else np.zeros(len(boxes), bool)
    return {"reference_boxes": len(reference), "found": int(found.sum()), "boxes": len(boxes),
            "boxes_matching": int(matching.sum()),
            "recall": float(found.mean()) if len(reference) else None,
            "best_iou_median": float(np.median(m.max(axis=1))) if m.size else None,
            "relative_sizes": relative_sizes(boxes, width, height)}


def summarise(per_photo: list[dict]) -> dict:
    recalls = [p["recall"] for p in per_photo if p["recall"] is not None]
    found = sum(p["found"] for p in per_photo)
    refs = sum(p["reference_boxes"] for p in per_photo)
    boxes = sum(p["boxes"] for p in per_photo)
    return {"recall_mean": float(np.mean(recalls)) if recalls else None,
            "recall_pooled": found / refs if refs else None,
            "matching_share": sum(p["boxes_matching"] for p in per_photo) / boxes if boxes else None,
            "boxes_per_image": boxes / len(per_photo),
            "relative_size_median": float(np.median(sum((p["relative_sizes"] for p in per_photo), []))),
            "seconds_per_image": float(np.mean([p["seconds"] for p in per_photo]))}


def timed_search(image, mode, resize_long, weights, repeats):
    from d3ssl_zoo.data.selective_search import selective_search

    best, boxes = math.inf, None
    for _ in range(repeats):
        start = time.process_time()
        boxes = selective_search(image, mode, resize_long, soco_weights=weights)
        best = min(best, time.process_time() - start)
    return boxes, best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--photos", nargs="+", default=list(PHOTOS), help="scikit-image photo names")
    p.add_argument("--iou", type=float, default=IOU, help="IoU at which a reference box counts as found")
    p.add_argument("--repeats", type=int, default=2,
                   help="OpenCV searches per photo and setting (least CPU time); the reference runs once")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    module, version = reference_module()

    import cv2

    from d3ssl_zoo.data.selective_search import filter_proposals

    cv2.setNumThreads(1)
    rows = {name: [] for name, *_ in SETTINGS}
    rows["selectivesearch 0.4 as released"] = []  # without SoCo's texture range
    rows["reference on the mirrored photo"] = []  # the reference's own stability: the same search, mirrored
    ref_rows, filter_checks = [], []
    for photo in args.photos:
        image = load_photo(photo)
        height, width = image.shape[:2]
        rects, ref_seconds = run_reference(module, image)
        kept, rule = soco_filter(rects, height, width)
        reference = np.unique(xywh_to_xyxy(kept), axis=0)
        ours, level = filter_proposals(xywh_to_xyxy(rects), width, height)
        same = rule == "ratio3size0308" and level == 0 and np.array_equal(np.unique(ours, axis=0), reference)
        filter_checks.append(bool(same))
        ref_rows.append({"photo": photo, "size": [width, height], "regions": len(rects),
                         "distinct_regions": len(np.unique(rects, axis=0)), "filtered": len(kept),
                         "filtered_distinct": len(reference), "filter": rule, "seconds": ref_seconds,
                         "filter_proposals_agrees": bool(same), "boxes": reference})
        print(f"{photo:18s} {width}x{height}: reference {ref_seconds:6.2f} s, {len(rects)} regions, "
              f"{len(kept)} kept by {rule} ({len(reference)} distinct)", flush=True)
        released, rel_seconds = run_reference(module, image, soco_copy=False)
        boxes, _ = filter_proposals(xywh_to_xyxy(released), width, height)
        rows["selectivesearch 0.4 as released"].append(
            {"photo": photo, "seconds": rel_seconds, **agreement(reference, boxes, args.iou, width, height)})
        mirrored, mir_seconds = run_reference(module, np.ascontiguousarray(image[:, ::-1]))
        mirrored[:, 0] = width - 1 - mirrored[:, 0] - mirrored[:, 2]  # inclusive pixel indices, mirrored back
        boxes, _ = filter_proposals(xywh_to_xyxy(mirrored), width, height)
        rows["reference on the mirrored photo"].append(
            {"photo": photo, "seconds": mir_seconds, **agreement(reference, boxes, args.iou, width, height)})
        for name, mode, resize_long, weights, _ in SETTINGS:
            raw, seconds = timed_search(image, mode, resize_long, weights, args.repeats)
            boxes, _ = filter_proposals(raw, width, height)
            rows[name].append({"photo": photo, "seconds": seconds,
                               **agreement(reference, boxes, args.iou, width, height)})

    ref_seconds = float(np.mean([r["seconds"] for r in ref_rows]))
    summary = {name: summarise(per) for name, per in rows.items()}
    default_seconds = summary[DEFAULT]["seconds_per_image"]
    print(f"\nreference: SoCo's selective search (selectivesearch {version} + SoCo's texture range), "
          f"{ref_seconds:.2f} s per image, {np.mean([r['filtered_distinct'] for r in ref_rows]):.1f} distinct "
          f"filtered boxes per image; filter_proposals reproduces SoCo's filter on "
          f"{sum(filter_checks)}/{len(filter_checks)} photos")
    ref_sizes = sum((relative_sizes(r.pop("boxes"), *r["size"]) for r in ref_rows), [])
    print(f"recall of the reference's filtered boxes at IoU >= {args.iou}; 'matching': share of the setting's "
          f"boxes at IoU >= {args.iou} with one of them; 'size': median sqrt(wh/WH) of the boxes "
          f"(reference: {np.median(ref_sizes):.2f})\n")
    print(f"{'setting':34s} {'recall mean':>11s} {'pooled':>7s} {'matching':>9s} {'boxes':>6s} {'size':>5s} "
          f"{'s/img':>7s} {'x ref':>6s} {'x default':>9s}")
    for name, s in summary.items():
        s["speedup_vs_reference"] = ref_seconds / s["seconds_per_image"]
        s["time_vs_default"] = s["seconds_per_image"] / default_seconds
        print(f"{name:34s} {s['recall_mean']:11.3f} {s['recall_pooled']:7.3f} {s['matching_share']:9.3f} "
              f"{s['boxes_per_image']:6.1f} {s['relative_size_median']:5.2f} {s['seconds_per_image']:7.3f} "
              f"{s['speedup_vs_reference']:5.1f}x {s['time_vs_default']:8.2f}x")
    candidates = [name for name, *_, tool in SETTINGS if tool and summary[name]["time_vs_default"] <= 10]
    best = max(candidates, key=lambda n: summary[n]["recall_mean"])
    decision = best if summary[best]["recall_mean"] >= 0.5 else DEFAULT
    why = ("highest mean recall among the tool's settings at most 10x slower than the default"
           if decision == best else f"no setting reaches 0.5 recall (best: {best}); the default stays")
    print(f"\nsetting by the rule: {decision} ({why})")
    if args.out:
        record = {"reference": {"package": f"selectivesearch {version}", "call": SOCO_CALL,
                                "texture_hist_range": [0, 255], "seconds_per_image": ref_seconds,
                                "relative_size_median": float(np.median(ref_sizes)),
                                "photos": ref_rows},
                  "iou": args.iou, "repeats": args.repeats, "threads": 1, "summary": summary,
                  "per_photo": rows, "decision": {"setting": decision, "why": why},
                  "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
        with open(args.out, "w") as f:
            json.dump(record, f, indent=1)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
