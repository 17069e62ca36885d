"""Coupling rate (CR), paper Sec. 3.1 and Fig. 3, Tab. 6/7.

Objects A and B of different classes: image 1 holds A and B side by side on black, image 2
holds A alone at the same place. Per stage, ``CR = cos(f(A1), f(B)) / cos(f(A2), f(B))``
averaged over pairs; 1 means B does not leak into A's feature (ideal), > 1 means coupling.
f is the mean of the stage's feature cells inside the object's box (``stage_region_features``).
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from d3ssl_zoo.evaluation.features import STAGES, eval_mode, model_device, model_mean_std, stage_region_features
from d3ssl_zoo.evaluation.objects import crop_object, load_objects_of_min_size, to_tensor

__all__ = ["compose_pair", "pair_coupling_cosines", "pair_coupling_rates", "coupling_rate", "sample_pairs",
           "run_coupling"]


def compose_pair(crop_a: np.ndarray, crop_b: np.ndarray, gap: int = 0
                 ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fig. 3a: image 1 = A | gap | B on black, image 2 = A alone at the same place.

    Crops are square RGB uint8 of one size ``s``; returns (image1, image2, box_a, box_b), boxes
    xyxy pixels (``box_a`` holds in both images).
    """
    s = crop_a.shape[0]
    if crop_a.shape != (s, s, 3) or crop_b.shape != crop_a.shape:
        raise ValueError(f"crops must be square RGB of one size, got {crop_a.shape} and {crop_b.shape}")
    image1 = np.zeros((s, 2 * s + gap, 3), np.uint8)
    image1[:, :s] = crop_a
    image1[:, s + gap:] = crop_b
    image2 = np.zeros_like(image1)
    image2[:, :s] = crop_a
    return (image1, image2, np.array([0, 0, s, s], np.float32),
            np.array([s + gap, 0, 2 * s + gap, s], np.float32))


def pair_coupling_cosines(model: nn.Module, crops_a: Sequence[np.ndarray], crops_b: Sequence[np.ndarray],
                          *, gap: int = 0, stages: Sequence[str] = STAGES, batch_size: int = 8,
                          device=None, progress: bool = False) -> Dict[str, Dict[str, np.ndarray]]:
    """The three cosines of every pair ``(crops_a[i], crops_b[i])`` per stage.

    ``{stage: {"a1_b": (P,), "a2_b": (P,), "a1_a2": (P,)}}``: cos(f(A1), f(B)), the CR's numerator;
    cos(f(A2), f(B)), its denominator; cos(f(A1), f(A2)), how far B moved A's own feature. Since a
    cosine is at most 1, a pair's CR is at most ``1 / cos(A2, B)`` where that cosine is positive (as
    for ResNet stages, which end in a ReLU): features that are nearly parallel for objects of
    different classes leave the CR no room to exceed 1, however much B moves A.
    """
    if len(crops_a) != len(crops_b) or not len(crops_a):
        raise ValueError(f"need as many A crops as B crops, at least one; got {len(crops_a)} and {len(crops_b)}")
    device = model_device(model, device)
    mean, std = model_mean_std(model)
    cos: Dict[str, Dict[str, list]] = {s: {"a1_b": [], "a2_b": [], "a1_a2": []} for s in stages}
    with torch.inference_mode():
        for start in tqdm(range(0, len(crops_a), batch_size), desc="coupling rate", disable=not progress):
            images, rois = [], []
            for a, b in zip(crops_a[start:start + batch_size], crops_b[start:start + batch_size]):
                im1, im2, box_a, box_b = compose_pair(a, b, gap)
                n = len(images)
                images += [to_tensor(im1, mean, std), to_tensor(im2, mean, std)]
                # rows per pair: A in image 1, B in image 1, A in image 2
                rois += [[n, *box_a], [n, *box_b], [n + 1, *box_a]]
            x = torch.stack(images).to(device)
            rois_t = torch.tensor(rois, dtype=torch.float32, device=device)
            feats = stage_region_features(model, x, rois_t, crops_a[0].shape[0], stages)
            for s in stages:
                f = feats[s].float().view(-1, 3, feats[s].shape[1])
                a1, b, a2 = f[:, 0], f[:, 1], f[:, 2]
                for name, u, v in (("a1_b", a1, b), ("a2_b", a2, b), ("a1_a2", a1, a2)):
                    cos[s][name].append(F.cosine_similarity(u, v, dim=1).cpu().numpy())
    return {s: {name: np.concatenate(v) for name, v in c.items()} for s, c in cos.items()}


def pair_coupling_rates(model: nn.Module, crops_a: Sequence[np.ndarray], crops_b: Sequence[np.ndarray],
                        **kw) -> Dict[str, np.ndarray]:
    """Coupling rate of every pair ``(crops_a[i], crops_b[i])`` per stage -> ``{stage: (P,)}``."""
    return _rates(pair_coupling_cosines(model, crops_a, crops_b, **kw))


def _rates(cos: Dict[str, Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
    """Per-pair CR from the cosines of ``pair_coupling_cosines``: cos(A1, B) / cos(A2, B)."""
    return {s: c["a1_b"] / c["a2_b"] for s, c in cos.items()}


def coupling_rate(model: nn.Module, crops_a: Sequence[np.ndarray], crops_b: Sequence[np.ndarray],
                  **kw) -> Dict[str, float]:
    """Mean coupling rate over pairs per stage (Sec. 3.1, Fig. 3b); ideal 1."""
    return {s: float(v.mean()) for s, v in pair_coupling_rates(model, crops_a, crops_b, **kw).items()}


def sample_pairs(labels: Sequence[int], num_pairs: int, rng: np.random.Generator) -> np.ndarray:
    """``(num_pairs, 2)`` indices into ``labels``: A uniform, B uniform among other classes."""
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        raise ValueError("the coupling rate needs objects of at least 2 classes (A and B differ); "
                         "use a dataset with more categories or lower --min-object-size")
    a = rng.integers(0, len(labels), size=num_pairs)
    b = np.empty_like(a)
    for p, i in enumerate(a):
        others = np.flatnonzero(labels != labels[i])
        b[p] = others[rng.integers(len(others))]
    return np.stack([a, b], axis=1)


def run_coupling(model: nn.Module, ann, images, *, num_pairs: int = 100, object_size: int = 224,
                 gap: int = 0, min_object_size: float = 32, seed: int = 0, batch_size: int = 8,
                 device=None, progress: bool = True) -> dict:
    """Coupling rate per stage over ``num_pairs`` seeded pairs of ground-truth objects of ``ann``,
    with the mean cosines it is the ratio of (``per_stage_cosines``) and the largest mean CR those
    cosines allow (``per_stage_max_rate``, the mean of each pair's ``1 / cos(A2, B)``)."""
    if num_pairs < 1 or batch_size < 1 or object_size < 32 or gap < 0:
        raise ValueError(f"need num_pairs >= 1, batch_size >= 1, object_size >= 32 and gap >= 0, got "
                         f"num_pairs={num_pairs}, batch_size={batch_size}, object_size={object_size}, gap={gap}")
    if object_size % 32 or gap % 32:
        raise ValueError(f"object_size ({object_size}) and gap ({gap}) must be multiples of 32 (the C5 "
                         f"stride) so every box lies on each stage's grid")
    objects, candidates = load_objects_of_min_size(ann, images, min_object_size)
    labels = [int(objects.images[i].objects.labels[j]) for i, j in candidates]
    pairs = sample_pairs(labels, num_pairs, np.random.default_rng(seed))

    def crop(c):
        i, j = candidates[c]
        return crop_object(objects.images[i], objects.images[i].objects.boxes[j], object_size)

    with eval_mode(model):
        cos = pair_coupling_cosines(model, [crop(a) for a, _ in pairs], [crop(b) for _, b in pairs],
                                    gap=gap, batch_size=batch_size, device=device, progress=progress)
    rates = _rates(cos)
    return {
        "metric": "coupling_rate",
        "per_stage": {s: float(v.mean()) for s, v in rates.items()},
        "per_stage_std": {s: float(v.std()) for s, v in rates.items()},
        # the mean cosines behind the rate (see pair_coupling_cosines): CR <= 1 / cos(A2, B) per pair
        "per_stage_cosines": {s: {name: float(v.mean()) for name, v in c.items()} for s, c in cos.items()},
        "per_stage_max_rate": {s: float((1 / c["a2_b"]).mean()) for s, c in cos.items()},
        "num_pairs": int(len(pairs)), "distinct_objects": int(len(np.unique(pairs))),
        "object_size": object_size, "gap": gap, "min_object_size": min_object_size, "seed": seed,
        "objects_below_min_size": objects.num_objects - len(candidates),
        "skips": objects.skips, "clipped_boxes": objects.clipped_boxes,
    }
