"""SoCo's C4 data path for ``views: soco`` (docs/design.md, "The SoCo baseline"): the crop retry rule,
per-view padding paired by proposal id (SoCo's correspondence matrix and its loss weighting), the
cutout square clipped to the view; and the D3SSL views unchanged by it."""
import hashlib

import numpy as np
import pytest
import torch

import d3ssl_zoo
from d3ssl_zoo.data import PretrainCollator, PretrainDataConfig, prepare_batch
from d3ssl_zoo.data import views as views_mod
from d3ssl_zoo.data.region_aug import soco_cutout
from d3ssl_zoo.data.views import (
    crop_retry_needs,
    make_views,
    soco_correspondence,
    soco_proposal_ids,
)
from d3ssl_zoo.method.losses import byol_loss
from d3ssl_zoo.method.soco import SoCo, matched_byol_loss

IMG = np.random.default_rng(0).integers(0, 255, (96, 128, 3)).astype(np.uint8)
PROPS = np.array([[4, 4, 60, 50], [50, 30, 120, 90], [10, 40, 70, 95], [0, 0, 128, 96], [70, 5, 100, 35]], np.float32)
# Four proposals that every crop of scale >= 0.6 overlaps (each spans the image's middle): K always qualify
CENTRAL = np.array([[20, 20, 100, 80], [30, 10, 90, 90], [10, 30, 118, 70], [40, 25, 88, 75]], np.float32)
SMALL = dict(image_size=64, small_size=32)
SOCO = dict(views="soco", crop_scale=(0.6, 1.0), prc=False, prm=False, rbj=False, soco_cutout=True,
            depositioning=False)
EARLIER = dict(soco_crop_retry="k", soco_pairing="position", soco_cutout_clip="box")


def cfg(*bases, **kw):
    """The config of ``SMALL``, then each mapping of ``bases``, then ``kw`` (later ones win)."""
    merged = dict(SMALL)
    for b in bases:
        merged.update(b)
    return PretrainDataConfig(**{**merged, **kw})


# --- the crop retry rule (SoCo's contrast/data/dataset.py, ImageFolderImageAsymBboxCutout) ----------

def test_crop_retry_needs_halve_from_half_k_for_soco_only():
    assert crop_retry_needs(cfg(SOCO)) == [2, 1, 1, 1, 1]  # K = 4, SoCo's max_tries 5
    assert crop_retry_needs(cfg(SOCO, num_proposals=8)) == [4, 2, 1, 1, 1]
    assert crop_retry_needs(cfg(SOCO, num_proposals=1, crop_attempts=3)) == [1, 1, 1]
    assert crop_retry_needs(cfg(SOCO, num_proposals=5, crop_attempts=2)) == [2, 1]
    assert crop_retry_needs(cfg(SOCO, soco_crop_retry="k")) == [4] * 5
    assert crop_retry_needs(cfg()) == [4] * 5  # the D3SSL views keep K at every draw


def _count_draws(monkeypatch, c, proposals, seed=0):
    calls = []
    real = views_mod.random_resized_crop_params

    def counted(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(views_mod, "random_resized_crop_params", counted)
    views_mod.draw_crop(proposals, 96, 128, c, np.random.default_rng(seed))
    return len(calls)


def test_crop_is_redrawn_while_fewer_than_the_draws_need_qualify(monkeypatch):
    whole = np.array([[0, 0, 128, 96]], np.float32)  # overlaps every crop: exactly one qualifies
    assert _count_draws(monkeypatch, cfg(SOCO), whole) == 2  # 1 < 2 at the first draw, 1 >= 1 at the second
    assert _count_draws(monkeypatch, cfg(SOCO, EARLIER), whole) == 5  # 1 < K at every draw
    assert _count_draws(monkeypatch, cfg(), whole) == 5
    assert _count_draws(monkeypatch, cfg(SOCO), np.tile(whole, (2, 1))) == 1
    empty = np.array([[5, 5, 5, 5]], np.float32)  # no area: never qualifies, the last draw is kept
    assert _count_draws(monkeypatch, cfg(SOCO), empty) == 5


# --- padding and pairing by proposal id (select_props, pad_bboxs_with_common, get_correspondence_matrix) --

def test_enough_proposals_are_k_distinct_ones_shared_by_both_views():
    for seed in range(20):
        ids1, ids2 = soco_proposal_ids(np.arange(6), 4, np.random.default_rng(seed))
        assert np.array_equal(ids1, ids2) and len(set(ids1.tolist())) == 4 and ids1.dtype == np.int64
        assert soco_correspondence(ids1, ids2).sum() == 4


def test_one_proposal_repeated_in_both_views_gives_k_squared_pairs():
    ids1, ids2 = soco_proposal_ids(np.array([3]), 4, np.random.default_rng(0))
    assert ids1.tolist() == [3, 3, 3, 3] and ids2.tolist() == [3, 3, 3, 3]
    c = soco_correspondence(ids1, ids2)
    assert c.shape == (4, 4) and c.all()  # 4 x 4 = 16 pairs, as SoCo's correspondence matrix


def test_each_view_draws_its_own_repeats_after_the_proposals_in_order():
    differ = 0
    for seed in range(40):
        ids1, ids2 = soco_proposal_ids(np.array([2, 5]), 4, np.random.default_rng(seed))
        assert ids1[:2].tolist() == [2, 5] and ids2[:2].tolist() == [2, 5]
        assert set(ids1[2:].tolist()) <= {2, 5} and set(ids2[2:].tolist()) <= {2, 5}
        c = soco_correspondence(ids1, ids2)
        for pid in (2, 5):  # a proposal seen c1 times in view 1 and c2 in view 2 gives c1 * c2 pairs
            c1, c2 = int((ids1 == pid).sum()), int((ids2 == pid).sum())
            assert c[np.ix_(ids1 == pid, ids2 == pid)].sum() == c1 * c2
        assert c.sum() == sum(int((ids1 == q).sum()) * int((ids2 == q).sum()) for q in (2, 5))
        differ += not np.array_equal(ids1, ids2)
    assert differ > 10  # independent draws per view


def test_sample_boxes_follow_their_ids():
    c = cfg(SOCO, flip_p=0.0, soco_cutout=False)
    props = PROPS[:2]  # two proposals: K = 4 needs two repeats per view
    s = make_views(IMG, props, c, np.random.default_rng(4))
    assert s["proposal_ids1"].shape == (4,) and set(s["proposal_ids1"].tolist()) <= {0, 1}
    w = 64 / 128, 64 / 96
    want1 = props[s["proposal_ids1"]] * np.array([w[0], w[1], w[0], w[1]], np.float32)  # view 1: whole image
    assert np.allclose(s["boxes1"], want1, atol=1e-4)
    for i, j in zip(*np.nonzero(soco_correspondence(s["proposal_ids1"], s["proposal_ids2"]))):
        assert s["proposal_ids1"][i] == s["proposal_ids2"][j]
    # the same proposal has the same view-2 box wherever it is repeated
    for pid in set(s["proposal_ids2"].tolist()):
        rows = s["boxes2"][s["proposal_ids2"] == pid]
        assert np.allclose(rows, rows[0])


def _soco_c4_loss(p, z, corr):
    """SoCo's regression_loss_bboxs (contrast/models/SoCo_C4.py), restated: -2 mean_b(sum C sim / sum C)."""
    b, k, _ = corr.shape
    pn = torch.nn.functional.normalize(p, dim=1).view(b, k, -1)
    zn = torch.nn.functional.normalize(z, dim=1).view(b, k, -1)
    sim = torch.bmm(pn, zn.transpose(1, 2))
    c = corr.float()
    return -2 * ((sim * c).sum((1, 2)) / (c.sum((1, 2)) + 1e-6)).mean()


def test_matched_loss_weighs_repeats_c1_times_c2_as_soco():
    g = torch.Generator().manual_seed(0)
    p, z = torch.randn(8, 5, generator=g, dtype=torch.float64), torch.randn(8, 5, generator=g, dtype=torch.float64)
    ids1 = torch.tensor([[7, 7, 7, 9], [1, 1, 1, 1]])
    ids2 = torch.tensor([[7, 9, 9, 9], [1, 1, 1, 1]])
    corr = soco_correspondence(ids1, ids2)
    assert corr[0].sum() == 3 + 3 and corr[1].sum() == 16
    got = matched_byol_loss(p, z, corr)
    cos = torch.nn.functional.cosine_similarity(p[:, None], z[None], dim=2)  # (8, 8)
    image0 = [2 - 2 * cos[i, j] for i in range(4) for j in range(4) if ids1[0, i] == ids2[0, j]]
    image1 = [2 - 2 * cos[4 + i, 4 + j] for i in range(4) for j in range(4)]
    want = (torch.stack(image0).mean() + torch.stack(image1).mean()) / 2
    assert got.item() == pytest.approx(want.item(), abs=1e-6)
    assert got.item() == pytest.approx(_soco_c4_loss(p, z, corr).item() + 2, abs=1e-5)


def test_distinct_ids_give_the_position_loss():
    g = torch.Generator().manual_seed(1)
    p, z = torch.randn(12, 6, generator=g), torch.randn(12, 6, generator=g)
    ids = torch.tensor([[0, 3, 1, 2], [5, 6, 7, 8], [2, 1, 0, 4]])
    got = matched_byol_loss(p, z, soco_correspondence(ids, ids))
    assert got.item() == pytest.approx(byol_loss(p, z).mean().item(), abs=1e-6)


def test_soco_model_pairs_by_id_and_equals_position_pairing_for_distinct_ids():
    torch.manual_seed(0)
    m = SoCo(d3ssl_zoo.create_model("d3ssl_r18c4"), proj_hidden_dim=32, proj_dim=16, pred_hidden_dim=32, roi_size=4)
    c = cfg(SOCO)
    samples = [dict(make_views(IMG, CENTRAL, c, np.random.default_rng(i)), image_id=i) for i in range(2)]
    batch = prepare_batch(PretrainCollator(c)(samples), c.mean, c.std)
    assert batch["proposal_ids1"].dtype == torch.int64 and batch["proposal_ids1"].shape == (2, 4)
    with torch.no_grad():
        by_id = m(batch)["loss"]
        by_position = m({k: v for k, v in batch.items() if not k.startswith("proposal_ids")})["loss"]
        assert by_id.item() == pytest.approx(by_position.item(), abs=1e-5)
        repeated = dict(batch, proposal_ids1=torch.zeros(2, 4, dtype=torch.int64),
                        proposal_ids2=torch.zeros(2, 4, dtype=torch.int64))
        p1 = m.predictor(m.student(batch["x1"], batch["boxes1"], 4))
        p2 = m.predictor(m.student(batch["x2"], batch["boxes2"], 4))
        z1, z2 = m.teacher(batch["x1"], batch["boxes1"], 4), m.teacher(batch["x2"], batch["boxes2"], 4)
        all_pairs = torch.ones(2, 4, 4, dtype=torch.bool)
        want = matched_byol_loss(p1, z2, all_pairs) + matched_byol_loss(p2, z1, all_pairs)
        assert m(repeated)["loss"].item() == pytest.approx(want.item(), abs=1e-5)
    out = m(batch)
    out["loss"].backward()
    assert m.predictor[0].weight.grad is not None


@pytest.mark.parametrize("seed", range(6))
def test_k_distinct_proposals_give_the_earlier_sample(seed):
    """With K proposals qualifying at the first draw, SoCo's path draws what the earlier one drew (the
    cutout aside: the earlier one clipped it to the box)."""
    rng = lambda: np.random.default_rng([3, 1, seed])  # noqa: E731
    for cut in (dict(soco_cutout=False), dict(soco_cutout=True, soco_cutout_clip="box")):
        new = make_views(IMG, CENTRAL, cfg(**{**SOCO, **cut}), rng())
        old = make_views(IMG, CENTRAL, cfg(**{**SOCO, **EARLIER, **cut}), rng())
        assert set(new) == set(old) | {"proposal_ids1", "proposal_ids2"}
        for k in old:
            assert np.array_equal(new[k], old[k]), k
        assert np.array_equal(new["proposal_ids1"], new["proposal_ids2"])
        assert len(set(new["proposal_ids1"].tolist())) == 4


def test_no_qualifying_proposal_pairs_the_whole_image_with_the_whole_crop():
    c = cfg(SOCO, flip_p=0.0, soco_cutout=False)
    s = make_views(IMG, np.array([[5, 5, 5, 5]], np.float32), c, np.random.default_rng(0))
    assert np.allclose(s["boxes1"], [[0, 0, 64, 64]] * 4) and np.allclose(s["boxes2"], [[0, 0, 64, 64]] * 4)
    assert soco_correspondence(s["proposal_ids1"], s["proposal_ids2"]).all()


# --- the cutout (RandomCutoutInBbox, contrast/data/transform_ops.py) --------------------------------

def _reference_cutout(img, box_px, rng, p, area_range):
    """RandomCutoutInBbox on an integer pixel box ``x0 .. x1 - 1``, written out, draws in the documented order."""
    out = img.copy()
    x0, y0, x1, y1 = box_px
    apply = rng.random() < p
    frac = rng.uniform(*area_range)
    cx, cy = int(rng.integers(x0, x1)), int(rng.integers(y0, y1))
    if apply:
        half = int(round(np.sqrt(frac * (x1 - x0) * (y1 - y0)))) // 2
        for y in range(cy - half, cy + half + 1):
            for x in range(cx - half, cx + half + 1):
                if 0 <= y < img.shape[0] and 0 <= x < img.shape[1]:
                    out[y, x] = 0
    return out


def test_cutout_at_the_border_is_clipped_to_the_image_not_the_box():
    img = np.full((64, 64, 3), 50, np.uint8)
    box = np.array([[44, 44, 64, 64]], np.float32)  # the view's bottom-right corner
    outside_box = 0
    for seed in range(60):
        got = soco_cutout(img, box, np.random.default_rng(seed), fill=0, p=1.0, clip_to_image=True)
        want = _reference_cutout(img, (44, 44, 64, 64), np.random.default_rng(seed), 1.0, (0.1, 0.3))
        assert np.array_equal(got, want), seed
        ys, xs = np.nonzero((got != img).any(-1))
        assert ys.size > 0 and xs.max() <= 63 and ys.max() <= 63
        outside_box += int((xs < 44).any() or (ys < 44).any())
    assert outside_box > 5  # squares centred near the box's edge reach past it


def test_cutout_square_has_an_odd_side_and_probability_p():
    img = np.full((100, 100, 3), 50, np.uint8)
    box = np.array([[30, 30, 70, 70]], np.float32)  # 40 x 40: half side 3..5, always inside the view
    fired = 0
    for seed in range(200):
        got = soco_cutout(img, box, np.random.default_rng(seed), fill=0, p=0.5, clip_to_image=True)
        ys, xs = np.nonzero((got != img).any(-1))
        if xs.size:
            fired += 1
            side = xs.max() - xs.min() + 1
            assert side % 2 == 1 and side == ys.max() - ys.min() + 1 and xs.size == side * side
            assert 2 * (round(np.sqrt(0.1 * 1600)) // 2) + 1 <= side <= 2 * (round(np.sqrt(0.3 * 1600)) // 2) + 1
            assert 30 <= (xs.min() + xs.max()) / 2 < 70  # centred on a pixel of the box
    assert 70 < fired < 130


def test_soco_views_place_the_cutout_on_the_box_as_the_flipped_view_shows_it():
    props = np.array([[0, 10, 30, 80]], np.float32)  # the image's left edge; view 2 is the whole image, flipped
    base = dict(SOCO, crop_scale=(1.0, 1.0), flip_p=1.0, num_proposals=1, blur_p=(0.0, 0.0), color_jitter_p=0.0,
                grayscale_p=0.0, solarize_p=(0.0, 0.0))
    for seed in range(10):
        cut = make_views(IMG, props, cfg(base, cutout_p=1.0), np.random.default_rng(seed))
        plain = make_views(IMG, props, cfg(base, soco_cutout=False), np.random.default_rng(seed))
        assert np.array_equal(cut["boxes2"], plain["boxes2"]) and np.array_equal(cut["x1"], plain["x1"])
        x0, y0, x1, y1 = cut["boxes2"][0]
        assert x0 > 40  # flipped: the box is on the view's right
        ys, xs = np.nonzero((cut["x2"] != plain["x2"]).any(-1))
        assert xs.size > 0
        half = np.sqrt(0.3 * (x1 - x0) * (y1 - y0)) / 2 + 1
        assert xs.min() >= x0 - half and xs.max() <= x1 + half and ys.min() >= y0 - half and ys.max() <= y1 + half


def test_d3ssl_cutout_ablation_follows_the_clip_key():
    """Tab. 5 row 2 (SoCo's cutout in D3SSL's views): with ``soco_cutout_clip: image`` SoCo's square may leave
    the box, with ``box`` it never does. x1 carries the whole-view box, so only x1's cut pixels are checked
    against the proposal as view 1 shows it."""
    base = dict(prc=False, prm=False, rbj=False, box_jitter=False, depositioning=False, num_proposals=1,
                cutout_p=1.0, crop_scale=(1.0, 1.0), flip_p=0.0, blur_p=(0.0, 0.0), color_jitter_p=0.0,
                grayscale_p=0.0, solarize_p=(0.0, 0.0))
    props = np.array([[20, 20, 44, 44]], np.float32)
    left = {"image": 0, "box": 0}
    for clip in left:
        for seed in range(20):
            c = cfg(base, soco_cutout=True, soco_cutout_clip=clip)
            cut = make_views(IMG, props, c, np.random.default_rng(seed))
            plain = make_views(IMG, props, cfg(base, soco_cutout=False), np.random.default_rng(seed))
            x0, y0, x1, y1 = cut["boxes1"][0]
            ys, xs = np.nonzero((cut["x1"] != plain["x1"]).any(-1))
            assert xs.size > 0
            left[clip] += bool(xs.min() < np.floor(x0) or xs.max() >= np.ceil(x1)
                               or ys.min() < np.floor(y0) or ys.max() >= np.ceil(y1))
    assert left["box"] == 0 and left["image"] > 0


# --- the batch and the configuration ----------------------------------------------------------------

def test_collator_carries_the_ids_only_for_id_pairing():
    c = cfg(SOCO)
    samples = [dict(make_views(IMG, PROPS, c, np.random.default_rng(i)), image_id=i) for i in range(3)]
    batch = PretrainCollator(c)(samples)
    assert set(batch) == {"x1", "x2", "boxes1", "boxes2", "image_id", "proposal_ids1", "proposal_ids2"}
    assert torch.equal(batch["proposal_ids2"][1], torch.from_numpy(samples[1]["proposal_ids2"]))
    old = cfg(SOCO, EARLIER)
    samples = [dict(make_views(IMG, PROPS, old, np.random.default_rng(i)), image_id=i) for i in range(2)]
    assert set(PretrainCollator(old)(samples)) == {"x1", "x2", "boxes1", "boxes2", "image_id"}
    d3 = [dict(make_views(IMG, PROPS, cfg(), np.random.default_rng(0)), image_id=0)]
    assert not any(k.startswith("proposal_ids") for k in d3[0])


def test_config_rejects_unknown_soco_settings():
    for key in ("soco_crop_retry", "soco_pairing", "soco_cutout_clip"):
        with pytest.raises(ValueError, match=key):
            PretrainDataConfig(**{key: "bogus"})
    c = PretrainDataConfig()
    assert (c.soco_crop_retry, c.soco_pairing, c.soco_cutout_clip) == ("halving", "id", "image")


# --- the D3SSL views (and the earlier SoCo path) are the samples they were ----------------------------

def _digest(sample):
    h = hashlib.sha256()
    for k in sorted(sample):
        a = np.ascontiguousarray(sample[k])
        h.update(k.encode())
        h.update(str(a.dtype).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


PINNED = {  # sha256 (first 16 hex) of every array of make_views(IMG, props, cfg, default_rng([7, 0, seed]))
    ("d3ssl", "five"): ["42ae1f52654f5999", "282455391b728366", "76cf19c23ce5ad26"],
    ("d3ssl", "one"): ["65348d64d6efa662", "c1625a10493efe0a", "789677bc66226ef8"],
    ("d3ssl_cutout", "five"): ["c84708500c2904d5", "fb379bebe5a74472", "6b47c23c109cd576"],
    ("d3ssl_cutout", "one"): ["466dfaef9a0566e6", "892dcb66c7da8e59", "0a591fb5eff1b4da"],
    ("soco_earlier", "five"): ["839ba53c2207e630", "d1bfd812b785e895", "7c8aaea9560f08f4"],
    ("soco_earlier", "one"): ["61be67f20eb28e82", "e74f12d23e2254df", "4339eb6039ed428a"],
}
CASES = {"d3ssl": dict(prc_rule="side"),
         "d3ssl_cutout": dict(prc=False, prm=False, rbj=False, soco_cutout=True, depositioning=False,
                              soco_cutout_clip="box"),
         "soco_earlier": dict(SOCO, **EARLIER)}


@pytest.mark.parametrize("case,props", sorted(PINNED))
def test_pinned_samples_are_unchanged(case, props):
    """Pinned before SoCo's data path was added: the D3SSL views (with PRC, under the side rule that was then
    the only one, or with SoCo's cutout clipped to the box as it then was; five proposals or one) and the
    earlier SoCo path (``soco_crop_retry: k``, ``soco_pairing: position``, ``soco_cutout_clip: box``) give
    the same bytes for the same seed."""
    p = PROPS if props == "five" else PROPS[4:5]
    got = [_digest(make_views(IMG, p, cfg(**CASES[case]), np.random.default_rng([7, 0, s]))) for s in range(3)]
    assert got == PINNED[(case, props)]
