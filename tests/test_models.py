import subprocess
import sys

import pytest
import timm
import torch
import torchvision
from torchvision.ops import roi_align

import d3ssl_zoo
from d3ssl_zoo import D3SSLResNet


@pytest.fixture(scope="module")
def r18():
    torch.manual_seed(0)
    return d3ssl_zoo.create_model("d3ssl_r18c4").eval()


@pytest.fixture(scope="module")
def r50():
    torch.manual_seed(0)
    return d3ssl_zoo.create_model("d3ssl_r50c4").eval()


def _image(b=2, size=96, seed=0):
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


# --- timm conformance -------------------------------------------------------------------------

def test_timm_sees_the_zoo():
    assert timm.is_model("d3ssl_r50c4") and timm.is_model("soco_r50c4") and timm.is_model("d3ssl_r18c4")
    assert set(timm.list_pretrained("d3ssl*")) >= {"d3ssl_r50c4.coco_800ep", "d3ssl_r50c4.oimini_800ep"}
    m = timm.create_model("d3ssl_r50c4")
    assert isinstance(m, D3SSLResNet)
    assert m.pretrained_cfg["tag"] == "coco_800ep"  # the default tag
    assert m.num_classes == 0 and isinstance(m.fc, torch.nn.Identity)
    assert m.num_features == 2048 and m.c4_channels == 1024


def test_headless_and_fresh_head(r18):
    x = _image()
    assert r18(x).shape == (2, 512)
    m = d3ssl_zoo.create_model("d3ssl_r18c4", num_classes=7)
    assert m(x).shape == (2, 7)
    m.reset_classifier(3)
    assert m(x).shape == (2, 3)
    m.reset_classifier(0)
    assert m(x).shape == (2, 512)


def test_state_dict_keys_are_torchvision_resnet50(r50):
    tv = torchvision.models.resnet50()
    ours = set(r50.state_dict())
    theirs = set(tv.state_dict())
    assert ours == theirs - {"fc.weight", "fc.bias"}
    assert set(timm.create_model("resnet50").state_dict()) == theirs


@pytest.mark.parametrize("name,tv_name", [("d3ssl_r50c4", "resnet50"), ("d3ssl_r18c4", "resnet18")])
def test_torchvision_parity(name, tv_name):
    torch.manual_seed(1)
    tv = getattr(torchvision.models, tv_name)().eval()
    ours = d3ssl_zoo.create_model(name, num_classes=1000).eval()
    ours.load_state_dict(tv.state_dict(), strict=True)
    x = _image(2, 64)
    with torch.no_grad():
        assert torch.equal(ours(x), tv(x))


def test_forward_backward_and_grad_checkpointing():
    torch.manual_seed(0)
    m = d3ssl_zoo.create_model("d3ssl_r18c4").eval()  # eval: BN uses running stats, so passes are comparable
    x = _image(2, 64)
    boxes = [torch.tensor([[0.0, 0.0, 40.0, 40.0]]), torch.tensor([[8.0, 8.0, 60.0, 50.0]])]

    def run(checkpointing):
        m.zero_grad()
        m.set_grad_checkpointing(checkpointing)
        out = m.forward_regions(x, boxes)
        out.square().sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}

    out, grads = run(False)
    out_ck, grads_ck = run(True)
    assert grads["conv1.weight"].abs().sum() > 0 and grads["layer4.0.downsample.0.weight"].abs().sum() > 0
    assert torch.allclose(out, out_ck, atol=1e-6)
    for n in grads:
        assert torch.allclose(grads[n], grads_ck[n], atol=1e-5, rtol=1e-4), n


def test_features_only_and_intermediates(r18):
    f = d3ssl_zoo.create_model("d3ssl_r18c4", features_only=True, out_indices=(3, 4)).eval()
    x = _image(1, 64)
    outs = f(x)
    assert [o.shape for o in outs] == [(1, 256, 4, 4), (1, 512, 2, 2)]
    assert f.feature_info.channels() == [256, 512]
    full = timm.create_model("d3ssl_r18c4", features_only=True)  # timm's default: every stage
    assert full.feature_info.channels() == [64, 64, 128, 256, 512]
    assert full.feature_info.reduction() == [2, 4, 8, 16, 32]
    final, inter = r18.forward_intermediates(x)
    assert [t.shape[1] for t in inter] == [64, 64, 128, 256, 512]
    assert torch.allclose(r18.forward_c4(x), inter[3], atol=1e-6)


@pytest.mark.parametrize("size", [64, 160])
def test_forward_backward_at_two_input_sizes(size):
    torch.manual_seed(0)
    m = d3ssl_zoo.create_model("d3ssl_r18c4", num_classes=5)
    x = _image(2, size)
    assert m.forward_features(x).shape == (2, 512, size // 32, size // 32)
    out = m(x)
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.mean().backward()
    assert [n for n, p in m.named_parameters() if p.grad is None] == []


def test_pretrained_cfg_sizes_match_the_network(r18):
    for name in ("d3ssl_r50c4", "soco_r50c4", "d3ssl_r18c4"):
        cfg = timm.get_pretrained_cfg(name)
        assert cfg.input_size == (3, 224, 224) and cfg.pool_size == (7, 7), name
    cfg = r18.pretrained_cfg
    with torch.no_grad():
        feats = r18.forward_features(torch.zeros(1, *cfg["input_size"]))
    assert feats.shape[-2:] == cfg["pool_size"]
    assert r18.get_submodule(cfg["first_conv"]).in_channels == 3
    assert r18.get_classifier() is r18.get_submodule(cfg["classifier"])


@pytest.mark.filterwarnings("ignore:`torch.jit")  # deprecated upstream, still what timm tests
@pytest.mark.parametrize("name,c4_channels", [("d3ssl_r18c4", 256), ("d3ssl_r50c4", 1024), ("soco_r50c4", 1024)])
def test_torchscript_and_trace_match_eager(name, c4_channels):
    torch.manual_seed(0)
    m = timm.create_model(name).eval()
    scripted = torch.jit.script(m)
    example = _image(1, 64)
    traced = torch.jit.trace_module(m, {"forward": example, "forward_features": example})
    assert (m.c4_channels, m.c4_stride, m.c5_stride) == (c4_channels, 16, 32)
    assert (scripted.c4_channels, scripted.c4_stride, scripted.c5_stride) == (c4_channels, 16, 32)
    x = _image(2, 96, seed=1)
    with torch.no_grad():
        want, want_features = m(x), m.forward_features(x)
        for compiled in (scripted, traced):
            assert torch.allclose(compiled(x), want, atol=1e-5)
            assert torch.allclose(compiled.forward_features(x), want_features, atol=1e-5)


def test_fx_feature_extraction(r18):
    fx = timm.models.create_feature_extractor(r18, return_nodes={"layer3": "c4", "layer4": "c5"})
    x = _image(1, 64)
    with torch.no_grad():
        out = fx(x)
        assert torch.allclose(out["c4"], r18.forward_c4(x), atol=1e-6)
        assert torch.allclose(out["c5"], r18.forward_features(x), atol=1e-6)


# --- region API --------------------------------------------------------------------------------

def test_forward_c4_shape(r50):
    assert r50.forward_c4(_image(1, 64)).shape == (1, 1024, 4, 4)


def test_forward_regions_matches_direct_roi_align(r18):
    x = _image(2, 96)
    boxes = [torch.tensor([[0.0, 0.0, 50.0, 60.0], [10.5, 20.0, 90.0, 95.0]]),
             torch.tensor([[30.0, 5.0, 70.0, 40.0]])]
    with torch.no_grad():
        got = r18.forward_regions(x, boxes)
        c4 = r18.forward_c4(x)
        rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], 1) for i, b in enumerate(boxes)])
        feats = roi_align(c4, rois, output_size=14, spatial_scale=1 / 16, sampling_ratio=0, aligned=True)
        want = r18.layer4(feats).mean(dim=(2, 3))
        as_rois = r18.forward_regions(x, rois)
    assert got.shape == (3, 512)
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.allclose(as_rois, got, atol=1e-6)


def test_forward_regions_c5_matches_direct_roi_align(r18):
    x = _image(2, 96)
    boxes = [torch.tensor([[0.0, 0.0, 96.0, 96.0]]), torch.tensor([[30.0, 5.0, 70.0, 40.0], [0, 0, 20, 20.0]])]
    with torch.no_grad():
        got = r18.forward_regions_c5(x, boxes)
        c5 = r18.forward_features(x)
        rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], 1) for i, b in enumerate(boxes)])
        want = roi_align(c5, rois, output_size=7, spatial_scale=1 / 32, sampling_ratio=0, aligned=True).mean((2, 3))
    assert got.shape == (3, 512)
    assert torch.allclose(got, want, atol=1e-6)


def test_region_embeddings_do_not_depend_on_batch_neighbours(r18):
    x = _image(2, 96)
    b0 = torch.tensor([[4.0, 4.0, 60.0, 70.0]])
    with torch.no_grad():
        both = r18.forward_regions(x, [b0, torch.tensor([[0.0, 0.0, 30.0, 30.0]])])
        alone = r18.forward_regions(x[:1], [b0])
    assert torch.allclose(both[:1], alone, atol=1e-5)


def test_empty_boxes(r18):
    x = _image(2, 64)
    empty = [torch.zeros(0, 4), torch.zeros(0, 4)]
    assert r18.forward_regions(x, empty).shape == (0, 512)
    assert r18.forward_regions_c5(x, torch.zeros(0, 5)).shape == (0, 512)
    one = r18.forward_regions(x, [torch.zeros(0, 4), torch.tensor([[0.0, 0.0, 32.0, 32.0]])])
    assert one.shape == (1, 512)


@pytest.mark.parametrize("boxes,match", [
    ([torch.zeros(1, 3), torch.zeros(0, 4)], r"boxes\[0\] must have shape \(N, 4\)"),
    ([torch.zeros(1, 4, dtype=torch.long), torch.zeros(0, 4)], "floating point"),
    ([torch.tensor([[0.0, float("nan"), 4.0, 4.0]]), torch.zeros(0, 4)], "NaN"),
    ([torch.tensor([[10.0, 0.0, 4.0, 4.0]]), torch.zeros(0, 4)], "negative size"),
    ([torch.zeros(1, 4)], "got 1 box lists for a batch of 2"),
    (torch.tensor([[2.0, 0.0, 0.0, 4.0, 4.0]]), r"batch indices in \[0, 1\]"),
    (torch.zeros(3, 4), r"shape \(N, 5\)"),
    ("not boxes", "list of"),
    ([torch.zeros(0, 4), torch.tensor([[0.0, 0.0, 8.0, 8.0], [40.0, 5.0, 50.0, 9.0]])],
     r"box 1 \(image 1 of the batch\) \[40.0, 5.0, 50.0, 9.0\] lies entirely outside the 32x32"),
    ([torch.tensor([[4.0, 4.0, 4.0, 9.0]]), torch.zeros(0, 4)], r"box 0 .* has zero size .*32x32"),
])
def test_bad_boxes_raise_clear_errors(r18, boxes, match):
    with pytest.raises(ValueError, match=match):
        r18.forward_regions(_image(2, 32), boxes)
    with pytest.raises(ValueError, match=match):
        r18.forward_regions_c5(_image(2, 32), boxes)


@pytest.mark.parametrize("images,match", [
    (torch.randn(3, 32, 32), r"\(B, 3, H, W\) float32/float16/bfloat16 tensor, got \(3, 32, 32\).*x\[None\]"),
    (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), r"float tensor, got dtype torch.uint8.*x.float\(\) / 255"),
])
def test_bad_images_raise_clear_errors(r18, images, match):
    boxes = [torch.tensor([[0.0, 0.0, 16.0, 16.0]])]
    with pytest.raises(ValueError, match=match):
        r18.forward_regions(images, boxes)
    with pytest.raises(ValueError, match=match):
        r18.forward_regions_c5(images, boxes)


# --- registry ----------------------------------------------------------------------------------

EXPECTED_TAGS = {
    "d3ssl_r50c4.coco_800ep", "d3ssl_r50c4.oimini_800ep", "soco_r50c4.coco_800ep", "soco_r50c4.oimini_800ep",
    "d3ssl_r50c4.coco_200ep", "d3ssl_r50c4.coco_200ep_dconly", "d3ssl_r50c4.coco_200ep_dconly_noaug",
    "d3ssl_r50c4.coco_200ep_dconly_cutout", "d3ssl_r50c4.coco_200ep_dconly_jitter_prc",
    "d3ssl_r50c4.coco_200ep_dconly_prc", "d3ssl_r50c4.coco_200ep_dconly_prc_rbj", "soco_r50c4.oimini_200ep",
    "soco_r50c4.oimini_200ep_d3aug",
}


def test_registry_lists_every_paper_checkpoint():
    assert set(d3ssl_zoo.list_pretrained()) == EXPECTED_TAGS
    assert d3ssl_zoo.list_pretrained("soco*")[0] == "soco_r50c4.coco_800ep"
    assert d3ssl_zoo.list_models() == ["d3ssl_r18c4", "d3ssl_r50c4", "soco_r50c4"]
    assert set(timm.list_pretrained("d3ssl*")) | set(timm.list_pretrained("soco*")) == EXPECTED_TAGS


def test_pretrained_cfg_carries_metadata():
    cfg = d3ssl_zoo.get_pretrained_cfg("d3ssl_r50c4.oimini_800ep")
    assert cfg["hf_hub_id"] == "d3ssl-zoo/d3ssl_r50c4.oimini_800ep"
    assert cfg["num_classes"] == 0 and cfg["license"] == "apache-2.0"
    assert cfg["paper_ids"] == "arXiv:2303.16947"
    assert cfg["recipe"] == "d3ssl_zoo/recipes/d3ssl_r50c4.oimini_800ep.yaml"
    assert cfg["reported"]["oknn_top1_top5"] == [73.1, 90.1]
    assert cfg["reported"]["disturbed_oknn_top1_top5"] == [55.8, 73.4]
    assert cfg["sha256"] == "" and cfg["published"] is False
    cr = d3ssl_zoo.get_pretrained_cfg("d3ssl_r50c4.coco_200ep_dconly")
    assert cr["reported"]["coupling_rate"] == 1.33 and cr["reported"]["cr_mcs_stage"] == "layer4 (assumed)"
    for name in EXPECTED_TAGS:
        timm_cfg = timm.get_pretrained_cfg(name)
        assert timm_cfg.num_classes == 0 and timm_cfg.label_names is None
        assert timm_cfg.hf_hub_id == f"d3ssl-zoo/{name}"


@pytest.mark.slow
def test_hub_org_env_override():
    code = ("import timm, d3ssl_zoo; print(timm.get_pretrained_cfg('soco_r50c4.coco_800ep').hf_hub_id,"
            " d3ssl_zoo.get_pretrained_cfg('soco_r50c4.coco_800ep')['hf_hub_id'])")
    env = {**__import__("os").environ, "D3SSL_ZOO_HUB_ORG": "my-lab"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["my-lab/soco_r50c4.coco_800ep"] * 2


@pytest.mark.parametrize("name,match", [
    ("d3ssl_r50", r"Unknown d3ssl_zoo model 'd3ssl_r50'.*Did you mean 'd3ssl_r50c4'"),
    ("d3ssl_r50c4.coco800", r"Unknown tag 'coco800'.*Did you mean 'd3ssl_r50c4.coco_800ep'"),
    ("d3ssl_r18c4.coco_800ep", r"Unknown tag.*none: this model has no pretrained tags"),
])
def test_unknown_names_suggest_close_ones(name, match):
    with pytest.raises(ValueError, match=match):
        d3ssl_zoo.create_model(name)


def test_init_matches_torchvision_not_timm_zero_init(r18):
    # every block's last BN starts at gamma = 1, as torchvision/MoCo/SoCo
    assert torch.equal(r18.layer4[1].bn2.weight, torch.ones(512))
    assert torch.equal(d3ssl_zoo.create_model("d3ssl_r50c4").layer3[0].bn3.weight, torch.ones(1024))


def test_region_align_keeps_box_precision_in_bf16():
    feats = (torch.arange(64, dtype=torch.float32) * 100).expand(64, 64).reshape(1, 1, 64, 64)  # 100 per cell in x
    rois = torch.tensor([[0.0, 1000.5, 300.25, 1010.5, 310.25]])
    full = d3ssl_zoo.region_align(feats, rois, 2, 16)
    half = d3ssl_zoo.region_align(feats.bfloat16(), rois, 2, 16)
    assert half.dtype == torch.bfloat16
    assert torch.allclose(half.float(), full, rtol=1e-2)
    shifted = d3ssl_zoo.region_align(feats, rois.bfloat16().float(), 2, 16)  # what bf16 coordinates would give
    assert (shifted - full).abs().max() > 1.0  # bf16 moves x1 = 1000.5 px to 1000 px


@pytest.mark.parametrize("output_size,stride", [(7, 32), (14, 16), (1, 8)])
def test_region_align_pooled_equals_roi_align_then_mean(output_size, stride):
    g = torch.Generator().manual_seed(output_size)
    feats = torch.randn(3, 5, 9, 13, generator=g, requires_grad=True)
    n = 150
    xy = torch.rand(n, 2, generator=g) * 300 - 60  # partly outside the map, as boxes near borders
    wh = torch.rand(n, 2, generator=g) ** 3 * 300  # from tiny to larger than the map
    rois = torch.cat([torch.randint(0, 3, (n, 1), generator=g).float(), xy, xy + wh], 1)
    rois[:4, 3:] = rois[:4, 1:3]  # zero-size boxes
    want = roi_align(feats, rois, output_size, 1 / stride, sampling_ratio=0, aligned=True).mean((2, 3))
    got = d3ssl_zoo.boxes.region_align_pooled(feats, rois, output_size, stride)
    assert torch.allclose(got, want, atol=1e-5)
    grad_want, = torch.autograd.grad(want.square().sum(), feats)
    grad_got, = torch.autograd.grad(got.square().sum(), feats)
    assert torch.allclose(grad_got, grad_want, atol=1e-4)
    assert d3ssl_zoo.boxes.region_align_pooled(feats, rois[:0], output_size, stride).shape == (0, 5)


def _square_at(top, left, size=128):
    x = torch.full((1, 3, size, size), 0.3)
    x[..., top:top + 30, left:left + 30] = -1.0
    return x


@pytest.mark.parametrize("mode, moves", [("zeros", True), ("circular", False)])
def test_padding_mode_decides_whether_features_tell_the_place(mode, moves):
    # One square on a flat background, shifted by whole C5 cells (stride 32): with zero padding the
    # borders mark the place and the square's RoI feature changes; circular padding is equivariant.
    torch.manual_seed(0)
    m = d3ssl_zoo.create_model("d3ssl_r18c4", padding_mode=mode).eval()
    assert m.padding_mode == mode and m.layer3[0].conv2.padding_mode == mode and m.conv1.padding_mode == mode
    assert m.layer3[0].downsample[0].padding_mode == "zeros"  # 1x1, no padding: nothing to change
    with torch.no_grad():
        a = m.forward_regions_c5(_square_at(40, 40), [torch.tensor([[40., 40., 70., 70.]])])
        b = m.forward_regions_c5(_square_at(72, 72), [torch.tensor([[72., 72., 102., 102.]])])
    change = ((a - b).norm() / a.norm()).item()
    assert (change > 0.05) if moves else (change < 1e-5), change


def test_padding_mode_leaves_the_weights_alone(r18):
    torch.manual_seed(0)
    circular = d3ssl_zoo.create_model("d3ssl_r18c4", padding_mode="circular")
    assert circular.state_dict().keys() == r18.state_dict().keys()
    assert all(torch.equal(v, r18.state_dict()[k]) for k, v in circular.state_dict().items())


def test_unknown_padding_mode_names_the_choices():
    with pytest.raises(ValueError, match=r"padding_mode must be one of .*'circular'.*got 'wrap'"):
        d3ssl_zoo.create_model("d3ssl_r18c4", padding_mode="wrap")
