"""Object-level kNN (O-KNN) and disturbed O-KNN, paper Sec. 5.3 and Tab. 4.

Object features: RoIAlign 7x7 on C5 of ground-truth boxes, average pool, L2-normalise.
Bank: ``N`` objects per training image, picked to balance the classes (the paper gives no N;
ours: 1). Queries: every object of the evaluation split. Prediction: DINO's weighted kNN vote
(k=20, T=0.07: ours, the paper gives neither). Disturbed O-KNN: everything outside the selected
boxes of each image (bank: the N chosen; queries: all) is replaced by another image of the same
split, drawn at random from ``seed``.

Features are extracted in batches of equal-size images and written to an on-disk cache in
shards, so a killed run resumes at the first missing shard; the kNN search streams the bank
shard by shard, so memory stays bounded for a COCO-sized (860k-object) bank.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import defaultdict
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from d3ssl_zoo.boxes import boxes_to_rois
from d3ssl_zoo.data.coco_json import CocoObjects, ImageRecord
from d3ssl_zoo.evaluation.features import (
    c4_head_region_features,
    c5_region_features,
    eval_mode,
    model_device,
    model_fingerprint,
    model_mean_std,
)
from d3ssl_zoo.evaluation.objects import load_coco_objects, read_image, resized_size, scale_boxes, to_tensor

__all__ = ["select_bank_objects", "replacement_indices", "disturb", "knn_topk", "weighted_vote",
           "topk_accuracy", "extract_object_features", "iter_shards", "run_oknn"]

_CACHE_VERSION = 1
# Object features: "c5" is the paper's O-KNN read (Sec. 5.3); "c4_head:<roi size>" the pre-training
# path (RoIAlign on C4 -> res5), a diagnostic.
FEATURES = ("c5", "c4_head:<roi size>")


def _feature_fn(features: str):
    if features == "c5":
        return c5_region_features
    name, _, size = features.partition(":")
    if name == "c4_head" and size.isdigit() and int(size) > 0:
        return lambda model, x, rois: c4_head_region_features(model, x, rois, int(size))
    raise ValueError(f"unknown O-KNN features {features!r}; use one of {', '.join(FEATURES)} (e.g. c4_head:14)")


def select_bank_objects(labels: Sequence[np.ndarray], objects_per_image: int,
                        rng: np.random.Generator) -> List[np.ndarray]:
    """Indices of the bank objects of each image (Sec. 5.3: N per image, balanced over classes).

    Images are visited in random order; each takes, ``objects_per_image`` times, an object of
    the class with the fewest bank objects so far among its remaining ones (ties at random).
    ``objects_per_image=0`` keeps every object.
    """
    if objects_per_image < 0:
        raise ValueError(f"objects_per_image must be >= 0 (0 = all objects), got {objects_per_image}")
    if objects_per_image == 0:
        return [np.arange(len(lab)) for lab in labels]
    counts: Dict[int, int] = defaultdict(int)
    chosen: List[np.ndarray] = [np.zeros(0, np.int64)] * len(labels)
    for i in rng.permutation(len(labels)):
        remaining = list(range(len(labels[i])))
        picked = []
        for _ in range(min(objects_per_image, len(remaining))):
            need = np.array([counts[int(labels[i][j])] for j in remaining], np.float64)
            best = np.flatnonzero(need == need.min())
            j = remaining.pop(int(best[rng.integers(len(best))]))
            counts[int(labels[i][j])] += 1
            picked.append(j)
        chosen[i] = np.sort(np.asarray(picked, np.int64))
    return chosen


def replacement_indices(num_images: int, rng: np.random.Generator) -> np.ndarray:
    """For each image, a uniformly drawn *other* image of the split (disturbed O-KNN background)."""
    if num_images < 2:
        raise ValueError(f"disturbed O-KNN needs at least 2 images per split to replace backgrounds, "
                         f"got {num_images}")
    r = rng.integers(0, num_images - 1, size=num_images)
    return r + (r >= np.arange(num_images))


def disturb(image: np.ndarray, boxes: np.ndarray, replacement: np.ndarray) -> np.ndarray:
    """Keep ``image`` inside ``boxes`` (xyxy pixels, any pixel they touch) and take every other
    pixel from ``replacement`` (same size): the disturbed O-KNN input of Sec. 5.3."""
    if replacement.shape != image.shape:
        raise ValueError(f"replacement image shape {replacement.shape} != image shape {image.shape}")
    keep = np.zeros(image.shape[:2], bool)
    for x1, y1, x2, y2 in np.asarray(boxes, np.float64):
        keep[int(np.floor(y1)):int(np.ceil(y2)), int(np.floor(x1)):int(np.ceil(x2))] = True
    return np.where(keep[..., None], image, replacement)


def knn_topk(queries: Tensor, bank_chunks: Iterable[Tuple[Tensor, Tensor]], k: int,
             query_block: int = 512, device=None) -> Tuple[Tensor, Tensor]:
    """Cosine top-``k`` neighbours of L2-normalised ``queries`` over a bank given in chunks.

    Each chunk ``(features (n, D), labels (n,))`` is read once; the running top-k is merged per
    chunk, so memory is one chunk plus ``query_block x n`` similarities. Returns similarities
    and labels of the neighbours, ``(Q, k)`` each, sorted by decreasing similarity, on
    ``device`` (default: the queries'), where the search runs.
    """
    q = queries.to(device=device, dtype=torch.float32)
    sims = torch.full((q.shape[0], k), -float("inf"), device=q.device)
    labels = torch.full((q.shape[0], k), -1, dtype=torch.long, device=q.device)
    seen = 0
    for feats, lab in bank_chunks:
        feats, lab = feats.to(device=q.device, dtype=torch.float32), lab.to(device=q.device, dtype=torch.long)
        seen += feats.shape[0]
        for s in range(0, q.shape[0], query_block):
            block = q[s:s + query_block] @ feats.T
            top = block.topk(min(k, block.shape[1]), dim=1)
            cat_s = torch.cat([sims[s:s + query_block], top.values], dim=1)
            cat_l = torch.cat([labels[s:s + query_block], lab[top.indices]], dim=1)
            best = cat_s.topk(k, dim=1)
            sims[s:s + query_block] = best.values
            labels[s:s + query_block] = cat_l.gather(1, best.indices)
    if seen < k:
        raise ValueError(f"the bank has {seen} objects, fewer than k={k}; lower --k or use more "
                         f"objects per training image")
    return sims, labels


def weighted_vote(sims: Tensor, labels: Tensor, num_classes: int, temperature: float) -> Tensor:
    """DINO's weighted kNN vote: class score = sum over neighbours of that class of exp(sim / T)."""
    weights = (sims / temperature).exp()
    return weights.new_zeros(sims.shape[0], num_classes).scatter_add_(1, labels, weights)


def topk_accuracy(scores: Tensor, targets: Tensor, ks: Sequence[int] = (1, 5)) -> Dict[int, float]:
    """Percent of rows whose target is among the ``k`` highest scores, for each ``k``."""
    order = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices
    hit = order == targets.to(order.device).view(-1, 1)
    return {k: 100.0 * hit[:, :k].any(dim=1).float().mean().item() for k in ks}


class _ObjectImages(Dataset):
    """Resized (and optionally disturbed) images with their selected boxes scaled along."""

    def __init__(self, records: List[ImageRecord], selection: List[np.ndarray], short_side: int,
                 replacements: Optional[np.ndarray], mean, std):
        self.records, self.selection, self.short_side = records, selection, short_side
        self.replacements, self.mean, self.std = replacements, mean, std

    def size(self, i: int) -> Tuple[int, int]:
        r = self.records[i]
        return resized_size(r.height, r.width, self.short_side)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        r, sel, hw = self.records[i], self.selection[i], self.size(i)
        img = read_image(r, hw)
        boxes = scale_boxes(r.objects.boxes[sel], (r.height, r.width), hw)
        if self.replacements is not None:
            img = disturb(img, boxes, read_image(self.records[int(self.replacements[i])], hw))
        return to_tensor(img, self.mean, self.std), torch.from_numpy(boxes), torch.from_numpy(r.objects.labels[sel])


def _collate(items):
    images, boxes, labels = zip(*items)
    return torch.stack(images), list(boxes), torch.cat(labels)


def _shard_batches(ds: _ObjectImages, indices: np.ndarray, batch_size: int) -> List[List[int]]:
    by_size: Dict[Tuple[int, int], List[int]] = defaultdict(list)
    for i in indices:
        by_size[ds.size(int(i))].append(int(i))
    return [g[s:s + batch_size] for g in by_size.values() for s in range(0, len(g), batch_size)]


def _cache_key(model: nn.Module, objects: CocoObjects, selection: List[np.ndarray],
               replacements: Optional[np.ndarray], short_side: int, features: str = "c5") -> str:
    tag = "" if features == "c5" else f":{features}"  # c5 keys stay as they were
    h = hashlib.sha256(f"v{_CACHE_VERSION}:{model_fingerprint(model)}:{short_side}{tag}".encode())
    for r, sel in zip(objects.images, selection):
        h.update(f"{r.path}:{r.width}x{r.height}:{r.objects.boxes[sel].tobytes().hex()}:{r.objects.labels[sel].tolist()}".encode())
    if replacements is not None:
        h.update(replacements.tobytes())
    return h.hexdigest()[:20]


def extract_object_features(model: nn.Module, objects: CocoObjects, selection: List[np.ndarray],
                            out_dir: str, *, short_side: int = 512,
                            replacements: Optional[np.ndarray] = None, batch_size: int = 8,
                            shard_images: int = 256, device=None, progress: bool = True,
                            num_workers: int = 0, desc: str = "O-KNN features", features: str = "c5") -> str:
    """Write the O-KNN features of the ``selection`` of each image to shards under ``out_dir``.

    Images are sorted by resized size so batches hold equal-size images (no padding changes
    the features). Shards already on disk are kept, so a killed run resumes. Returns the shard
    folder (keyed by model weights, data, selection and replacements).
    """
    feature_fn = _feature_fn(features)
    device = model_device(model, device)
    mean, std = model_mean_std(model)
    ds = _ObjectImages(objects.images, selection, short_side, replacements, mean, std)
    folder = os.path.join(out_dir, _cache_key(model, objects, selection, replacements, short_side, features))
    os.makedirs(folder, exist_ok=True)
    order = np.array(sorted(range(len(ds)), key=lambda i: (ds.size(i), i)), np.int64)
    shards = [order[s:s + shard_images] for s in range(0, len(order), shard_images)]
    with open(os.path.join(folder, "index.json"), "w") as f:
        json.dump({"num_shards": len(shards), "num_images": len(ds)}, f)
    pending = [s for s in range(len(shards)) if not os.path.exists(_shard_path(folder, s))]
    batches, batch_shard = [], []
    for s in pending:
        for b in _shard_batches(ds, shards[s], batch_size):
            batches.append(b)
            batch_shard.append(s)
    done = len(ds) - sum(len(shards[s]) for s in pending)
    loader = DataLoader(ds, batch_sampler=batches, collate_fn=_collate, num_workers=num_workers)
    feats, labels = [], []
    with torch.inference_mode(), tqdm(total=len(ds), initial=done, desc=desc, unit="img",
                                      disable=not progress) as bar:
        for n, (images, boxes, lab) in enumerate(loader):
            rois = boxes_to_rois(boxes, len(boxes), device=device)
            feats.append(feature_fn(model, images.to(device), rois).half().cpu())
            labels.append(lab)
            bar.update(len(boxes))
            s = batch_shard[n]
            if n + 1 == len(batches) or batch_shard[n + 1] != s:
                _write_shard(folder, s, torch.cat(feats).numpy(), torch.cat(labels).numpy())
                feats, labels = [], []
    return folder


def _shard_path(folder: str, s: int) -> str:
    return os.path.join(folder, f"shard_{s:06d}.npz")


def _write_shard(folder: str, s: int, feats: np.ndarray, labels: np.ndarray) -> None:
    tmp = os.path.join(folder, f".tmp_shard_{s:06d}.npz")
    with open(tmp, "wb") as f:
        np.savez(f, features=feats, labels=labels)
    os.replace(tmp, _shard_path(folder, s))  # atomic: a killed run never leaves a half shard


def iter_shards(folder: str) -> Iterator[Tuple[Tensor, Tensor]]:
    """Stream ``(features float16 (n, D), labels (n,))`` of a feature folder, shard by shard."""
    with open(os.path.join(folder, "index.json")) as f:
        num = json.load(f)["num_shards"]
    for s in range(num):
        with np.load(_shard_path(folder, s)) as z:
            yield torch.from_numpy(z["features"]), torch.from_numpy(z["labels"])


def run_oknn(model: nn.Module, train_ann, train_images, val_ann, val_images, *,
             objects_per_image: int = 1, short_side: int = 512, k: int = 20,
             temperature: float = 0.07, disturbed: bool = False, seed: int = 0,
             batch_size: int = 8, cache_dir: Optional[str] = None, device=None,
             progress: bool = True, num_workers: int = 0, features: str = "c5") -> dict:
    """O-KNN (or disturbed O-KNN) top-1/top-5 accuracy in percent of ``model`` (Sec. 5.3, Tab. 4).

    ``train_*`` give the bank (``objects_per_image`` per image, balanced; 0 = all), ``val_*`` the
    queries (all objects). ``cache_dir`` keeps the extracted features (a rerun or a killed run
    reuses them); without it they live in a temporary folder for the call. ``features``: ``"c5"``
    (the paper's read) or ``"c4_head:<roi size>"`` (the pre-training path, a diagnostic).
    """
    _feature_fn(features)  # a bad name fails before any work
    if k < 1 or temperature <= 0:
        raise ValueError(f"need k >= 1 and temperature > 0, got k={k}, temperature={temperature}")
    if short_side < 1 or batch_size < 1:
        raise ValueError(f"need short_side >= 1 and batch_size >= 1, got short_side={short_side}, "
                         f"batch_size={batch_size}")
    train = load_coco_objects(train_ann, train_images)
    val = load_coco_objects(val_ann, val_images)
    if train.category_ids != val.category_ids:
        raise ValueError(f"{train_ann} and {val_ann} have different category lists; O-KNN labels "
                         f"must mean the same classes in bank and queries")
    bank_sel = select_bank_objects([r.objects.labels for r in train.images], objects_per_image,
                                   np.random.default_rng([seed, 1]))
    query_sel = [np.arange(len(r.objects.labels)) for r in val.images]
    rep_train = rep_val = None
    if disturbed:
        rep_train = replacement_indices(len(train.images), np.random.default_rng([seed, 2]))
        rep_val = replacement_indices(len(val.images), np.random.default_rng([seed, 3]))
    tmp = tempfile.TemporaryDirectory(prefix="d3ssl_oknn_") if cache_dir is None else None
    root = tmp.name if tmp is not None else os.fspath(cache_dir)
    try:
        with eval_mode(model):
            common = dict(short_side=short_side, batch_size=batch_size, device=device, features=features,
                          progress=progress, num_workers=num_workers)
            bank_dir = extract_object_features(model, train, bank_sel, root, replacements=rep_train,
                                               desc="O-KNN bank", **common)
            query_dir = extract_object_features(model, val, query_sel, root, replacements=rep_val,
                                                desc="O-KNN queries", **common)
            q_feats, q_labels = (torch.cat(t) for t in zip(*iter_shards(query_dir)))
            num_classes = len(train.class_names)
            bank_counts = np.zeros(num_classes, np.int64)
            for _, lab in iter_shards(bank_dir):
                bank_counts += np.bincount(lab.numpy(), minlength=num_classes)
            sims, labels = knn_topk(q_feats, iter_shards(bank_dir), k, device=model_device(model, device))
    finally:
        if tmp is not None:
            tmp.cleanup()
    acc = topk_accuracy(weighted_vote(sims, labels, num_classes, temperature), q_labels, (1, 5))
    present = np.unique(q_labels.numpy())
    return {
        "metric": "disturbed_oknn" if disturbed else "oknn", "features": features,
        "top1": acc[1], "top5": acc[5],
        "num_bank": int(bank_counts.sum()), "num_queries": int(q_labels.numel()),
        "num_classes": num_classes, "k": k, "temperature": temperature,
        "objects_per_image": objects_per_image, "short_side": short_side, "seed": seed,
        "bank_per_class": {n: int(c) for n, c in zip(train.class_names, bank_counts)},
        "classes_with_fewer_than_k_bank_objects": [n for n, c in zip(train.class_names, bank_counts) if c < k],
        "queries_of_classes_absent_from_bank": int(np.isin(q_labels.numpy(), np.flatnonzero(bank_counts == 0)).sum()),
        "query_classes": int(len(present)),
        "skips": {"train": train.skips, "val": val.skips},
        "clipped_boxes": {"train": train.clipped_boxes, "val": val.clipped_boxes},
    }
