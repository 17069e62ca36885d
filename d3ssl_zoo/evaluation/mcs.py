"""Positional mean cosine similarity (MCS), paper Sec. 3.2 and Fig. 4, Tab. 7.

One object crop is tiled 3x3; per stage, MCS is the mean cosine similarity between the centre
tile's feature and the 8 others, averaged over crops. The tiles are identical, so any
difference comes from where they are (zero padding leaks position): ideal 1. f is the mean of
the stage's feature cells inside the tile (``stage_region_features``).
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

__all__ = ["tile_3x3", "crop_mcs", "positional_mcs", "run_mcs"]

CENTRE = 4


def tile_3x3(crop: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Fig. 4a: the crop repeated in a 3x3 grid -> (image, boxes (9, 4) xyxy, row-major; 4 = centre)."""
    s = crop.shape[0]
    if crop.ndim != 3 or crop.shape[1] != s or crop.shape[2] != 3:
        raise ValueError(f"crop must be square RGB, got shape {crop.shape}")
    boxes = np.array([[c * s, r * s, (c + 1) * s, (r + 1) * s] for r in range(3) for c in range(3)],
                     np.float32)
    return np.tile(crop, (3, 3, 1)), boxes


def crop_mcs(model: nn.Module, crops: Sequence[np.ndarray], *, stages: Sequence[str] = STAGES,
             batch_size: int = 8, device=None, progress: bool = False) -> Dict[str, np.ndarray]:
    """MCS of every crop per stage -> ``{stage: (num_crops,)}``."""
    if not len(crops):
        raise ValueError("positional MCS needs at least one crop")
    device = model_device(model, device)
    mean, std = model_mean_std(model)
    out: Dict[str, list] = {s: [] for s in stages}
    others = [i for i in range(9) if i != CENTRE]
    with torch.inference_mode():
        for start in tqdm(range(0, len(crops), batch_size), desc="positional MCS", disable=not progress):
            images, rois = [], []
            for n, crop in enumerate(crops[start:start + batch_size]):
                image, boxes = tile_3x3(crop)
                images.append(to_tensor(image, mean, std))
                rois.append(np.concatenate([np.full((9, 1), n, np.float32), boxes], axis=1))
            x = torch.stack(images).to(device)
            rois_t = torch.from_numpy(np.concatenate(rois)).to(device)
            feats = stage_region_features(model, x, rois_t, crops[0].shape[0], stages)
            for s in stages:
                f = feats[s].float().view(-1, 9, feats[s].shape[1])
                sim = F.cosine_similarity(f[:, CENTRE:CENTRE + 1], f[:, others], dim=2)
                out[s].append(sim.mean(dim=1).cpu().numpy())
    return {s: np.concatenate(v) for s, v in out.items()}


def positional_mcs(model: nn.Module, crops: Sequence[np.ndarray], **kw) -> Dict[str, float]:
    """Mean over crops of the positional MCS per stage (Sec. 3.2, Fig. 4b); ideal 1."""
    return {s: float(v.mean()) for s, v in crop_mcs(model, crops, **kw).items()}


def run_mcs(model: nn.Module, ann, images, *, num_crops: int = 100, tile_size: int = 224,
            min_object_size: float = 32, seed: int = 0, batch_size: int = 8, device=None,
            progress: bool = True) -> dict:
    """Positional MCS per stage over ``num_crops`` seeded ground-truth objects of ``ann``."""
    if num_crops < 1 or batch_size < 1 or tile_size < 32:
        raise ValueError(f"need num_crops >= 1, batch_size >= 1 and tile_size >= 32, got num_crops={num_crops}, "
                         f"batch_size={batch_size}, tile_size={tile_size}")
    if tile_size % 32:
        raise ValueError(f"tile_size ({tile_size}) must be a multiple of 32 (the C5 stride) so every "
                         f"tile lies on each stage's grid")
    objects, candidates = load_objects_of_min_size(ann, images, min_object_size)
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(candidates), size=num_crops, replace=num_crops > len(candidates))
    crops = []
    for c in picks:
        i, j = candidates[c]
        crops.append(crop_object(objects.images[i], objects.images[i].objects.boxes[j], tile_size))
    with eval_mode(model):
        mcs = crop_mcs(model, crops, batch_size=batch_size, device=device, progress=progress)
    return {
        "metric": "positional_mcs",
        "per_stage": {s: float(v.mean()) for s, v in mcs.items()},
        "per_stage_std": {s: float(v.std()) for s, v in mcs.items()},
        "num_crops": int(num_crops), "distinct_objects": int(len(np.unique(picks))),
        "tile_size": tile_size, "min_object_size": min_object_size, "seed": seed,
        "objects_below_min_size": objects.num_objects - len(candidates),
        "skips": objects.skips, "clipped_boxes": objects.clipped_boxes,
    }
