"""Coupling rate (paper Sec. 3.1), positional MCS (Sec. 3.2), plots and tables."""

import numpy as np
import pytest
import timm
import torch
from torch import nn

from d3ssl_zoo.evaluation.coupling import (
    compose_pair,
    coupling_rate,
    pair_coupling_cosines,
    pair_coupling_rates,
    run_coupling,
    sample_pairs,
)
from d3ssl_zoo.evaluation.mcs import positional_mcs, run_mcs, tile_3x3
from d3ssl_zoo.evaluation.plots import format_table, oknn_table, plot_per_stage, stage_table


class StageNet(nn.Module):
    """A ResNet-shaped toy: stem (stride 4) and layer1..layer4 (strides 4, 8, 16, 32)."""

    def __init__(self, kernel: int, padding_mode: str = "zeros", width: int = 8, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)

        def conv(cin, stride):
            return nn.Sequential(nn.Conv2d(cin, width, kernel, stride, kernel // 2, padding_mode=padding_mode),
                                 nn.ReLU())

        self.stem = nn.Sequential(conv(3, 2), conv(width, 2))
        self.layer1 = conv(width, 1)
        self.layer2 = conv(width, 2)
        self.layer3 = nn.Sequential(conv(width, 2), conv(width, 1))
        self.layer4 = nn.Sequential(conv(width, 2), conv(width, 1), conv(width, 1))

    def forward(self, x):
        return self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))


class BlurNet(nn.Module):
    """The same shape with fixed 3x3 box filters: spatial mixing only, no learned weights."""

    def __init__(self):
        super().__init__()

        def blur(stride):
            return nn.AvgPool2d(3, stride, 1)

        self.stem = nn.Sequential(blur(2), blur(2))
        self.layer1 = blur(1)
        self.layer2 = blur(2)
        self.layer3 = nn.Sequential(blur(2), blur(1))
        self.layer4 = nn.Sequential(blur(2), blur(1), blur(1))

    def forward(self, x):
        return self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))


def crops(n, size=64, seed=0, colour=None):
    """Random textures; with ``colour`` (0, 1, 2) one RGB channel dominates (a distinct "class")."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        c = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        if colour is not None:
            c = (c // 4).astype(np.uint8)
            c[..., colour] += 180
        out.append(c)
    return out


def test_compose_pair_geometry():
    a, b = crops(2, 32)
    im1, im2, box_a, box_b = compose_pair(a, b, gap=32)
    assert im1.shape == im2.shape == (32, 96, 3)
    assert np.array_equal(im1[:, :32], a) and np.array_equal(im1[:, 64:], b)
    assert np.array_equal(im2[:, :32], a) and not im2[:, 32:].any() and not im1[:, 32:64].any()
    assert box_a.tolist() == [0, 0, 32, 32] and box_b.tolist() == [64, 0, 96, 32]
    with pytest.raises(ValueError, match="square RGB of one size"):
        compose_pair(a, b[:16], gap=0)


def test_coupling_rate_is_one_without_spatial_mixing():
    net = StageNet(kernel=1).eval()
    cr = coupling_rate(net, crops(3, seed=1), crops(3, seed=2), gap=32)
    assert list(cr) == ["layer1", "layer2", "layer3", "layer4"]
    for v in cr.values():
        assert v == pytest.approx(1.0, abs=1e-6)


def test_coupling_rate_exceeds_one_with_spatial_mixing():
    # A red, B blue: at C5 the box filters' receptive field covers both objects
    cr = coupling_rate(BlurNet(), crops(4, seed=1, colour=0), crops(4, seed=2, colour=2), gap=0)
    assert cr["layer4"] > 1.1


def test_coupling_cosines_are_the_rate_and_bound_it():
    a, b = crops(4, seed=1, colour=0), crops(4, seed=2, colour=2)
    cos = pair_coupling_cosines(BlurNet(), a, b, gap=0)
    rates = pair_coupling_rates(BlurNet(), a, b, gap=0)
    for s, c in cos.items():
        assert sorted(c) == ["a1_a2", "a1_b", "a2_b"] and all(v.shape == (4,) for v in c.values())
        np.testing.assert_allclose(rates[s], c["a1_b"] / c["a2_b"], rtol=1e-6)
        pos = c["a2_b"] > 0  # always so for post-ReLU features; BlurNet's early stages are not
        assert np.all(rates[s][pos] <= (1 + 1e-6) / c["a2_b"][pos])  # cos(A1, B) <= 1
    assert np.all(cos["layer4"]["a2_b"] > 0)
    # B leaks into A at C5: A's own feature moves, towards B
    assert cos["layer4"]["a1_a2"].max() < 0.999 and np.all(cos["layer4"]["a1_b"] > cos["layer4"]["a2_b"])
    # no spatial mixing: B leaves A's feature where it was
    still = pair_coupling_cosines(StageNet(kernel=1).eval(), a, b, gap=32)
    for c in still.values():
        np.testing.assert_allclose(c["a1_a2"], 1.0, atol=1e-5)
        np.testing.assert_allclose(c["a1_b"], c["a2_b"], atol=1e-5)


def test_tile_3x3_geometry():
    (c,) = crops(1, 32)
    image, boxes = tile_3x3(c)
    assert image.shape == (96, 96, 3)
    assert np.array_equal(image[32:64, 64:96], c)
    assert boxes[4].tolist() == [32, 32, 64, 64]
    with pytest.raises(ValueError, match="square RGB"):
        tile_3x3(c[:, :16])


def test_mcs_is_one_with_circular_padding_on_stride_aligned_tiles():
    net = StageNet(kernel=3, padding_mode="circular").eval()
    mcs = positional_mcs(net, crops(2, 32))
    for v in mcs.values():
        assert v == pytest.approx(1.0, abs=1e-5)


def test_mcs_below_one_with_zero_padding_at_depth():
    net = StageNet(kernel=3, padding_mode="zeros").eval()
    mcs = positional_mcs(net, crops(2, 32))
    assert mcs["layer4"] < 0.999
    assert mcs["layer4"] < mcs["layer1"]


def test_sample_pairs_have_different_classes():
    labels = [0, 0, 1, 2, 2, 1]
    pairs = sample_pairs(labels, 50, np.random.default_rng(0))
    assert pairs.shape == (50, 2)
    assert all(labels[a] != labels[b] for a, b in pairs)
    with pytest.raises(ValueError, match="at least 2 classes"):
        sample_pairs([3, 3], 4, np.random.default_rng(0))


@pytest.fixture(scope="module")
def split(tmp_path_factory, write_coco):
    return write_coco(tmp_path_factory.mktemp("coco"), "val", 4, hw=(96, 128), seed=3)


def test_run_coupling_and_mcs_on_a_dataset(split):
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=0).eval()
    cr = run_coupling(model, *split, num_pairs=3, object_size=32, min_object_size=16, progress=False)
    assert set(cr["per_stage"]) == {"layer1", "layer2", "layer3", "layer4"}
    assert cr["num_pairs"] == 3 and all(np.isfinite(v) for v in cr["per_stage"].values())
    assert set(cr["per_stage_cosines"]) == set(cr["per_stage"])
    for c in cr["per_stage_cosines"].values():
        assert sorted(c) == ["a1_a2", "a1_b", "a2_b"] and all(-1 - 1e-6 <= v <= 1 + 1e-6 for v in c.values())
    for s, v in cr["per_stage"].items():  # post-ReLU features: every cosine is positive, so CR <= 1 / cos(A2, B)
        assert v <= cr["per_stage_max_rate"][s] * (1 + 1e-6)
    again = run_coupling(model, *split, num_pairs=3, object_size=32, min_object_size=16, progress=False)
    assert again["per_stage"] == cr["per_stage"]
    m = run_mcs(model, *split, num_crops=2, tile_size=32, min_object_size=16, progress=False)
    assert all(-1 <= v <= 1 + 1e-6 for v in m["per_stage"].values())
    assert not model.training


def test_run_coupling_and_mcs_bad_inputs(split):
    model = StageNet(kernel=1)
    with pytest.raises(ValueError, match="multiples of 32"):
        run_coupling(model, *split, object_size=40, progress=False)
    with pytest.raises(ValueError, match="multiple of 32"):
        run_mcs(model, *split, tile_size=50, progress=False)
    with pytest.raises(ValueError, match="lower --min-object-size"):
        run_mcs(model, *split, min_object_size=1000, progress=False)
    with pytest.raises(ValueError, match="need num_crops >= 1.*got num_crops=-3"):
        run_mcs(model, *split, num_crops=-3, progress=False)
    with pytest.raises(ValueError, match="tile_size >= 32.*tile_size=0"):
        run_mcs(model, *split, tile_size=0, progress=False)
    with pytest.raises(ValueError, match="batch_size >= 1.*batch_size=0"):
        run_coupling(model, *split, batch_size=0, progress=False)


def test_plot_and_tables(tmp_path):
    per = {"a": {"layer1": 1.0, "layer2": 1.1}, "b": {"layer1": 1.02, "layer2": 1.3}}
    png = plot_per_stage(per, "coupling_rate", str(tmp_path / "sub" / "cr.png"))
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    t = stage_table(per, "coupling_rate")
    assert "layer2" in t and "1.300" in t
    o = oknn_table({"m": {"oknn": {"top1": 70.2, "top5": 88.3}}})
    assert "O-KNN Top-1" in o and "70.20" in o and "Disturbed" not in o
    assert format_table(["x"], [[0.5]]).splitlines()[-1].strip() == "0.500"


def test_eval_mode_restores_the_models_state_also_on_error():
    from d3ssl_zoo.evaluation.features import eval_mode

    net = torch.nn.Sequential(torch.nn.BatchNorm1d(2)).train()
    with pytest.raises(RuntimeError, match="boom"):
        with eval_mode(net):
            assert not net.training and not net[0].training
            raise RuntimeError("boom")
    assert net.training and net[0].training
    net.eval()
    with eval_mode(net):
        pass
    assert not net.training
