"""The mini ladder's supervised ceiling: the same backbone trained *with* the labels.

Self-supervised numbers on a small dataset mean little without the two ends of the scale: the
random initialisation (floor) and the backbone trained on the labelled train split with the
very features O-KNN reads (ceiling). :func:`train_roi_classifier` trains a backbone + linear
classifier on ground-truth boxes through RoIAlign 7x7 on C5 + average pooling (the O-KNN feature,
before L2 normalisation), at the O-KNN image scale, with horizontal flips.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from d3ssl_zoo.evaluation.features import model_mean_std, region_features, stage_maps
from d3ssl_zoo.evaluation.objects import (
    load_coco_objects,
    read_image,
    resized_size,
    scale_boxes,
    to_tensor,
)

__all__ = ["train_roi_classifier"]


def train_roi_classifier(model: nn.Module, ann, images, *, steps: int = 120, batch_size: int = 16,
                         lr: float = 0.05, weight_decay: float = 1e-4, short_side: int = 512, seed: int = 0,
                         progress: bool = True) -> dict:
    """Train ``model`` in place (SGD, cosine lr) to classify the ground-truth objects of ``ann``.

    Each step takes ``batch_size`` images of one resized size (random order, random flips) and
    every object in them. Returns ``{"steps", "final_loss", "train_accuracy"}`` of the last 20 steps.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"need steps >= 1 and batch_size >= 1, got steps={steps}, batch_size={batch_size}")
    objects = load_coco_objects(ann, images)
    num_classes = len(objects.class_names)
    mean, std = model_mean_std(model)
    device = next(model.parameters()).device
    feat_dim = stage_maps(model.eval(), torch.zeros(1, 3, 64, 64, device=device), ("layer4",))["layer4"].shape[1]
    head = nn.Linear(feat_dim, num_classes).to(device)
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    rng = np.random.default_rng(seed)
    by_size: dict = {}
    for i, r in enumerate(objects.images):  # equal-size batches: no padding changes the features
        by_size.setdefault(resized_size(r.height, r.width, short_side), []).append(i)
    groups = list(by_size.values())
    weights = np.array([len(g) for g in groups], np.float64)
    model.train()
    losses, correct, seen = [], 0, 0
    for step in tqdm(range(steps), desc="supervised ceiling", disable=not progress):
        group = groups[int(rng.choice(len(groups), p=weights / weights.sum()))]
        idx = rng.choice(group, size=min(batch_size, len(group)), replace=False)
        xs, rois, labels = [], [], []
        for n, r in enumerate(objects.images[i] for i in idx):
            img = read_image(r, resized_size(r.height, r.width, short_side))
            boxes = scale_boxes(r.objects.boxes, (r.height, r.width), img.shape[:2])
            if rng.random() < 0.5:
                img = np.ascontiguousarray(img[:, ::-1])
                boxes = np.stack([img.shape[1] - boxes[:, 2], boxes[:, 1], img.shape[1] - boxes[:, 0], boxes[:, 3]], 1)
            xs.append(to_tensor(img, mean, std))
            rois.append(np.concatenate([np.full((len(boxes), 1), n, np.float32), boxes], 1))
            labels.append(r.objects.labels)
        x = torch.stack(xs).to(device)
        rois_t = torch.from_numpy(np.concatenate(rois)).float().to(device)
        y = torch.from_numpy(np.concatenate(labels)).to(device)
        c5 = stage_maps(model, x, ("layer4",))["layer4"]
        logits = head(region_features(c5, rois_t, round(x.shape[-1] / c5.shape[-1]), 7))
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step >= steps - 20:
            losses.append(float(loss.detach()))
            correct += int((logits.argmax(1) == y).sum())
            seen += int(y.numel())
    model.eval()
    return {"steps": steps, "final_loss": float(np.mean(losses)), "train_accuracy": 100.0 * correct / max(seen, 1)}
