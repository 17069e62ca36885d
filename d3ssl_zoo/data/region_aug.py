"""Region-level augmentations of Sec. 4.1 (PRC, PRM, RBJ) and SoCo's ablation baselines.

Every function is pure: it takes an ``(H, W, C)`` or ``(H, W)`` array, ``(N, 4)`` xyxy float
pixel boxes of that array and an explicit ``numpy.random.Generator``, and returns new arrays.
Pixel extents of a float box are ``round(x1) .. round(x2) - 1`` (see :func:`box_pixels`), the
same rule everywhere so masks, cutouts and coverage checks agree.
"""
from __future__ import annotations

import functools
import math

import cv2
import numpy as np

__all__ = ["box_pixels", "boxes_pixels", "PRC_RULES", "prc_cutouts", "prc_cut_mask", "fill_where", "prc", "prm", "rbj",
           "box_jitter", "soco_cutout"]


def box_pixels(box, height: int, width: int) -> tuple[int, int, int, int]:
    """Integer pixel slice bounds ``(x0, y0, x1, y1)`` (end exclusive) of one float xyxy box."""
    x0 = min(max(int(round(float(box[0]))), 0), width)
    y0 = min(max(int(round(float(box[1]))), 0), height)
    x1 = min(max(int(round(float(box[2]))), x0), width)
    y1 = min(max(int(round(float(box[3]))), y0), height)
    return x0, y0, x1, y1


def boxes_pixels(boxes, height: int, width: int) -> list[tuple[int, int, int, int]]:
    """:func:`box_pixels` of every row of ``(N, 4)`` boxes in one vectorised pass (same rounding: half
    to even, as ``round``); non-finite boxes go through :func:`box_pixels`, which raises."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if not np.isfinite(b).all():
        return [box_pixels(x, height, width) for x in b]
    r = np.rint(b)
    lo = np.minimum(np.maximum(r[:, :2], 0), (width, height))
    hi = np.minimum(np.maximum(r[:, 2:], lo), (width, height))
    return [tuple(x) for x in np.concatenate([lo, hi], axis=1).astype(np.int64).tolist()]


def _areas(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _prc_cuts_side(boxes: np.ndarray, height: int, width: int, rng: np.random.Generator, side_range,
                   max_cover: float, parts: np.ndarray | None = None) -> np.ndarray:
    """PRC's ``side`` rule (see :func:`prc_cutouts`): returns the union of the cutouts ``(H, W)`` bool
    and, if ``parts`` is given, writes proposal ``i``'s cutout into ``parts[i]``.

    Two planes whatever the number of proposals (the cutout being placed and the union so far).
    The coverage of a smaller proposal is counted only when the new cutout reaches it and the
    cutout rectangles placed so far, which contain every cut pixel, could together cover more
    than ``max_cover`` of it; otherwise no restore can happen and counting would change nothing.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    cut = np.zeros((height, width), dtype=bool)
    new = np.zeros((height, width), dtype=bool)
    order = np.argsort(-_areas(boxes), kind="stable").tolist()
    pix = boxes_pixels(boxes, height, width)
    lo, hi = side_range
    placed = []  # the non-empty cutout rectangles so far: the union of cuts lies inside them
    for n, i in enumerate(order):
        x1, y1, x2, y2 = boxes[i].tolist()
        w, h = x2 - x1, y2 - y1
        s = rng.uniform(lo, hi)
        wc, hc = s * w, s * h
        cx = x1 + rng.uniform(0.0, w - wc)
        cy = y1 + rng.uniform(0.0, h - hc)
        cx0, cy0, cx1, cy1 = box_pixels((cx, cy, cx + wc, cy + hc), height, width)
        if cx1 <= cx0 or cy1 <= cy0:
            continue  # an empty cutout (a degenerate proposal) removes nothing
        new[cy0:cy1, cx0:cx1] = True
        placed.append((cx0, cy0, cx1, cy1))
        for j in order[n + 1:]:
            jx0, jy0, jx1, jy1 = pix[j]
            area_j = (jx1 - jx0) * (jy1 - jy0)
            if area_j == 0 or jx0 >= cx1 or cx0 >= jx1 or jy0 >= cy1 or cy0 >= jy1:
                continue
            bound = sum(max(min(jx1, r[2]) - max(jx0, r[0]), 0) * max(min(jy1, r[3]) - max(jy0, r[1]), 0)
                        for r in placed)
            if bound <= max_cover * area_j:
                continue
            covered = np.count_nonzero(cut[jy0:jy1, jx0:jx1] | new[jy0:jy1, jx0:jx1])
            if covered > max_cover * area_j:
                new[jy0:jy1, jx0:jx1] = False
        if parts is not None:
            parts[i, cy0:cy1, cx0:cx1] = new[cy0:cy1, cx0:cx1]
        cut[cy0:cy1, cx0:cx1] |= new[cy0:cy1, cx0:cx1]
        new[cy0:cy1, cx0:cx1] = False
    return cut


def _prc_cuts_area(boxes: np.ndarray, height: int, width: int, rng: np.random.Generator, side_range,
                   owner: np.ndarray | None = None) -> np.ndarray:
    """PRC's ``area`` rule (see :func:`prc_cutouts`): returns the union of the cutouts ``(H, W)`` bool
    and, if ``owner`` (``(H, W)`` int, all -1) is given, sets each cut pixel to the index of the
    proposal whose step cut it (-1: not cut).

    One ``s`` per call; per proposal (largest area first) one count over its box, at most one
    restore of the box and one rectangle: no plane per proposal.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    cut = np.zeros((height, width), dtype=bool)
    s = rng.uniform(*side_range)
    pix = boxes_pixels(boxes, height, width)
    for i in np.argsort(-_areas(boxes), kind="stable").tolist():
        x0, y0, x1, y1 = pix[i]
        bw, bh = x1 - x0, y1 - y0
        if bw == 0 or bh == 0:
            continue  # a proposal with no pixel in the array: nothing to measure or cut
        c = np.count_nonzero(cut[y0:y1, x0:x1]) / (bw * bh)
        if c > s:  # cut beyond s by the larger proposals: the whole proposal is restored first
            cut[y0:y1, x0:x1] = False
            if owner is not None:
                owner[y0:y1, x0:x1] = -1
            c = 0.0
        k = math.sqrt(s - c)  # a rectangle of area (s - c) x the box's, with the box's width/height ratio
        wc, hc = k * bw, k * bh
        cx = x0 + rng.uniform(0.0, bw - wc)
        cy = y0 + rng.uniform(0.0, bh - hc)
        cx0, cy0, cx1, cy1 = box_pixels((cx, cy, cx + wc, cy + hc), height, width)
        if owner is not None:
            o = owner[cy0:cy1, cx0:cx1]
            o[o < 0] = i  # pixels already cut stay with the step that cut them
        cut[cy0:cy1, cx0:cx1] = True
    return cut


PRC_RULES = ("area", "side")


def _prc(boxes, height: int, width: int, rng: np.random.Generator, rule: str, side_range, max_cover: float,
         planes: bool):
    if rule not in PRC_RULES:
        raise ValueError(f"PRC rule must be one of {PRC_RULES}, got {rule!r}")
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if rule == "side":
        parts = np.zeros((boxes.shape[0], height, width), dtype=bool) if planes else None
        cut = _prc_cuts_side(boxes, height, width, rng, side_range, max_cover, parts)
        return parts if planes else cut
    if not planes:
        return _prc_cuts_area(boxes, height, width, rng, side_range)
    owner = np.full((height, width), -1, dtype=np.int32)
    _prc_cuts_area(boxes, height, width, rng, side_range, owner)
    return owner[None] == np.arange(boxes.shape[0], dtype=np.int32)[:, None, None]


def prc_cutouts(boxes: np.ndarray, height: int, width: int, rng: np.random.Generator, *, rule: str = "area",
                side_range=(0.2, 0.5), max_cover: float = 0.5) -> np.ndarray:
    """Per-proposal cutouts of proposal-based random cutout (PRC, Sec. 4.1).

    Returns ``(N, H, W)`` bool, row ``i`` = pixels removed by proposal ``i``'s step. Proposals are
    processed from the largest area to the smallest; each cutout keeps its proposal's width/height
    ratio and its corner is uniform over the places that keep it inside the proposal.

    ``rule="area"`` (the authors' ``RCC`` in ztt1024/denseSSL ``loader.py``; docs/design.md): one
    ``s ~ U(side_range)`` per call is the fraction of each proposal's *area* to cut. For each
    proposal, ``c`` = the share of its pixels already cut; if ``c > s`` the whole proposal is
    restored (uncut, also where larger proposals had cut it) and ``c = 0``; then a rectangle of
    area ``(s - c)`` x the proposal's is cut. Rows are disjoint, their union is the final cut
    (a pixel belongs to the step that cut it; a restore clears it from every row).

    ``rule="side"`` (the earlier reading): ``s ~ U(side_range)`` per proposal is the side ratio of
    its cutout; a cutout that would leave a smaller proposal covered by more than ``max_cover`` of
    its area (counting the cutouts of all larger proposals) is not applied over that smaller
    proposal. ``max_cover`` is used by this rule only.
    """
    return _prc(boxes, height, width, rng, rule, side_range, max_cover, planes=True)


def prc_cut_mask(boxes: np.ndarray, height: int, width: int, rng: np.random.Generator, *, rule: str = "area",
                 side_range=(0.2, 0.5), max_cover: float = 0.5) -> np.ndarray:
    """Union of :func:`prc_cutouts`: ``(H, W)`` bool, True = removed by PRC (the same draws, without
    the per-proposal planes)."""
    return _prc(boxes, height, width, rng, rule, side_range, max_cover, planes=False)


@functools.lru_cache(maxsize=16)
def _solid(shape: tuple, fill: tuple) -> np.ndarray:
    """A read-only uint8 image of one colour (made once per size and colour: filling a 3-channel
    image by broadcasting costs as much as the masked copy itself)."""
    c = shape[2] if len(shape) == 3 else 1
    planes = [np.full(shape[:2], fill[k % len(fill)], dtype=np.uint8) for k in range(c)]
    a = cv2.merge(planes) if len(shape) == 3 else planes[0]
    a.setflags(write=False)
    return a


def fill_where(image: np.ndarray, mask: np.ndarray, fill) -> np.ndarray:
    """A copy of ``image`` with ``fill`` where ``mask`` (bool ``(H, W)``) is set. uint8 images of 1-4
    channels go through ``cv2.copyTo`` (one masked pass, ~40x faster than assigning a colour by
    boolean indexing); the rest by numpy. Same pixels either way."""
    f = np.asarray(fill)
    if image.dtype == np.uint8 and image.shape[:2] == mask.shape and f.ndim <= 1 and \
            (image.ndim == 2 and f.size == 1
             or image.ndim == 3 and 1 <= image.shape[2] <= 4 and f.size in (1, image.shape[2])):
        colour = tuple(int(v) for v in f.astype(np.uint8).reshape(-1))
        return cv2.copyTo(_solid(image.shape, colour), mask.view(np.uint8), image.copy())
    out = image.copy()
    out[mask] = fill
    return out


def prc(image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator, *, fill=0, rule: str = "area",
        side_range=(0.2, 0.5), max_cover: float = 0.5) -> np.ndarray:
    """Proposal-based random cutout (PRC, Sec. 4.1): cut regions are set to ``fill``.

    ``fill`` is the mean colour for images (0 after normalisation, as SoCo) and 0/False for
    the foreground mask of Eq. 7. ``rule``, ``side_range``, ``max_cover``: see :func:`prc_cutouts`.
    """
    cut = prc_cut_mask(boxes, image.shape[0], image.shape[1], rng, rule=rule, side_range=side_range,
                       max_cover=max_cover)
    return fill_where(image, cut, fill)


def prm(image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator, *,
        area_range=(0.2, 0.6), aspect_range=(3 / 4, 4 / 3)) -> np.ndarray:
    """Proposal-based random mask (PRM, Sec. 4.1) — our reading of the paper's brief text (docs/design.md).

    For each proposal: area fraction ``s ~ U(area_range)`` and aspect ``a ~ U(aspect_range)``
    give a rectangle ``w·sqrt(s·a) x h·sqrt(s/a)`` inside the box, flush with a random side that
    has room outside; it is filled with the same-size strip just outside that side, so the
    proposal receives background from that direction. No side with room: the box is left as is.
    """
    out = image.copy()
    height, width = image.shape[:2]
    for x0, y0, x1, y1 in boxes_pixels(boxes, height, width):
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
    """SoCo's box jitter: with probability ``p`` scale w, h by U(1-r, 1+r) and shift the centre by U(-r, r)·(w, h).

    Draws, in this order: ``p`` tests (N), x shifts (N), y shifts (N), w scales (N), h scales (N).
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    n = b.shape[0]
    apply = rng.random(n) < p
    wh = b[:, 2:] - b[:, :2]
    c = (b[:, :2] + b[:, 2:]) / 2 + rng.uniform(-ratio, ratio, (2, n)).T * wh
    half = wh * rng.uniform(1 - ratio, 1 + ratio, (2, n)).T / 2
    return np.where(apply[:, None], np.concatenate([c - half, c + half], axis=1), b)


def rbj(boxes: np.ndarray, rng: np.random.Generator, *, ratio: float = 0.1, p: float = 0.5) -> np.ndarray:
    """Restricted box jitter (RBJ, Sec. 4.1): SoCo's jitter, then clipped to the original box.

    Acts on RoI coordinates only; the result is never larger than the proposal and lies inside
    it (a jitter that misses the box entirely keeps the original box).
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    j = _jitter(b, rng, ratio, p)
    lo, hi = np.maximum(j[:, :2], b[:, :2]), np.minimum(j[:, 2:], b[:, 2:])
    empty = (hi <= lo).any(axis=1)
    return np.where(empty[:, None], b, np.concatenate([lo, hi], axis=1)).astype(np.float32)


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
                area_range=(0.1, 0.3), p: float = 0.5, clip_to_image: bool = False) -> np.ndarray:
    """SoCo's random cutout: with probability ``p`` per box, a square of area ``U(area_range)`` of the box.

    ``clip_to_image=False`` (the earlier reading, ``soco_cutout_clip: box``): the square is centred
    uniformly in the box and clipped to it. ``clip_to_image=True``: as SoCo's ``RandomCutoutInBbox``
    (``contrast/data/transform_ops.py``, hologerry/SoCo): on the box's pixels ``px0 .. px1 - 1`` (see
    :func:`box_pixels`), side ``s = round(sqrt(U(area_range) * box pixels))``, centre ``(cx, cy)`` a
    uniform integer pixel of the box, and the pixels ``cx - s // 2 .. cx + s // 2`` (both ends
    included, so an odd side ``2 (s // 2) + 1``) clipped to the image only: the square may leave the box.
    Draws per box, whatever fires: the ``p`` test, the area fraction, then the centre (two uniforms, or
    the two integers).
    """
    out = image.copy()
    height, width = image.shape[:2]
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if clip_to_image:
        for x0, y0, x1, y1 in boxes_pixels(boxes, height, width):
            apply = rng.random() < p
            frac = rng.uniform(*area_range)
            cx = int(rng.integers(x0, max(x1, x0 + 1)))
            cy = int(rng.integers(y0, max(y1, y0 + 1)))
            if not apply or x1 <= x0 or y1 <= y0:
                continue  # an empty box (no pixel in the view) gets no cutout
            half = int(round(math.sqrt(frac * (x1 - x0) * (y1 - y0)))) // 2
            rows = slice(max(cy - half, 0), min(cy + half, height - 1) + 1)
            out[rows, max(cx - half, 0):min(cx + half, width - 1) + 1] = fill
        return out
    for b in boxes:
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
