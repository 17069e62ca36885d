"""Detection metrics of the paper's transfer tables (Tab. 1, 3, 5-7).

* VOC: AP / AP50 / AP75 as detectron2's ``PascalVOCDetectionEvaluator`` computes them (the
  py-faster-rcnn port of the VOC devkit): per class and IoU threshold 0.50:0.05:0.95, the
  devkit's "+1" pixel-area IoU on 1-based corners, a detection counts as a match when its IoU
  with the best ground truth is strictly above the threshold, difficult objects are neither
  positives nor false positives, 11-point interpolated AP for VOC2007 (area under the
  precision envelope otherwise); AP is the mean over thresholds of the class-mean AP, in percent.
* COCO: bbox / segm AP through pycocotools' COCOeval, in percent as detectron2 reports it.

Predictions come per image as ``{"boxes": (N, 4) xyxy pixels, "scores": (N,), "labels": (N,)}``
(0-based class indices; ``"masks"``: (N, 1, H, W) probabilities for segm).
"""
from __future__ import annotations

import contextlib
import io
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from d3ssl_zoo.data.coco_json import ImageRecord

from .data import VOC_CLASSES

__all__ = ["voc_ap", "voc_precision_recall", "evaluate_voc", "coco_results", "evaluate_coco"]

VOC_IOU_THRESHOLDS = tuple(range(50, 100, 5))


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
    """VOC AP of a precision/recall curve (detections sorted by score).

    ``use_07_metric``: mean of the best precision at recall >= t for t in 0, 0.1, ..., 1
    (11 points, VOC2007 test); otherwise the area under the monotone precision envelope.
    """
    recall, precision = np.asarray(recall, float), np.asarray(precision, float)
    if use_07_metric:
        return float(sum((precision[recall >= t].max() if (recall >= t).any() else 0.0)
                         for t in np.arange(0.0, 1.1, 0.1)) / 11.0)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _devkit_boxes(b: np.ndarray) -> np.ndarray:
    # Our x1, y1 are the devkit's 1-based inclusive corners minus one (as detectron2 loads them).
    b = np.asarray(b, float).reshape(-1, 4).copy()
    b[:, :2] += 1.0
    return b


def voc_precision_recall(dets: Sequence[tuple], gts: Mapping[object, tuple], iou_thresh: float):
    """Match one class's detections to its ground truth the devkit way.

    ``dets``: ``(image_id, score, box)`` tuples; ``gts``: image_id -> ``(boxes (M, 4), difficult (M,))``.
    Returns ``(recall, precision)`` arrays over detections sorted by decreasing score (stable
    order for equal scores) and the number of non-difficult ground-truth objects.
    """
    npos = int(sum((~np.asarray(d, bool)).sum() for _, d in gts.values()))
    order = sorted(range(len(dets)), key=lambda i: -dets[i][1])
    taken = {k: np.zeros(len(v[1]), bool) for k, v in gts.items()}
    tp, fp = np.zeros(len(dets)), np.zeros(len(dets))
    for rank, i in enumerate(order):
        image_id, _, box = dets[i]
        gt_boxes, difficult = gts.get(image_id, (np.zeros((0, 4)), np.zeros(0, bool)))
        bb = _devkit_boxes(box)[0]
        ov_max, j = -np.inf, -1
        if len(gt_boxes):
            g = _devkit_boxes(gt_boxes)
            iw = np.maximum(np.minimum(g[:, 2], bb[2]) - np.maximum(g[:, 0], bb[0]) + 1.0, 0.0)
            ih = np.maximum(np.minimum(g[:, 3], bb[3]) - np.maximum(g[:, 1], bb[1]) + 1.0, 0.0)
            inter = iw * ih
            union = ((bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
                     + (g[:, 2] - g[:, 0] + 1.0) * (g[:, 3] - g[:, 1] + 1.0) - inter)
            ious = inter / union
            j = int(np.argmax(ious))
            ov_max = ious[j]
        if ov_max > iou_thresh:
            if not difficult[j]:
                if not taken[image_id][j]:
                    tp[rank] = 1.0
                    taken[image_id][j] = True
                else:
                    fp[rank] = 1.0
        else:
            fp[rank] = 1.0
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    recall = tp / max(npos, 1)
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return recall, precision, npos


def evaluate_voc(predictions: Mapping[object, Mapping[str, object]], records: Sequence[ImageRecord],
                 class_names: Sequence[str] = VOC_CLASSES, use_07_metric: bool = True) -> Dict[str, object]:
    """VOC AP / AP50 / AP75 (percent) of ``predictions`` (image_id -> boxes/scores/labels).

    Every record is part of the test set (an image without predictions simply has none); a
    prediction for an image not in ``records`` is an error. A class with no non-difficult
    object cannot have a recall; it is left out of the means and listed under
    ``"classes_without_objects"`` (detectron2 would average in a NaN).
    """
    ids = {r.image_id for r in records}
    unknown = [k for k in predictions if k not in ids]
    if unknown:
        raise ValueError(f"predictions for {len(unknown)} images not in the test set, e.g. {unknown[:3]}")
    per_class_dets: Dict[int, List[tuple]] = {c: [] for c in range(len(class_names))}
    for image_id, p in predictions.items():
        boxes = np.asarray(p["boxes"], float).reshape(-1, 4)
        scores = np.asarray(p["scores"], float).reshape(-1)
        labels = np.asarray(p["labels"]).reshape(-1).astype(int)
        if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
            raise ValueError(f"image {image_id}: labels must be 0-based class indices < {len(class_names)}")
        for b, s, c in zip(boxes, scores, labels):
            per_class_dets[int(c)].append((image_id, float(s), b))
    aps: Dict[int, List[float]] = {t: [] for t in VOC_IOU_THRESHOLDS}
    per_class: Dict[str, float] = {}
    empty = []
    for c, name in enumerate(class_names):
        gts = {r.image_id: (r.objects.boxes[r.objects.labels == c], r.objects.difficult[r.objects.labels == c])
               for r in records}
        if sum(int((~d).sum()) for _, d in gts.values()) == 0:
            empty.append(name)
            continue
        for t in VOC_IOU_THRESHOLDS:
            rec, prec, _ = voc_precision_recall(per_class_dets[c], gts, t / 100.0)
            aps[t].append(100.0 * voc_ap(rec, prec, use_07_metric))
        per_class[name] = aps[50][-1]
    if not per_class:
        raise ValueError("no class has a non-difficult ground-truth object; nothing to evaluate")
    m_ap = {t: float(np.mean(v)) for t, v in aps.items()}
    return {"AP": float(np.mean(list(m_ap.values()))), "AP50": m_ap[50], "AP75": m_ap[75],
            "AP50_per_class": per_class, "classes_without_objects": empty,
            "metric": "VOC2007 11-point" if use_07_metric else "VOC area"}


def coco_results(predictions: Mapping[int, Mapping[str, object]], category_ids: Sequence[int],
                 mask_threshold: float = 0.5) -> List[Dict[str, object]]:
    """COCO result entries (xywh boxes, RLE masks binarised at ``mask_threshold``)."""
    from pycocotools import mask as mask_utils

    out = []
    for image_id, p in predictions.items():
        boxes = np.asarray(p["boxes"], float).reshape(-1, 4)
        scores = np.asarray(p["scores"], float).reshape(-1)
        labels = np.asarray(p["labels"]).reshape(-1).astype(int)
        masks = p.get("masks")
        for i, (b, s, c) in enumerate(zip(boxes, scores, labels)):
            entry = {"image_id": int(image_id), "category_id": int(category_ids[c]),
                     "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
                     "score": float(s)}
            if masks is not None:
                m = np.asarray(masks[i]).reshape(np.asarray(masks[i]).shape[-2:]) >= mask_threshold
                rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
                rle["counts"] = rle["counts"].decode("ascii")
                entry["segmentation"] = rle
            out.append(entry)
    return out


_COCO_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def evaluate_coco(coco_gt, results: List[Dict[str, object]], iou_types: Sequence[str] = ("bbox",),
                  image_ids: Optional[Sequence[int]] = None) -> Dict[str, Dict[str, object]]:
    """COCO AP (percent) per IoU type through pycocotools; pycocotools' table under ``"summary"``."""
    from pycocotools.cocoeval import COCOeval

    out: Dict[str, Dict[str, object]] = {}
    for iou_type in iou_types:
        if iou_type == "segm" and results and "segmentation" not in results[0]:
            raise ValueError("segm evaluation needs 'masks' in the predictions (a Mask R-CNN)")
        if not results:
            out[iou_type] = {**{k: 0.0 for k in _COCO_STATS}, "summary": "no predictions"}
            continue
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            dt = coco_gt.loadRes([dict(r) for r in results])
            ev = COCOeval(coco_gt, dt, iou_type)
            if image_ids is not None:
                ev.params.imgIds = list(image_ids)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        stats = {k: float(v) * 100.0 for k, v in zip(_COCO_STATS, ev.stats[:6])}
        out[iou_type] = {**stats, "summary": buf.getvalue()}
    return out
