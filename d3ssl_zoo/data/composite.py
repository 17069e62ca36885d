"""De-positioning composite of Sec. 4.2 (Eq. 6-8).

The per-sample part (:func:`depositioning_masks`: shift ``t``, mask ``m`` of Eq. 6 and the
PRC-cut shifted mask ``m̂`` of Eq. 7) runs in the data workers; the paste onto another image
of the batch (:func:`composite_depositioned`, Eq. 8) runs on the device, in
:func:`d3ssl_zoo.data.prepare_batch`, which has the batch.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .region_aug import boxes_pixels, prc_cut_mask

__all__ = ["foreground_mask", "shift_mask", "depositioning_masks", "composite_depositioned"]


def foreground_mask(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Eq. 6: ``m(i, j) = 1`` inside the union of the boxes, 0 elsewhere."""
    m = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in boxes_pixels(boxes, height, width):
        m[y0:y1, x0:x1] = True
    return m


def _depositioning_shift(boxes: np.ndarray, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """One integer shift ``t = (tx, ty)`` for all boxes of the image, uniform among the shifts
    that keep every ``b̂ = b + t`` inside the image (Sec. 4.2). Integer so the paste is exact."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    lo_x, hi_x = -int(np.floor(b[:, 0].min())), int(np.floor(width - b[:, 2].max()))
    lo_y, hi_y = -int(np.floor(b[:, 1].min())), int(np.floor(height - b[:, 3].max()))
    tx = int(rng.integers(lo_x, max(hi_x, lo_x) + 1))
    ty = int(rng.integers(lo_y, max(hi_y, lo_y) + 1))
    return np.array([tx, ty], dtype=np.int64)


def shift_mask(m: np.ndarray, t) -> np.ndarray:
    """Translate a mask by integer ``t = (tx, ty)``; what leaves the image is dropped."""
    tx, ty = int(t[0]), int(t[1])
    h, w = m.shape
    out = np.zeros_like(m)
    out[max(ty, 0):min(h + ty, h), max(tx, 0):min(w + tx, w)] = \
        m[max(-ty, 0):min(h - ty, h), max(-tx, 0):min(w - tx, w)]
    return out


def depositioning_masks(boxes: np.ndarray, height: int, width: int, rng: np.random.Generator, *,
                        prc_rule: str = "area", side_range=(0.2, 0.5), max_cover: float = 0.5):
    """Eq. 6-7 for one view: returns ``(m, m_hat, t)``.

    ``m`` = foreground mask of ``boxes``; ``t`` = the shift; ``m̂ = PRC(shift(m, t), b + t)``, PRC
    by the same function and rule as the views' (:func:`~d3ssl_zoo.data.region_aug.prc_cut_mask`,
    its own draw of ``s``).
    """
    m = foreground_mask(boxes, height, width)
    t = _depositioning_shift(boxes, height, width, rng)
    shifted_boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) + np.tile(t, 2)
    cut = prc_cut_mask(shifted_boxes, height, width, rng, rule=prc_rule, side_range=side_range,
                       max_cover=max_cover)
    m_hat = shift_mask(m, t)
    np.greater(m_hat, cut, out=m_hat)  # m_hat & ~cut, in place
    return m, m_hat, t


def composite_depositioned(x2: Tensor, m: Tensor, x_b: Tensor, m_hat: Tensor, t: Tensor) -> Tensor:
    """Eq. 8: ``x3 = C(x2, m, x_b, m̂)``.

    The foreground of ``x2`` (``m``) is moved by ``t`` and pasted onto the background image
    ``x_b`` where the shifted, PRC-cut mask ``m̂`` is set; elsewhere ``x3 = x_b``. What the
    shift brings in from outside ``x2`` or from outside ``m`` is 0.
    Shapes: ``x2``, ``x_b`` ``(B, C, H, W)``; ``m``, ``m_hat`` ``(B, H, W)`` bool; ``t`` ``(B, 2)``
    integer ``(tx, ty)``. One gather for the whole batch (no loop over images), on any device.
    """
    if x2.shape != x_b.shape or m.shape != m_hat.shape or m.shape != (x2.shape[0],) + x2.shape[2:]:
        raise ValueError(f"composite_depositioned: shapes do not match: x2 {tuple(x2.shape)}, x_b "
                         f"{tuple(x_b.shape)}, m {tuple(m.shape)}, m_hat {tuple(m_hat.shape)}")
    if t.shape != (x2.shape[0], 2):
        raise ValueError(f"composite_depositioned: t must be (B, 2) = {(x2.shape[0], 2)} integer shifts (tx, ty), "
                         f"got {tuple(t.shape)}")
    b, c, h, w = x2.shape
    t = t.to(device=x2.device, dtype=torch.long)
    # the pixel of x2 that lands on (y, x) is (y - ty, x - tx)
    src_y = torch.arange(h, device=x2.device) - t[:, 1:2]  # (B, H)
    src_x = torch.arange(w, device=x2.device) - t[:, 0:1]  # (B, W)
    inside = (((src_y >= 0) & (src_y < h))[:, :, None] & ((src_x >= 0) & (src_x < w))[:, None, :])
    flat = (src_y.clamp(0, h - 1)[:, :, None] * w + src_x.clamp(0, w - 1)[:, None, :]).view(b, 1, h * w)
    moved = x2.reshape(b, c, h * w).gather(2, flat.expand(b, c, h * w)).view(b, c, h, w)
    keep = m.reshape(b, h * w).gather(1, flat.view(b, h * w)).view(b, h, w) & inside
    moved = torch.where(keep[:, None], moved, torch.zeros((), dtype=x2.dtype, device=x2.device))
    return torch.where(m_hat[:, None], moved, x_b)
