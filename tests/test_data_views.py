"""Views (Sec. 4), the per-sample pipeline, the collator's uint8 batch and prepare_batch's (engine contract)."""
import dataclasses

import cv2
import numpy as np
import pytest
import torch

from d3ssl_zoo.data import PretrainCollator, PretrainDataConfig, composite_depositioned, prepare_batch
from d3ssl_zoo.data.views import (
    _adjust_hue,
    _gray_mean,
    boxes_to_view,
    chw_batch,
    color_augment,
    crop_reduction,
    draw_crop,
    gaussian_blur,
    gaussian_ksize,
    make_views,
    plan_crop,
    random_resized_crop_params,
    reduce_crop,
    resize_view,
    select_proposals,
    solarize,
)

IMG = np.random.default_rng(0).integers(0, 255, (96, 128, 3)).astype(np.uint8)
PROPS = np.array([[4, 4, 60, 50], [50, 30, 120, 90], [10, 40, 70, 95], [0, 0, 128, 96], [70, 5, 100, 35]], np.float32)
SMALL = dict(image_size=64, small_size=32)


def cfg(**kw):
    return PretrainDataConfig(**{**SMALL, **kw})


def test_rrc_params_inside_image_and_scale():
    for seed in range(50):
        x, y, w, h = random_resized_crop_params(96, 128, (0.4, 1.0), (3 / 4, 4 / 3), np.random.default_rng(seed))
        assert 0 <= x and 0 <= y and x + w <= 128 and y + h <= 96
        assert w * h >= 0.4 * 96 * 128 * 0.95


def test_crop_reduction_is_the_largest_factor_that_keeps_every_view_a_shrink():
    r50 = PretrainDataConfig()  # the R50 recipes' 224 px views
    assert crop_reduction(640, 480, (0, 0, 303, 303), r50) == 1  # COCO: a ~303 px crop is below 2 x 224
    small = cfg(image_size=32, small_size=16)
    assert crop_reduction(256, 192, (0, 0, 128, 96), small) == 2
    assert crop_reduction(512, 384, (0, 0, 256, 192), small) == 4
    assert crop_reduction(60, 2000, (0, 0, 60, 1000), small) == 1  # x1 is the whole image: its short side counts
    for w, h, c in [(256, 192, small), (512, 384, small), (1024, 768, r50), (333, 900, cfg()), (4000, 3000, r50)]:
        for seed in range(200):
            crop = random_resized_crop_params(h, w, c.crop_scale, c.crop_ratio, np.random.default_rng(seed))
            f = crop_reduction(w, h, crop, c)
            rw, rh = -(-w // f), -(-h // f)
            _, _, cw, ch = reduce_crop(crop, f, rh, rw)
            assert min(rw, rh, cw, ch) >= c.image_size  # x1 and x2 are shrunk to the views, never enlarged
            assert f == 8 or min(w, h, crop[2], crop[3]) < 2 * f * c.image_size  # the next factor would enlarge one


def test_crop_reduction_keeps_x1_and_the_drawn_crop_shrinks():
    r50 = PretrainDataConfig()
    assert crop_reduction(640, 480, (10, 20, 460, 450), r50) == 2  # both crop sides >= 448, short side 480
    assert crop_reduction(640, 480, (10, 20, 460, 447), r50) == 1
    assert crop_reduction(640, 427, (0, 0, 640, 427), r50) == 1  # x1's short side 427 < 448
    assert crop_reduction(4000, 3000, (0, 0, 1800, 1800), r50) == 8
    assert crop_reduction(4000, 3000, (0, 0, 900, 1800), r50) == 4
    for w, h in [(640, 480), (1024, 768), (333, 900)]:
        for seed in range(100):
            crop = random_resized_crop_params(h, w, r50.crop_scale, r50.crop_ratio, np.random.default_rng(seed))
            f = crop_reduction(w, h, crop, r50)
            assert f == 8 or min(w, h, crop[2], crop[3]) < 2 * f * r50.image_size  # the largest such factor
            c = reduce_crop(crop, f, -(-h // f), -(-w // f))
            assert min(c[2], c[3], -(-h // f), -(-w // f)) >= r50.image_size  # every view still a shrink


def test_reduce_crop_rounds_outward_inside_the_decoded_image():
    assert reduce_crop((10, 21, 460, 450), 2, 240, 320) == (5, 10, 230, 226)  # x 5..235, y 10.5..235.5 -> 10..236
    assert reduce_crop((3, 5, 637, 475), 2, 240, 320) == (1, 2, 319, 238)  # 640 / 2 = 320: clipped to the image
    assert reduce_crop((8, 8, 16, 16), 1, 96, 128) == (8, 8, 16, 16)


def test_a_planned_crop_gives_the_same_views_at_full_size():
    c = cfg()
    for seed in range(4):
        rng = np.random.default_rng(seed)
        crop, ok = plan_crop(PROPS, 96, 128, c, rng)
        planned = make_views(IMG, PROPS, c, rng, plan=(crop, ok))
        plain = make_views(IMG, PROPS, c, np.random.default_rng(seed))
        assert planned.keys() == plain.keys()
        for k in plain:
            assert np.array_equal(planned[k], plain[k]), (seed, k)


def test_resize_view_is_close_to_the_area_filter_and_fast_paths_are_exact():
    rng = np.random.default_rng(1)
    smooth = cv2.GaussianBlur(rng.integers(0, 256, (480, 640, 3)).astype(np.uint8), (0, 0), 3)
    for crop, size in [((0, 0, 640, 480), 224), ((37, 11, 301, 260), 224), ((5, 5, 230, 300), 224),
                       ((0, 0, 600, 350), 96)]:
        x0, y0, w, h = crop
        want = cv2.resize(smooth[y0:y0 + h, x0:x0 + w], (size, size), interpolation=cv2.INTER_AREA).astype(int)
        got = resize_view(smooth, crop, size, False)
        assert got.shape == (size, size, 3) and np.abs(got - want).mean() < 0.5, crop
        assert np.abs(got - want).max() <= 3, crop
        assert np.array_equal(resize_view(smooth, crop, size, True), got[:, ::-1])
    exact = smooth[:448, :448]  # an integer factor is OpenCV's area filter itself
    assert np.array_equal(resize_view(exact, (0, 0, 448, 448), 224, False),
                          cv2.resize(exact, (224, 224), interpolation=cv2.INTER_AREA))
    small = smooth[:50, :60]  # enlarging: bilinear
    assert np.array_equal(resize_view(small, (0, 0, 60, 50), 64, False),
                          cv2.resize(small, (64, 64), interpolation=cv2.INTER_LINEAR))


def test_boxes_to_view_maps_and_flips():
    b = np.array([[10, 20, 30, 60]], np.float32)
    crop = (10, 20, 40, 80)
    assert np.allclose(boxes_to_view(b, crop, 80, False), [[0, 0, 40, 40]])
    assert np.allclose(boxes_to_view(b, crop, 80, True), [[40, 0, 80, 40]])


def test_select_proposals_overlap_pad_and_fallback():
    crop = (0, 0, 64, 48)
    whole, out = select_proposals(PROPS, crop, 4, 0.5, np.random.default_rng(0))
    assert out.shape == (4, 4) and whole.shape == (4, 4)
    assert (out[:, 2] <= 64).all() and (out[:, 3] <= 48).all()
    # the clipped boxes are the whole ones cut to the crop
    assert np.allclose(out, np.concatenate([np.maximum(whole[:, :2], 0), np.minimum(whole[:, 2:], [64, 48])], 1))
    # only the first proposal overlaps enough -> it is repeated
    few_whole, few = select_proposals(PROPS[:2], crop, 4, 0.5, np.random.default_rng(0))
    assert np.allclose(few, np.tile([[4, 4, 60, 48]], (4, 1)))
    assert np.allclose(few_whole, np.tile([[4, 4, 60, 50]], (4, 1)))
    _, none = select_proposals(np.array([[100, 60, 128, 96]], np.float32), crop, 3, 0.5, np.random.default_rng(0))
    assert np.allclose(none, np.tile([[0, 0, 64, 48]], (3, 1)))
    _, empty = select_proposals(np.zeros((0, 4), np.float32), crop, 2, 0.5, np.random.default_rng(0))
    assert np.allclose(empty, np.tile([[0, 0, 64, 48]], (2, 1)))


def test_select_proposals_any_overlap_qualifies_with_zero_threshold():
    crop = (0, 0, 64, 48)
    p = np.array([[60, 40, 120, 90]], np.float32)  # 4x8 of its 60x50 pixels inside the crop
    _, strict = select_proposals(p, crop, 1, 0.5, np.random.default_rng(0))
    assert np.allclose(strict, [[0, 0, 64, 48]])  # fallback: the crop box
    whole, clipped = select_proposals(p, crop, 1, 0.0, np.random.default_rng(0))
    assert np.allclose(clipped, [[60, 40, 64, 48]]) and np.allclose(whole, p)


def test_crop_redrawn_until_enough_proposals_qualify():
    # one small proposal in a corner: most RRC draws miss it; 5 attempts find it far more often than 1
    p = np.array([[0, 0, 20, 20]], np.float32)
    hits = {}
    for attempts in (1, 5):
        c = cfg(crop_attempts=attempts, num_proposals=1, crop_scale=(0.1, 0.15))
        n = 0
        for seed in range(200):
            x0, y0, w, h = draw_crop(p, 96, 128, c, np.random.default_rng(seed))
            n += x0 < 20 and y0 < 20
        hits[attempts] = n
    assert hits[5] > 2 * hits[1] > 0


def test_view1_keeps_the_whole_proposal_view2_is_clipped():
    p = np.array([[0, 0, 128, 96]], np.float32)  # the whole image: x2's crop always clips it
    for whole in (True, False):
        s = make_views(IMG, p, cfg(num_proposals=1, whole_box_view1=whole, flip_p=0.0, rbj=False),
                       np.random.default_rng(3))
        assert np.allclose(s["boxes2"], [[0, 0, 64, 64]])
        if whole:
            assert np.allclose(s["boxes1"], [[0, 0, 64, 64]])  # the whole image in the whole-image view
        else:
            assert (s["boxes1"][0, 2] - s["boxes1"][0, 0]) < 64 or (s["boxes1"][0, 3] - s["boxes1"][0, 1]) < 64


def test_dp_proposals_limits_the_composite_to_the_first_boxes():
    s = make_views(IMG, PROPS, cfg(dp_proposals=1), np.random.default_rng(0))
    assert s["boxes3"].shape == (1, 4)
    assert np.allclose(s["boxes3"], s["boxes2"][:1] + np.tile(s["t"], 2))


@pytest.mark.parametrize("seed", range(8))
def test_d3ssl_sample_boxes_inside_views(seed):
    s = make_views(IMG, PROPS, cfg(), np.random.default_rng(seed))
    assert s["x1"].shape == (64, 64, 3) and s["x2"].shape == (64, 64, 3) and s["x2s"].shape == (32, 32, 3)
    for k, size in (("boxes1", 64), ("boxes2", 64), ("boxes2s", 32), ("boxes3", 64)):
        b = s[k]
        assert b.shape == (4, 4) and b.dtype == np.float32
        assert (b >= -1e-4).all() and (b <= size + 1e-4).all(), k
        assert ((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])).all(), k
    assert np.allclose(s["boxes2s"], s["boxes2"] / 2)
    assert np.allclose(s["boxes3"], s["boxes2"] + np.tile(s["t"], 2))


def test_same_seed_same_sample_different_seed_differs():
    a = make_views(IMG, PROPS, cfg(), np.random.default_rng([1, 0, 3]))
    b = make_views(IMG, PROPS, cfg(), np.random.default_rng([1, 0, 3]))
    c = make_views(IMG, PROPS, cfg(), np.random.default_rng([2, 0, 3]))
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    assert any(not np.array_equal(a[k], c[k]) for k in ("x1", "x2", "boxes1", "boxes2"))


def test_no_region_aug_keeps_rois_and_views():
    off = cfg(prc=False, prm=False, rbj=False, depositioning=False, color_jitter_p=0.0, grayscale_p=0.0,
              blur_p=(0.0, 0.0), solarize_p=(0.0, 0.0), flip_p=0.0)
    s = make_views(IMG, PROPS, off, np.random.default_rng(0))
    whole = make_views(IMG, PROPS, off, np.random.default_rng(0))
    assert np.array_equal(s["x1"], whole["x1"])
    assert "x3" not in s and "m_hat" not in s
    # x1 is the whole image resized: boxes1 are the chosen proposals scaled by 64/128, 64/96
    assert (s["boxes1"][:, 2] <= 64).all()


def batch_of(c, n=3):
    return [dict(make_views(IMG, PROPS, c, np.random.default_rng(i)), image_id=10 + i) for i in range(n)]


def collate_and_prepare(c, samples):
    return prepare_batch(PretrainCollator(c)(samples), c.mean, c.std)


def normalised(x: torch.Tensor, c) -> torch.Tensor:
    """What the views must become on the device: ``(x / 255 - mean) / std`` in fp32."""
    mean, std = torch.tensor(c.mean).view(1, 3, 1, 1), torch.tensor(c.std).view(1, 3, 1, 1)
    return (x.double() / 255 - mean) / std


def composite_reference(x2, m, x_b, m_hat, t):
    """Eq. 8 one image at a time by slicing: the collator's CPU composite before it moved to the device."""
    h, w = x2.shape[2:]
    moved = torch.zeros_like(x2)
    for i in range(x2.shape[0]):
        tx, ty = int(t[i, 0]), int(t[i, 1])
        fg = x2[i] * m[i].to(x2.dtype)
        moved[i, :, max(ty, 0):min(h + ty, h), max(tx, 0):min(w + tx, w)] = \
            fg[:, max(-ty, 0):min(h - ty, h), max(-tx, 0):min(w - tx, w)]
    return torch.where(m_hat[:, None], moved, x_b)


def test_collator_ships_uint8_and_prepare_batch_normalises_and_composites():
    c = cfg()
    samples = batch_of(c, 4)
    raw = PretrainCollator(c)(samples)
    assert set(raw) == {"x1", "x2", "x2s", "m", "m_hat", "t", "boxes1", "boxes2", "boxes2s", "boxes3", "image_id"}
    assert all(raw[k].dtype == torch.uint8 for k in ("x1", "x2", "x2s")) and raw["x1"].shape == (4, 3, 64, 64)
    assert raw["m_hat"].dtype == torch.bool and raw["t"].shape == (4, 2)
    x2 = torch.from_numpy(np.stack([s["x2"] for s in samples])).permute(0, 3, 1, 2)
    assert torch.equal(raw["x2"], x2)
    batch = prepare_batch(raw, c.mean, c.std)
    for key in ("x1", "x2", "x2s"):
        assert batch[key].dtype == torch.float32
        assert torch.allclose(batch[key].double(), normalised(raw[key], c), atol=1e-6, rtol=0)
    # x3: composited from the uint8 x2 with the next image's x2 as background, then normalised
    x3 = composite_reference(x2, raw["m"], torch.roll(x2, -1, 0), raw["m_hat"], raw["t"])
    assert torch.allclose(batch["x3"].double(), normalised(x3, c), atol=1e-6, rtol=0)
    assert torch.equal(batch["boxes3"], raw["boxes3"]) and "m_hat" not in batch
    with pytest.raises(ValueError, match="x1 must be a uint8 .* from PretrainCollator"):
        prepare_batch(batch, c.mean, c.std)


def test_composite_is_the_per_image_paste_for_any_shift():
    g = torch.Generator().manual_seed(0)
    b, h, w = 6, 12, 17
    for dtype in (torch.uint8, torch.float32):
        x2 = torch.randint(0, 256, (b, 3, h, w), generator=g).to(dtype)
        x_b = torch.randint(0, 256, (b, 3, h, w), generator=g).to(dtype)
        m = torch.rand(b, h, w, generator=g) < 0.5
        m_hat = torch.rand(b, h, w, generator=g) < 0.5  # not a subset of shift(m): the empty pixels show
        t = torch.tensor([[0, 0], [3, -2], [-5, 4], [16, 11], [-17, 0], [40, -40]])  # on, past and beyond the edge
        got = composite_depositioned(x2, m, x_b, m_hat, t)
        assert got.dtype == dtype and torch.equal(got, composite_reference(x2, m, x_b, m_hat, t))
    with pytest.raises(ValueError, match=r"t must be \(B, 2\)"):
        composite_depositioned(x2, m, x_b, m_hat, t[:, :1])


def test_collator_d3ssl_keys_shapes_and_composite():
    c = cfg()
    samples = batch_of(c)
    batch = collate_and_prepare(c, samples)
    assert set(batch) == {"x1", "x2", "x2s", "x3", "boxes1", "boxes2", "boxes2s", "boxes3", "image_id"}
    assert batch["x1"].shape == (3, 3, 64, 64) and batch["x2s"].shape == (3, 3, 32, 32)
    assert batch["x3"].shape == (3, 3, 64, 64) and batch["boxes3"].shape == (3, 4, 4)
    assert batch["x1"].dtype == torch.float32 and batch["boxes1"].dtype == torch.float32
    assert batch["image_id"].tolist() == [10, 11, 12]
    # x3 shows the next image's x2 outside m̂ and the shifted x2 inside it (Eq. 8)
    m_hat = torch.from_numpy(samples[0]["m_hat"])
    assert torch.allclose(batch["x3"][0][:, ~m_hat], batch["x2"][1][:, ~m_hat])
    tx, ty = samples[0]["t"]
    ys, xs = torch.nonzero(m_hat, as_tuple=True)
    assert torch.allclose(batch["x3"][0][:, ys, xs], batch["x2"][0][:, ys - ty, xs - tx])
    # normalised: the mean colour maps to ~0
    mean = torch.tensor(c.mean).view(3, 1, 1)
    assert batch["x2"].abs().max() < 3.0 / min(c.std) and mean.shape == (3, 1, 1)


def test_collator_variants_and_batch_of_one():
    c = cfg(depositioning=False)
    batch = collate_and_prepare(c, batch_of(c, 2))
    assert set(batch) == {"x1", "x2", "x2s", "boxes1", "boxes2", "boxes2s", "image_id"}
    s = cfg(views="soco", crop_scale=(0.6, 1.0), prc=False, prm=False, rbj=False, soco_cutout=True,
            box_jitter=True, depositioning=False)
    batch = collate_and_prepare(s, batch_of(s, 2))
    assert set(batch) == {"x1", "x2", "boxes1", "boxes2", "image_id", "proposal_ids1", "proposal_ids2"}
    c = cfg()
    samples = batch_of(c, 1)
    one = collate_and_prepare(c, samples)
    assert one["x3"].shape == (1, 3, 64, 64)
    # a batch of one pastes onto its own x2 upside down
    x2 = torch.from_numpy(samples[0]["x2"]).permute(2, 0, 1)[None]
    m, m_hat, t = (torch.from_numpy(samples[0][k])[None] for k in ("m", "m_hat", "t"))
    x3 = composite_reference(x2, m, x2.flip(2), m_hat, t)
    assert torch.allclose(one["x3"].double(), normalised(x3, c), atol=1e-6, rtol=0)


@pytest.mark.parametrize("row", [
    dict(prc=False, prm=False, rbj=False), dict(prc=False, prm=False, rbj=False, soco_cutout=True),
    dict(prc=True, prm=False, rbj=False, box_jitter=True), dict(prc=True, prm=False, rbj=False),
    dict(prc=True, prm=False, rbj=True), dict(prc=True, prm=True, rbj=True)])
def test_every_tab5_row_is_a_config(row):
    c = cfg(depositioning=False, **row)
    batch = collate_and_prepare(c, batch_of(c, 2))
    assert batch["x1"].shape == (2, 3, 64, 64)


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="views"):
        PretrainDataConfig(views="bogus")
    with pytest.raises(ValueError, match="alternatives"):
        PretrainDataConfig(prc=True, soco_cutout=True)
    with pytest.raises(ValueError, match="depositioning"):
        PretrainDataConfig(views="soco")
    with pytest.raises(ValueError, match="unknown PretrainDataConfig keys"):
        PretrainDataConfig.from_dict({"prcc": True})
    c = PretrainDataConfig.from_dict({"crop_scale": [0.6, 1.0], "views": "soco", "depositioning": False})
    assert c.crop_scale == (0.6, 1.0)
    assert PretrainDataConfig.from_dict(dataclasses.asdict(c)) == c


# --- the colour ops against straightforward references: same draws; same pixels, or within the
# documented tolerance where a faster primitive rounds differently ---

def photo_like(seed, size=96):
    """A smooth colour image with edges and noise (blur and hue act on both)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.stack([np.sin(6 * xx + seed), np.cos(5 * yy), np.sin(4 * (xx + yy))], -1) * 90 + 128
    base[size // 3: size // 2, size // 4:] = rng.uniform(0, 255, 3)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


IMAGES = [photo_like(s) for s in range(3)] + [IMG, np.full((40, 50, 3), 128, np.uint8)]


def hue_reference(img, factor):
    """Hue in OpenCV's 8-bit HSV (H in 0..179), shifted with integer arithmetic."""
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
    hsv[..., 0] = ((hsv[..., 0].astype(np.int16) + int(round(factor * 180))) % 180).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def blur_reference(img, sigma):
    """Exact Gaussian convolution in float64: OpenCV's uint8 kernel size rule (round(6 sigma + 1) | 1),
    weights exp(-x^2 / 2 sigma^2) normalised, reflect-101 border, rounded once at the end."""
    k = int(round(6 * sigma + 1)) | 1
    x = np.arange(k) - (k - 1) / 2
    w = np.exp(-x ** 2 / (2 * sigma ** 2))
    w /= w.sum()
    r = k // 2
    a = np.pad(img.astype(np.float64), ((r, r), (r, r), (0, 0)), mode="reflect")  # numpy's reflect = reflect-101
    a = sum(w[i] * a[i:i + img.shape[0]] for i in range(k))
    a = sum(w[i] * a[:, i:i + img.shape[1]] for i in range(k))
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def color_augment_reference(img, rng, c, view):
    """SoCo's colour augmentation with the first implementation's primitives, the draws in the documented
    order: jitter test, op order, 4 factors, grayscale test, blur test, sigma, solarize test."""
    bj, cj, sj, hj = c.color_jitter
    do_jitter = rng.random() < c.color_jitter_p
    order = rng.permutation(4)
    factors = (rng.uniform(max(0.0, 1 - bj), 1 + bj), rng.uniform(max(0.0, 1 - cj), 1 + cj),
               rng.uniform(max(0.0, 1 - sj), 1 + sj), rng.uniform(-hj, hj))
    do_gray, do_blur = rng.random() < c.grayscale_p, rng.random() < c.blur_p[view]
    sigma = rng.uniform(*c.blur_sigma)
    do_solarize = rng.random() < c.solarize_p[view]
    assert 1 - bj <= factors[0] <= 1 + bj and 1 - cj <= factors[1] <= 1 + cj and 1 - sj <= factors[2] <= 1 + sj
    assert -hj <= factors[3] <= hj and c.blur_sigma[0] <= sigma <= c.blur_sigma[1]
    out = img
    if do_jitter:
        for op in order:
            f = factors[op]
            gray = cv2.cvtColor(out, cv2.COLOR_RGB2GRAY)
            if op == 0:
                out = cv2.convertScaleAbs(out, alpha=f, beta=0)
            elif op == 1:
                out = cv2.convertScaleAbs(out, alpha=f, beta=(1 - f) * float(gray.mean()))
            elif op == 2:
                out = cv2.addWeighted(out, f, cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB), 1 - f, 0)
            elif f != 0:
                out = hue_reference(out, f)
    if do_gray:
        out = cv2.cvtColor(cv2.cvtColor(out, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    if do_blur:
        out = cv2.GaussianBlur(out, (0, 0), sigmaX=sigma)
    if do_solarize:
        out = np.where(out >= 128, 255 - out, out).astype(np.uint8)
    return out, do_blur


def test_hue_contrast_mean_and_solarize_equal_their_references():
    for img in IMAGES:
        for shift in range(-18, 19):  # every shift U(-0.1, 0.1) of a turn can round to
            assert np.array_equal(_adjust_hue(img, shift / 180), hue_reference(img, shift / 180)), shift
        assert _gray_mean(img) == float(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).mean())
    x = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert np.array_equal(solarize(np.dstack([x, x[::-1], x.T])),
                          np.where(np.dstack([x, x[::-1], x.T]) >= 128, 255 - np.dstack([x, x[::-1], x.T]),
                                   np.dstack([x, x[::-1], x.T])))


def test_blur_is_within_one_grey_level_of_the_exact_gaussian():
    """The documented tolerance: gaussian_blur (float separable filter) is within 1 of the exact float64
    convolution; cv2.GaussianBlur's fixed-point path, which it replaces, within 2; so they differ by <= 2."""
    rng = np.random.default_rng(0)
    worst_new = worst_cv = 0
    for img in IMAGES:
        for sigma in np.concatenate([[0.1, 0.5, 1.0, 2.0], rng.uniform(0.1, 2.0, 6)]):
            k = gaussian_ksize(sigma)
            assert np.array_equal(cv2.GaussianBlur(img, (0, 0), sigma), cv2.GaussianBlur(img, (k, k), sigma))
            ref = blur_reference(img, sigma).astype(int)
            new, old = gaussian_blur(img, sigma), cv2.GaussianBlur(img, (0, 0), sigmaX=sigma)
            assert new.dtype == np.uint8 and new.shape == img.shape
            worst_new = max(worst_new, np.abs(new - ref).max())
            worst_cv = max(worst_cv, np.abs(old - ref).max())
            assert np.abs(new.astype(int) - old).max() <= 2
    assert worst_new <= 1 and worst_cv <= 2
    assert gaussian_ksize(0.1) == 3 and gaussian_ksize(1.0) == 7 and gaussian_ksize(2.0) == 13


@pytest.mark.parametrize("view", [0, 1])
def test_color_augment_is_the_reference_with_the_same_draws(view):
    """Bit-exact unless the blur fires (then within 2 grey levels); the generator ends in the same state."""
    c = PretrainDataConfig(solarize_p=(0.3, 0.5), grayscale_p=0.3, blur_p=(0.5, 0.5))
    exact = 0
    for seed in range(60):
        img = IMAGES[seed % len(IMAGES)]
        rng_a, rng_b = np.random.default_rng(seed), np.random.default_rng(seed)
        got = color_augment(img, rng_a, c, view)
        want, blurred = color_augment_reference(img, rng_b, c, view)
        assert rng_a.random() == rng_b.random()  # the same number of draws
        diff = np.abs(got.astype(int) - want).max()
        assert diff <= (2 if blurred else 0), (seed, diff)
        exact += not blurred
    assert exact > 0


def test_views_without_blur_are_unchanged_by_the_fast_ops():
    """With the blur off, a whole sample (colour, PRC, PRM, RBJ, masks) is the reference pipeline's bit
    for bit: the colour ops are checked above, the region ops in test_data_region_aug.py."""
    c = cfg(blur_p=(0.0, 0.0), solarize_p=(0.5, 0.5), grayscale_p=0.5)
    for seed in range(6):
        s = make_views(IMG, PROPS, c, np.random.default_rng(seed))
        rng = np.random.default_rng(seed)
        crop = draw_crop(PROPS, 96, 128, c, rng)
        _, clipped = select_proposals(PROPS, crop, c.num_proposals, c.min_crop_overlap, rng)
        flip1, flip2 = rng.random(2) < c.flip_p
        color_augment_reference(np.zeros((2, 2, 3), np.uint8), rng, c, 0)  # x1's draws
        want, _ = color_augment_reference(resize_view(IMG, crop, 64, flip2), rng, c, 1)
        assert np.array_equal(s["x2"], want)


def test_chw_batch_is_the_transpose():
    rng = np.random.default_rng(0)
    for ch in (1, 3, 4, 5):
        ims = [rng.integers(0, 256, (7, 9, ch)).astype(np.uint8) for _ in range(3)]
        ims[1] = ims[1][:, ::-1]  # not contiguous
        out = chw_batch(ims)
        assert out.flags["C_CONTIGUOUS"] and np.array_equal(out, np.stack(ims).transpose(0, 3, 1, 2))
    with pytest.raises(ValueError, match="image 1"):
        chw_batch([ims[0], ims[0][:5]])
