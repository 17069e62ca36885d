"""The one box convention of the package and the one RoIAlign helper.

Inside the code every box is ``xyxy`` in input-image pixels, float. Boxes come either as a
list with one ``(Ni, 4)`` tensor per image or as one ``(N, 5)`` tensor whose first column is
the batch index (torchvision's RoI format). Conversion to other conventions happens at the
edges only (COCO ``xywh`` readers, detectron2 export).
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import Tensor
from torchvision.ops import roi_align

BoxesLike = Union[Tensor, Sequence[Tensor]]

__all__ = ["BoxesLike", "ROI_ALIGN_MAX_ELEMENTS", "validate_boxes", "check_rois_in_image", "boxes_to_rois",
           "region_align", "region_align_pooled"]

#: The most output elements one torchvision ``roi_align`` call produces. Its CPU kernel indexes the
#: output with 32-bit integers and crashes the process (SIGSEGV) past 2**31 elements, e.g. 45,000
#: boxes x 256 channels x 14 x 14; :func:`region_align` pools more RoIs than this allows in several
#: calls. 2**28 float32 elements are 1 GiB, more than a pre-training step pools (512 RoIs x 1024
#: channels x 14 x 14 per process), so training makes one call as before.
ROI_ALIGN_MAX_ELEMENTS = 2 ** 28


def _check_box_tensor(b: Tensor, what: str, width: int) -> None:
    if not isinstance(b, Tensor):
        raise ValueError(f"{what} must be a torch.Tensor, got {type(b).__name__}")
    if not torch.is_floating_point(b):
        raise ValueError(
            f"{what} must be a floating point tensor (xyxy pixels), got dtype {b.dtype}; "
            f"convert with boxes.float()")
    if b.dim() != 2 or b.shape[1] != width:
        raise ValueError(f"{what} must have shape (N, {width}), got {tuple(b.shape)}")
    if not torch.isfinite(b).all():
        raise ValueError(f"{what} contains NaN or infinite coordinates")
    xy = b[:, -4:]
    bad = (xy[:, 2] < xy[:, 0]) | (xy[:, 3] < xy[:, 1])
    if bad.any():
        i = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"{what} row {i} has negative size (x2 < x1 or y2 < y1): {xy[i].tolist()}; "
            f"boxes must be xyxy pixels")


def validate_boxes(boxes: BoxesLike, batch_size: int) -> None:
    """Raise ``ValueError`` naming the problem if ``boxes`` does not follow the convention."""
    if isinstance(boxes, Tensor):
        _check_box_tensor(boxes, "boxes", 5)
        if boxes.numel():
            idx = boxes[:, 0]
            if (idx != idx.round()).any() or idx.min() < 0 or idx.max() >= batch_size:
                raise ValueError(
                    f"boxes[:, 0] must hold integer batch indices in [0, {batch_size - 1}]")
        return
    if not isinstance(boxes, (list, tuple)):
        raise ValueError(
            f"boxes must be a list of (Ni, 4) tensors or one (N, 5) tensor, got {type(boxes).__name__}")
    if len(boxes) != batch_size:
        raise ValueError(f"got {len(boxes)} box lists for a batch of {batch_size} images; give one per image")
    for i, b in enumerate(boxes):
        _check_box_tensor(b, f"boxes[{i}]", 4)


def check_rois_in_image(rois: Tensor, height: int, width: int) -> None:
    """Raise ``ValueError`` for a RoI of zero size or entirely outside the ``width`` x ``height``
    input: RoIAlign would return all zeros for it, an embedding that means nothing."""
    xy = rois[:, 1:]
    empty = (xy[:, 2] <= xy[:, 0]) | (xy[:, 3] <= xy[:, 1])
    outside = (xy[:, 2] <= 0) | (xy[:, 3] <= 0) | (xy[:, 0] >= width) | (xy[:, 1] >= height)
    bad = empty | outside
    if bad.any():
        i = int(bad.nonzero()[0, 0])
        what = "has zero size" if empty[i] else "lies entirely outside"
        raise ValueError(
            f"box {i} (image {int(rois[i, 0])} of the batch) {xy[i].tolist()} {what} the {width}x{height} "
            f"(width x height) input; boxes are xyxy pixels of the input: drop or fix that box")


def boxes_to_rois(boxes: BoxesLike, batch_size: int, device=None, dtype=torch.float32) -> Tensor:
    """Validate and convert ``boxes`` to one ``(N, 5)`` RoI tensor (batch index first)."""
    validate_boxes(boxes, batch_size)
    if isinstance(boxes, Tensor):
        return boxes.to(device=device, dtype=dtype)
    rois = [
        torch.cat([torch.full((b.shape[0], 1), float(i), dtype=dtype, device=device),
                   b.to(device=device, dtype=dtype)], dim=1)
        for i, b in enumerate(boxes)
    ]
    if not rois:
        return torch.zeros(0, 5, dtype=dtype, device=device)
    return torch.cat(rois, dim=0)


def batched_rois(boxes: Tensor) -> Tensor:
    """``(B, K, 4)`` xyxy boxes -> ``(B*K, 5)`` RoIs (batch index first) in one op, without validation.

    For the training step, whose boxes the data pipeline validated on the CPU
    (:class:`d3ssl_zoo.data.PretrainCollator`): checking them again on the device would cost a host
    sync per image.
    """
    b, k = boxes.shape[:2]
    index = torch.arange(b, device=boxes.device, dtype=boxes.dtype).repeat_interleave(k)
    return torch.cat([index[:, None], boxes.reshape(b * k, 4)], dim=1)


def region_align(features: Tensor, rois: Tensor, output_size: int, stride: int) -> Tensor:
    """RoIAlign of ``(N, 5)`` pixel RoIs on a feature map of the given ``stride``.

    ``aligned=True`` (half-pixel correct, as detectron2's ROIAlignV2) and ``sampling_ratio=0``
    (adaptive), the settings of SoCo's C4 head and of Mask R-CNN. The result has the dtype of
    ``features``. Any number of RoIs: more than :data:`ROI_ALIGN_MAX_ELEMENTS` output elements are
    pooled in several calls, with the same result.
    """
    # Pool in float32: half-precision RoI coordinates would round boxes by up to a pixel or more.
    feats, rois = features.float(), rois.float()
    per_call = max(1, ROI_ALIGN_MAX_ELEMENTS // (feats.shape[1] * output_size ** 2))
    if rois.shape[0] <= per_call:
        out = _roi_align(feats, rois, output_size, stride)
    else:  # each RoI is pooled independently: the calls' outputs, stacked, are the one call's
        out = feats.new_empty(rois.shape[0], feats.shape[1], output_size, output_size)
        for start in range(0, rois.shape[0], per_call):
            out[start:start + per_call] = _roi_align(feats, rois[start:start + per_call], output_size, stride)
    return out.to(features.dtype)


def _roi_align(features: Tensor, rois: Tensor, output_size: int, stride: int) -> Tensor:
    return roi_align(features, rois, output_size=output_size, spatial_scale=1.0 / stride, sampling_ratio=0,
                     aligned=True)


def _bin_weights(start: Tensor, length: Tensor, output_size: int, size: int) -> Tensor:
    """Per-RoI weights (N, size) of one axis such that RoIAlign followed by averaging over the
    output bins equals a weighted sum of the feature map along that axis.

    The same sample points, bounds and edge clamping as torchvision's RoIAlign kernel
    (``aligned=True``, ``sampling_ratio=0``: ceil(length / output_size) samples per bin), whose
    bilinear weights factor into one y part and one x part.
    """
    grid = torch.ceil(length / output_size).clamp(min=0)  # samples per bin along this axis
    g_max = max(int(grid.max().item()) if grid.numel() else 1, 1)
    bin_size = (length / output_size)[:, None, None]
    p = torch.arange(output_size, dtype=start.dtype, device=start.device)[None, :, None]
    i = torch.arange(g_max, dtype=start.dtype, device=start.device)[None, None, :]
    g = grid.clamp(min=1)[:, None, None]
    pos = start[:, None, None] + p * bin_size + (i + 0.5) * bin_size / g  # (N, bins, samples)
    valid = (i < grid[:, None, None]) & (pos >= -1.0) & (pos <= size)
    pos = pos.clamp(min=0)
    low = pos.floor()
    at_edge = low >= size - 1
    low = torch.where(at_edge, torch.full_like(low, size - 1), low)
    pos = torch.where(at_edge, low, pos)
    frac = pos - low
    high = torch.where(at_edge, low, low + 1)
    w = torch.zeros(start.shape[0], size, dtype=start.dtype, device=start.device)
    scale = valid.to(start.dtype) / (g * output_size)
    w.scatter_add_(1, low.long().flatten(1), ((1 - frac) * scale).flatten(1))
    w.scatter_add_(1, high.long().flatten(1), (frac * scale).flatten(1))
    return w


def region_align_pooled(features: Tensor, rois: Tensor, output_size: int, stride: int) -> Tensor:
    """``region_align(...).mean((2, 3))`` -> (N, C), computed exactly without the RoI maps.

    Averaging RoIAlign's bins is a separable weighted sum of the feature map, so one small
    matrix product per image replaces the per-bin sampling: the O-KNN features of many boxes
    cost little more than the forward pass (benchmarks/bench_models.py).
    """
    n, c = rois.shape[0], features.shape[1]
    out = features.new_zeros(n, c, dtype=torch.float32)
    if n == 0:
        return out.to(features.dtype)
    rois = rois.float()
    h, w = features.shape[-2:]
    scale = 1.0 / stride
    x1, y1 = rois[:, 1] * scale - 0.5, rois[:, 2] * scale - 0.5  # aligned=True: half-pixel offset
    wy = _bin_weights(y1, rois[:, 4] * scale - 0.5 - y1, output_size, h)
    wx = _bin_weights(x1, rois[:, 3] * scale - 0.5 - x1, output_size, w)
    batch = rois[:, 0].long()
    for b in batch.unique().tolist():
        sel = (batch == b).nonzero().squeeze(1)
        weights = (wy[sel, :, None] * wx[sel, None, :]).flatten(1)  # (n_b, h * w)
        out[sel] = weights @ features[b].float().flatten(1).t()
    return out.to(features.dtype)
