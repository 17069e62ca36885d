"""Region-level augmentations of Sec. 4.1 (PRC, PRM, RBJ) and SoCo's ablation baselines.

Every function is pure: it takes an ``(H, W, C)`` or ``(H, W)`` array, ``(N, 4)`` xyxy float
pixel boxes of that array and an explicit ``numpy.random.Generator``, and returns new arrays.
Pixel extents of a float box are ``round(x1) .. round(x2) - 1`` (see :func:`box_pixels`), the
same rule everywhere so masks, cutouts and coverage checks agree.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["box_pixels", "prc_cutouts", "prc_cut_mask", "prc", "prm", "rbj", "box_jitter", "soco_cutout"]


def box_pixels(box, height: int, width: int) -> tuple[int, int, int, int]:
    """Integer pixel slice bounds ``(x0, y0, x1, y1)`` (end exclusive) of one float xyxy box."""
    x0 = min(max(int(round(float(box[0]))), 0), width)
    y0 = min(max(int(round(float(box[1]))), 0), height)
    x1 = min(max(int(round(float(box[2]))), x0), width)
    y1 = min(max(int(round(float(box[3]))), y0), height)
    return x0, y0, x1, y1


def _areas(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def prc_cutouts(boxes: np.ndarray, height: int, width: int, rng: np.random.Generator, *,
                side_range=(0.2, 0.5), max_cover: float = 0.5, area_reading: bool = False) -> np.ndarray:
    """Per-proposal cutouts of proposal-based random cutout (PRC, Sec. 4.1).

    Returns ``(N, H, W)`` bool, row ``i`` = pixels removed by proposal ``i``'s cutout.
    Proposals are processed from large to small. Each cutout keeps its proposal's aspect ratio,
    side ratio ``s ~ U(side_range)`` (``area_reading``: ``s`` is the area fraction), placed
    uniformly inside the proposal. A cutout that would leave a smaller proposal covered by more
    than ``max_cover`` of its area (counting the cutouts of all larger proposals) is restored
    over that smaller proposal (the paper's rule ii).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    parts = np.zeros((boxes.shape[0], height, width), dtype=bool)
    cut = np.zeros((height, width), dtype=bool)
    order = np.argsort(-_areas(boxes), kind="stable")
    pix = [box_pixels(b, height, width) for b in boxes]
    for n, i in enumerate(order):
        x1, y1, x2, y2 = boxes[i]
        w, h = x2 - x1, y2 - y1
        s = rng.uniform(*side_range)
        if area_reading:
            s = math.sqrt(s)
        wc, hc = s * w, s * h
        cx = x1 + rng.uniform(0.0, w - wc)
        cy = y1 + rng.uniform(0.0, h - hc)
        cx0, cy0, cx1, cy1 = box_pixels((cx, cy, cx + wc, cy + hc), height, width)
        new = parts[i]
        new[cy0:cy1, cx0:cx1] = True
        for j in order[n + 1:]:
            jx0, jy0, jx1, jy1 = pix[j]
            area_j = (jx1 - jx0) * (jy1 - jy0)
            if area_j == 0:
                continue
            covered = np.count_nonzero(cut[jy0:jy1, jx0:jx1] | new[jy0:jy1, jx0:jx1])
            if covered > max_cover * area_j:
                new[jy0:jy1, jx0:jx1] = False
        cut |= new
    return parts


def prc_cut_mask(boxes: np.ndarray, height: int, width: int, rng: np.random.Generator, *,
                 side_range=(0.2, 0.5), max_cover: float = 0.5, area_reading: bool = False) -> np.ndarray:
    """Union of :func:`prc_cutouts`: ``(H, W)`` bool, True = removed by PRC."""
    return prc_cutouts(boxes, height, width, rng, side_range=side_range, max_cover=max_cover,
                       area_reading=area_reading).any(axis=0)


def prc(image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator, *, fill=0,
        side_range=(0.2, 0.5), max_cover: float = 0.5, area_reading: bool = False) -> np.ndarray:
    """Proposal-based random cutout (PRC, Sec. 4.1): cut regions are set to ``fill``.

    ``fill`` is the mean colour for images (0 after normalisation, as SoCo) and 0/False for
    the foreground mask of Eq. 7.
    """
    cut = prc_cut_mask(boxes, image.shape[0], image.shape[1], rng, side_range=side_range,
                       max_cover=max_cover, area_reading=area_reading)
    out = image.copy()
    out[cut] = fill
    return out


def prm(image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator, *,
        area_range=(0.2, 0.6), aspect_range=(3 / 4, 4 / 3)) -> np.ndarray:
    """Proposal-based random mask (PRM, Sec. 4.1) — our reading (SPEC Sec. 3).

    For each proposal: area fraction ``s ~ U(area_range)`` and aspect ``a ~ U(aspect_range)``
    give a rectangle ``w·sqrt(s·a) x h·sqrt(s/a)`` inside the box, flush with a random side that
    has room outside; it is filled with the same-size strip just outside that side, so the
    proposal receives background from that direction. No side with room: the box is left as is.
    """
    out = image.copy()
    height, width = image.shape[:2]
    for b in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        x0, y0, x1, y1 = box_pixels(b, height, width)
        bw, bh = x1 - x0, y1 - y0
        s = rng.uniform(*area_range)
        a = rng.uniform(*aspect_range)
        mw = min(max(int(round(bw * math.sqrt(s * a))), 1), bw)
        mh = min(max(int(round(bh * math.sqrt(s / a))), 1), bh)
        sides = [name for name, room, need in (("left", x0, mw), ("right", width - x1, mw),
                                               ("top", y0, mh), ("bottom", height - y1, mh))
                 if bw > 0 and bh > 0 and room >= need]
        if not sides:
            continue
        side = sides[rng.integers(len(sides))]
        if side in ("left", "right"):
            r0 = y0 + int(rng.integers(bh - mh + 1))
            if side == "left":
                out[r0:r0 + mh, x0:x0 + mw] = out[r0:r0 + mh, x0 - mw:x0]
            else:
                out[r0:r0 + mh, x1 - mw:x1] = out[r0:r0 + mh, x1:x1 + mw]
        else:
            c0 = x0 + int(rng.integers(bw - mw + 1))
            if side == "top":
                out[y0:y0 + mh, c0:c0 + mw] = out[y0 - mh:y0, c0:c0 + mw]
            else:
                out[y1 - mh:y1, c0:c0 + mw] = out[y1:y1 + mh, c0:c0 + mw]
    return out


def _jitter(boxes: np.ndarray, rng: np.random.Generator, ratio: float, p: float) -> np.ndarray:
    """SoCo's box jitter: with probability ``p`` scale w, h by U(1-r, 1+r) and shift the centre by U(-r, r)·(w, h)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    n = b.shape[0]
    apply = rng.random(n) < p
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    cx = (b[:, 0] + b[:, 2]) / 2 + rng.uniform(-ratio, ratio, n) * w
    cy = (b[:, 1] + b[:, 3]) / 2 + rng.uniform(-ratio, ratio, n) * h
    nw = w * rng.uniform(1 - ratio, 1 + ratio, n)
    nh = h * rng.uniform(1 - ratio, 1 + ratio, n)
    new = np.stack([cx - nw / 2, cy - nh / 2, cx + nw / 2, cy + nh / 2], axis=1)
    return np.where(apply[:, None], new, b)


def rbj(boxes: np.ndarray, rng: np.random.Generator, *, ratio: float = 0.1, p: float = 0.5) -> np.ndarray:
    """Restricted box jitter (RBJ, Sec. 4.1): SoCo's jitter, then clipped to the original box.

    Acts on RoI coordinates only; the result is never larger than the proposal and lies inside
    it (a jitter that misses the box entirely keeps the original box).
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    j = _jitter(b, rng, ratio, p)
    out = np.concatenate([np.maximum(j[:, :2], b[:, :2]), np.minimum(j[:, 2:], b[:, 2:])], axis=1)
    empty = (out[:, 2] <= out[:, 0]) | (out[:, 3] <= out[:, 1])
    out[empty] = b[empty]
    return out.astype(np.float32)


def box_jitter(boxes: np.ndarray, rng: np.random.Generator, height: int, width: int, *,
               ratio: float = 0.1, p: float = 0.5) -> np.ndarray:
    """Unrestricted box jitter (SoCo; ablation baseline of Tab. 5): clipped to the image only."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    j = _jitter(b, rng, ratio, p)
    j[:, 0::2] = j[:, 0::2].clip(0, width)
    j[:, 1::2] = j[:, 1::2].clip(0, height)
    empty = (j[:, 2] <= j[:, 0]) | (j[:, 3] <= j[:, 1])
    j[empty] = b[empty]
    return j.astype(np.float32)


def soco_cutout(image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator, *, fill=0,
                area_range=(0.1, 0.3), p: float = 0.5) -> np.ndarray:
    """SoCo's random cutout (ablation baseline of Tab. 5): with probability ``p`` per box, a
    square of area ``U(area_range)`` of the box, centred uniformly in it and clipped to it."""
    out = image.copy()
    height, width = image.shape[:2]
    for b in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        apply = rng.random() < p
        frac = rng.uniform(*area_range)
        ux, uy = rng.random(2)
        if not apply:
            continue
        x1, y1, x2, y2 = b
        side = math.sqrt(frac * (x2 - x1) * (y2 - y1))
        cx, cy = x1 + ux * (x2 - x1), y1 + uy * (y2 - y1)
        sq = (max(cx - side / 2, x1), max(cy - side / 2, y1), min(cx + side / 2, x2), min(cy + side / 2, y2))
        c0, r0, c1, r1 = box_pixels(sq, height, width)
        out[r0:r1, c0:c1] = fill
    return out
