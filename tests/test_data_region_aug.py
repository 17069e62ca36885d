"""Property tests of the region augmentations (Sec. 4.1) and the composite (Eq. 6-8)."""
import hashlib

import numpy as np
import pytest
import torch

from d3ssl_zoo.data.composite import composite_depositioned, depositioning_masks, foreground_mask
from d3ssl_zoo.data.config import PretrainDataConfig
from d3ssl_zoo.data.region_aug import (
    box_jitter,
    box_pixels,
    boxes_pixels,
    fill_where,
    prc,
    prc_cut_mask,
    prc_cutouts,
    prm,
    rbj,
    soco_cutout,
)


def random_boxes(rng, n, size):
    xy = rng.uniform(0, size * 0.6, (n, 2))
    wh = rng.uniform(size * 0.1, size * 0.4, (n, 2))
    return np.concatenate([xy, np.minimum(xy + wh, size)], 1).astype(np.float32)


@pytest.mark.parametrize("seed", range(20))
def test_prc_never_covers_smaller_proposal_beyond_threshold(seed):
    rng = np.random.default_rng(seed)
    size = 96
    boxes = random_boxes(rng, 6, size)
    parts = prc_cutouts(boxes, size, size, np.random.default_rng(seed + 100), rule="side", max_cover=0.5)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    order = np.argsort(-areas, kind="stable")
    for n, j in enumerate(order):
        x0, y0, x1, y1 = box_pixels(boxes[j], size, size)
        by_larger = parts[order[:n]].any(0)[y0:y1, x0:x1]
        assert by_larger.sum() <= 0.5 * (x1 - x0) * (y1 - y0)
    assert (parts.any(0) == prc_cut_mask(boxes, size, size, np.random.default_rng(seed + 100), rule="side")).all()
    assert parts.any()


@pytest.mark.parametrize("max_cover", [0.5, 0.2])
def test_prc_restores_small_proposals_inside_large_cutouts(max_cover):
    # small proposals inside a large one: without the restore rule most seeds violate the bound
    boxes = np.array([[0, 0, 100, 100], [40, 40, 52, 50], [30, 60, 45, 80]], np.float32)
    for seed in range(50):
        parts = prc_cutouts(boxes, 100, 100, np.random.default_rng(seed), rule="side", max_cover=max_cover)
        for j in (1, 2):
            x0, y0, x1, y1 = box_pixels(boxes[j], 100, 100)
            assert parts[0][y0:y1, x0:x1].sum() <= max_cover * (x1 - x0) * (y1 - y0)
        assert parts[0].sum() > 0


def test_prc_side_rule_cutout_inside_proposals_with_aspect_and_fill():
    img = np.full((64, 64, 3), 200, np.uint8)
    box = np.array([[8, 16, 40, 32]], np.float32)  # 32 x 16
    out = prc(img, box, np.random.default_rng(0), fill=np.array([1, 2, 3], np.uint8), rule="side")
    cut = (out != img).any(-1)
    ys, xs = np.nonzero(cut)
    assert xs.min() >= 8 and xs.max() < 40 and ys.min() >= 16 and ys.max() < 32
    w, h = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    assert 0.2 * 32 - 1 <= w <= 0.5 * 32 + 1 and 0.2 * 16 - 1 <= h <= 0.5 * 16 + 1
    assert abs(w / h - 2) < 0.7  # keeps the proposal's aspect ratio
    assert (out[cut] == [1, 2, 3]).all()
    assert (img == 200).all()  # input untouched


def test_prm_copies_outside_strip_into_box_only():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (64, 64, 3)).astype(np.uint8)
    box = np.array([[20, 20, 44, 44]], np.float32)
    for seed in range(10):
        out = prm(img, box, np.random.default_rng(seed))
        changed = (out != img).any(-1)
        ys, xs = np.nonzero(changed)
        if xs.size:
            assert xs.min() >= 20 and xs.max() < 44 and ys.min() >= 20 and ys.max() < 44
        # every pixel of the box comes from the image (a translated strip), area within range
        assert changed.sum() <= 0.6 * 24 * 24 + 24


def test_prm_noop_without_room():
    img = np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3)
    out = prm(img, np.array([[0, 0, 32, 32]], np.float32), np.random.default_rng(0))
    assert (out == img).all()


@pytest.mark.parametrize("seed", range(10))
def test_rbj_never_enlarges_and_stays_inside(seed):
    rng = np.random.default_rng(seed)
    boxes = random_boxes(rng, 50, 224)
    j = rbj(boxes, np.random.default_rng(seed), ratio=0.1, p=1.0)
    assert (j[:, 0] >= boxes[:, 0] - 1e-4).all() and (j[:, 1] >= boxes[:, 1] - 1e-4).all()
    assert (j[:, 2] <= boxes[:, 2] + 1e-4).all() and (j[:, 3] <= boxes[:, 3] + 1e-4).all()
    assert ((j[:, 2] > j[:, 0]) & (j[:, 3] > j[:, 1])).all()
    assert not np.allclose(j, boxes)


def test_box_jitter_may_grow_but_stays_in_image():
    rng = np.random.default_rng(0)
    boxes = random_boxes(rng, 200, 100)
    j = box_jitter(boxes, np.random.default_rng(1), 100, 100, ratio=0.1, p=1.0)
    assert (j >= 0).all() and (j <= 100).all()
    grew = (j[:, 0] < boxes[:, 0] - 1e-3) | (j[:, 2] > boxes[:, 2] + 1e-3)
    assert grew.any()


def test_jitter_p_zero_is_identity():
    boxes = random_boxes(np.random.default_rng(0), 5, 100)
    assert np.allclose(rbj(boxes, np.random.default_rng(0), p=0.0), boxes)


def test_soco_cutout_square_inside_box():
    img = np.full((80, 80, 3), 50, np.uint8)
    box = np.array([[10, 10, 70, 70]], np.float32)
    out = soco_cutout(img, box, np.random.default_rng(3), fill=0, p=1.0)
    ys, xs = np.nonzero((out != img).any(-1))
    assert xs.min() >= 10 and xs.max() < 70 and ys.min() >= 10 and ys.max() < 70
    assert xs.size <= 0.3 * 60 * 60 + 60


def test_same_seed_same_output_different_seed_differs():
    img = np.random.default_rng(0).integers(0, 255, (64, 64, 3)).astype(np.uint8)
    boxes = random_boxes(np.random.default_rng(1), 4, 64)
    a = prm(prc(img, boxes, np.random.default_rng(5)), boxes, np.random.default_rng(6))
    b = prm(prc(img, boxes, np.random.default_rng(5)), boxes, np.random.default_rng(6))
    c = prm(prc(img, boxes, np.random.default_rng(7)), boxes, np.random.default_rng(8))
    assert (a == b).all() and (a != c).any()


def test_depositioning_shift_keeps_boxes_inside_and_mask_is_shifted_subset():
    boxes = np.array([[10, 20, 50, 60], [30, 5, 70, 40]], np.float32)
    for seed in range(20):
        m, m_hat, t = depositioning_masks(boxes, 96, 96, np.random.default_rng(seed))
        moved = boxes + np.tile(t, 2)
        assert (moved >= 0).all() and (moved <= 96).all()
        shifted = foreground_mask(moved, 96, 96)
        assert not (m_hat & ~shifted).any()  # m̂ ⊆ shift(m): PRC only removes (Eq. 7)
        assert m_hat.sum() < shifted.sum()
        assert m.sum() == shifted.sum()


def test_composite_pastes_shifted_foreground_on_background():
    x2 = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).view(2, 3, 16, 16)
    x_b = -torch.ones_like(x2)
    m = torch.zeros(2, 16, 16, dtype=torch.bool)
    m[:, 2:6, 3:7] = True
    t = torch.tensor([[4, 5], [-3, 0]])
    m_hat = torch.zeros_like(m)
    m_hat[0, 7:11, 7:11] = True
    m_hat[1, 2:6, 0:4] = True
    m_hat[1, 2, 0] = False  # a PRC cut shows the background
    x3 = composite_depositioned(x2, m, x_b, m_hat, t)
    assert torch.equal(x3[0, :, 7:11, 7:11], x2[0, :, 2:6, 3:7])
    assert torch.equal(x3[1, :, 3:6, 0:4], x2[1, :, 3:6, 3:7])
    assert (x3[1, :, 2, 0] == -1).all()
    outside = ~m_hat
    assert (x3.permute(1, 0, 2, 3)[:, outside] == -1).all()
    with pytest.raises(ValueError, match="shapes"):
        composite_depositioned(x2, m[:1], x_b, m_hat, t)


# --- the fast implementations against straightforward references: same draws, same pixels ---

def prc_cutouts_reference(boxes, height, width, rng, side_range=(0.2, 0.5), max_cover=0.5):
    """PRC's side rule written plainly: one full plane per proposal, every smaller proposal's coverage counted."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    parts = np.zeros((boxes.shape[0], height, width), dtype=bool)
    cut = np.zeros((height, width), dtype=bool)
    order = np.argsort(-((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])), kind="stable")
    pix = [box_pixels(b, height, width) for b in boxes]
    for n, i in enumerate(order):
        x1, y1, x2, y2 = boxes[i]
        w, h = x2 - x1, y2 - y1
        s = rng.uniform(*side_range)
        wc, hc = s * w, s * h
        cx = x1 + rng.uniform(0.0, w - wc)
        cy = y1 + rng.uniform(0.0, h - hc)
        cx0, cy0, cx1, cy1 = box_pixels((cx, cy, cx + wc, cy + hc), height, width)
        new = parts[i]
        new[cy0:cy1, cx0:cx1] = True
        for j in order[n + 1:]:
            jx0, jy0, jx1, jy1 = pix[j]
            area_j = (jx1 - jx0) * (jy1 - jy0)
            if area_j and np.count_nonzero(cut[jy0:jy1, jx0:jx1] | new[jy0:jy1, jx0:jx1]) > max_cover * area_j:
                new[jy0:jy1, jx0:jx1] = False
        cut |= new
    return parts


def prc_area_reference(boxes, height, width, rng, side_range=(0.2, 0.5)):
    """PRC's area rule (the authors' RCC) written plainly: one plane per proposal, the union recomputed
    for every proposal; draws: s, then per proposal with pixels the corner's x and y."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    parts = np.zeros((boxes.shape[0], height, width), dtype=bool)
    s = rng.uniform(*side_range)
    for i in np.argsort(-((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])), kind="stable"):
        x0, y0, x1, y1 = box_pixels(boxes[i], height, width)
        area = (x1 - x0) * (y1 - y0)
        if area == 0:
            continue
        c = parts.any(0)[y0:y1, x0:x1].sum() / area
        if c > s:
            parts[:, y0:y1, x0:x1] = False
            c = 0.0
        wc, hc = np.sqrt((s - c) * area * (x1 - x0) / (y1 - y0)), np.sqrt((s - c) * area * (y1 - y0) / (x1 - x0))
        cx = x0 + rng.uniform(0.0, (x1 - x0) - wc)
        cy = y0 + rng.uniform(0.0, (y1 - y0) - hc)
        rect = np.zeros((height, width), dtype=bool)
        cx0, cy0, cx1, cy1 = box_pixels((cx, cy, cx + wc, cy + hc), height, width)
        rect[cy0:cy1, cx0:cx1] = True
        parts[i] = rect & ~parts.any(0)
    return parts


def jitter_reference(boxes, rng, ratio, p):
    """SoCo's jitter box by box in float64, the draws in the documented order: p tests, x shifts,
    y shifts, w scales, h scales (N each)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    n = len(b)
    apply, sx, sy = rng.random(n) < p, rng.uniform(-ratio, ratio, n), rng.uniform(-ratio, ratio, n)
    kw, kh = rng.uniform(1 - ratio, 1 + ratio, n), rng.uniform(1 - ratio, 1 + ratio, n)
    out = b.copy()
    for k in range(n):
        if apply[k]:
            w, h = b[k, 2] - b[k, 0], b[k, 3] - b[k, 1]
            cx, cy = (b[k, 0] + b[k, 2]) / 2 + sx[k] * w, (b[k, 1] + b[k, 3]) / 2 + sy[k] * h
            nw, nh = w * kw[k], h * kh[k]
            out[k] = cx - nw / 2, cy - nh / 2, cx + nw / 2, cy + nh / 2
    return b, out


def scattered_boxes(rng, n, height, width):
    """Boxes of any size, partly outside the image, some degenerate, some on .5 pixel ties."""
    xy = rng.uniform(-5, [width * 0.7, height * 0.7], (n, 2))
    b = np.concatenate([xy, xy + rng.uniform(0, [width * 0.6, height * 0.6], (n, 2))], 1)
    if n:
        b[0, :2] = np.minimum(np.floor(b[0, :2]) + 0.5, b[0, 2:])
        b[-1, 2] = b[-1, 0]
    return b.astype(np.float32)


@pytest.mark.parametrize("seed", range(40))
def test_prc_equals_the_reference_plane_per_proposal(seed):
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(16, 120)), int(rng.integers(16, 120))
    boxes = scattered_boxes(rng, int(rng.integers(1, 9)), h, w)
    for kw, reference in ((dict(rule="side", max_cover=0.5), prc_cutouts_reference),
                          (dict(rule="side", max_cover=0.2, side_range=(0.4, 0.7)), prc_cutouts_reference),
                          (dict(rule="side", max_cover=1.0), prc_cutouts_reference),
                          (dict(rule="area"), prc_area_reference),
                          (dict(rule="area", side_range=(0.6, 0.9)), prc_area_reference)):
        ref = reference(boxes, h, w, np.random.default_rng(seed),
                        **{k: v for k, v in kw.items() if k != "rule"})
        assert np.array_equal(prc_cutouts(boxes, h, w, np.random.default_rng(seed), **kw), ref)
        assert np.array_equal(prc_cut_mask(boxes, h, w, np.random.default_rng(seed), **kw), ref.any(0))
        cut = ref.any(0)
        for img, fill in ((rng.integers(0, 256, (h, w, 3)).astype(np.uint8), np.array([124, 116, 104], np.uint8)),
                          (rng.integers(0, 256, (h, w)).astype(np.uint8), 7), (rng.random((h, w)) < 0.5, False),
                          (rng.random((h, w, 3)).astype(np.float32), 0.25)):
            want = img.copy()
            want[cut] = fill
            got = prc(img, boxes, np.random.default_rng(seed), fill=fill, **kw)
            assert got.dtype == img.dtype and np.array_equal(got, want)
            assert np.array_equal(fill_where(img, cut, fill), want)


def test_boxes_pixels_is_box_pixels_row_by_row():
    rng = np.random.default_rng(0)
    boxes = np.concatenate([scattered_boxes(rng, 50, 40, 60), [[-3.5, 2.5, 1e9, 3.5], [0.5, 1.5, 2.5, 3.5]]])
    assert boxes_pixels(boxes, 40, 60) == [box_pixels(b, 40, 60) for b in boxes]
    with pytest.raises((ValueError, OverflowError)):
        boxes_pixels(np.array([[0, 0, np.nan, 4]]), 40, 60)


@pytest.mark.parametrize("seed", range(10))
def test_jitters_equal_the_box_by_box_reference(seed):
    boxes = scattered_boxes(np.random.default_rng(seed), 9, 100, 120)
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    for ratio, p in ((0.1, 0.5), (0.4, 1.0)):
        b, j = jitter_reference(boxes, np.random.default_rng(seed), ratio, p)
        lo, hi = np.maximum(j[:, :2], b[:, :2]), np.minimum(j[:, 2:], b[:, 2:])
        want = np.where((hi <= lo).any(1, keepdims=True), b, np.concatenate([lo, hi], 1)).astype(np.float32)
        assert np.array_equal(rbj(boxes, np.random.default_rng(seed), ratio=ratio, p=p), want)
        b, j = jitter_reference(boxes, np.random.default_rng(seed), ratio, p)
        j[:, 0::2], j[:, 1::2] = j[:, 0::2].clip(0, 120), j[:, 1::2].clip(0, 100)
        empty = (j[:, 2] <= j[:, 0]) | (j[:, 3] <= j[:, 1])
        j[empty] = b[empty]
        assert np.array_equal(box_jitter(boxes, np.random.default_rng(seed), 100, 120, ratio=ratio, p=p),
                              j.astype(np.float32))


def test_foreground_mask_is_the_union_of_box_pixels():
    boxes = scattered_boxes(np.random.default_rng(3), 6, 50, 70)
    want = np.zeros((50, 70), bool)
    for b in boxes:
        x0, y0, x1, y1 = box_pixels(b, 50, 70)
        want[y0:y1, x0:x1] = True
    assert np.array_equal(foreground_mask(boxes, 50, 70), want)


# --- PRC's area rule (the authors' RCC, ztt1024/denseSSL loader.py; docs/design.md "PRC size") ---

def cut_share(cut, box, height, width):
    x0, y0, x1, y1 = box_pixels(box, height, width)
    return cut[y0:y1, x0:x1].sum() / ((x1 - x0) * (y1 - y0))


def rounding(box, s, height, width):
    """What rounding a rectangle of area s x the box's to whole pixels can change in its share."""
    x0, y0, x1, y1 = box_pixels(box, height, width)
    bw, bh = x1 - x0, y1 - y0
    return (np.sqrt(s) * (bw + bh) + 1) / (bw * bh)


def test_prc_side_rule_output_is_pinned():
    # the side rule (data.prc_rule: side) gives the same planes as before the area rule was added
    digest = hashlib.sha256()
    for seed in range(30):
        rng = np.random.default_rng(seed)
        h, w = int(rng.integers(16, 120)), int(rng.integers(16, 120))
        boxes = scattered_boxes(rng, int(rng.integers(1, 9)), h, w)
        for max_cover in (0.5, 0.2, 1.0):
            parts = prc_cutouts(boxes, h, w, np.random.default_rng(seed), rule="side", max_cover=max_cover)
            digest.update(np.packbits(parts).tobytes())
            digest.update(str(parts.shape).encode())
    assert digest.hexdigest() == "5f09299b29e0682a37a8087d938376b16c5e1c1c94217eebf5e4f784d008c2b4"


@pytest.mark.parametrize("seed", range(20))
def test_prc_area_rule_cuts_s_of_every_disjoint_box_with_one_s(seed):
    rng = np.random.default_rng(seed)
    # four disjoint boxes, one per quadrant of a 160 px image
    boxes = np.array([[qx + rng.uniform(0, 20), qy + rng.uniform(0, 20), qx + rng.uniform(40, 80),
                       qy + rng.uniform(40, 80)] for qx in (0, 80) for qy in (0, 80)], np.float32)
    s = np.random.default_rng(seed).uniform(0.2, 0.5)  # the call's one draw of s comes first
    parts = prc_cutouts(boxes, 160, 160, np.random.default_rng(seed))
    cut = parts.any(0)
    shares = [cut_share(cut, b, 160, 160) for b in boxes]
    for b, share in zip(boxes, shares):
        assert abs(share - s) <= rounding(b, s, 160, 160)
    for i, b in enumerate(boxes):  # each box's plane holds its own cutout, inside it
        x0, y0, x1, y1 = box_pixels(b, 160, 160)
        inside = np.zeros_like(cut)
        inside[y0:y1, x0:x1] = True
        assert parts[i].any() and not (parts[i] & ~inside).any()
    assert np.array_equal(cut, prc_cut_mask(boxes, 160, 160, np.random.default_rng(seed)))
    assert not (parts.sum(0) > 1).any()  # disjoint planes


def test_prc_area_rule_restores_an_over_cut_box_and_tops_up_an_under_cut_one():
    big = np.array([[0, 0, 120, 120]], np.float32)
    small = np.array([[40, 40, 76, 70], [10, 80, 40, 110]], np.float32)
    boxes = np.concatenate([big, small])
    restored = topped = 0
    for seed in range(150):
        s = np.random.default_rng(seed).uniform(0.2, 0.5)
        big_cut = prc_cutouts(big, 120, 120, np.random.default_rng(seed))[0]  # the same draws up to the big box
        parts = prc_cutouts(boxes, 120, 120, np.random.default_rng(seed))
        cut = parts.any(0)
        in_small = foreground_mask(small, 120, 120)
        # the big box's plane is its cutout, less what the small boxes restored
        assert not (parts[0] & ~big_cut).any() and np.array_equal(parts[0] & ~in_small, big_cut & ~in_small)
        for b in small:
            c = cut_share(big_cut, b, 120, 120)
            share, tol = cut_share(cut, b, 120, 120), rounding(b, s, 120, 120)
            x0, y0, x1, y1 = box_pixels(b, 120, 120)
            if c > s:  # cut beyond s: restored (the big box's cut is gone from it), then cut to s
                restored += 1
                assert not parts[0][y0:y1, x0:x1].any()
                assert abs(share - s) <= tol
            elif c > 0:  # cut less than s: the big box's cut stays and (s - c) more is cut
                topped += 1
                assert np.array_equal(parts[0][y0:y1, x0:x1], big_cut[y0:y1, x0:x1])
                assert max(c, s - c) - tol <= share <= s + tol
    assert restored >= 20 and topped >= 5


@pytest.mark.parametrize("box", [[8, 16, 72, 32], [20, 4, 36, 60]])
def test_prc_area_rule_keeps_the_box_aspect_ratio(box):
    img = np.full((64, 80, 3), 200, np.uint8)
    x0, y0, x1, y1 = box
    for seed in range(10):
        s = np.random.default_rng(seed).uniform(0.2, 0.5)
        out = prc(img, np.array([box], np.float32), np.random.default_rng(seed), fill=np.array([1, 2, 3], np.uint8))
        ys, xs = np.nonzero((out != img).any(-1))
        assert xs.min() >= x0 and xs.max() < x1 and ys.min() >= y0 and ys.max() < y1
        w, h = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
        assert xs.size == w * h  # one rectangle
        assert abs(w - np.sqrt(s) * (x1 - x0)) <= 1 and abs(h - np.sqrt(s) * (y1 - y0)) <= 1
        assert abs(w * h / ((x1 - x0) * (y1 - y0)) - s) <= rounding(box, s, 64, 80)


def test_prc_rule_unknown_is_an_error_naming_the_choices():
    with pytest.raises(ValueError, match=r"PRC rule must be one of \('area', 'side'\), got 'sides'"):
        prc_cut_mask(np.array([[0, 0, 8, 8]]), 16, 16, np.random.default_rng(0), rule="sides")
    with pytest.raises(ValueError, match=r"prc_rule must be one of \('area', 'side'\), got 'ratio'"):
        PretrainDataConfig(prc_rule="ratio")
    assert PretrainDataConfig().prc_rule == "area"
