"""Bad inputs to the zoo's public API: many boxes, bad images, bad num_classes, a folder holding the
user's own files, a broken config.json, and timm's hf-hub: loading offline. Each is refused with an
error that names the cause, or works; none crashes or returns NaN."""
import json

import pytest
import timm
import torch
from huggingface_hub.errors import LocalEntryNotFoundError

import d3ssl_zoo
import d3ssl_zoo.boxes
import d3ssl_zoo.models.d3ssl_resnet as d3ssl_resnet
from d3ssl_zoo import PretrainedWeightsError


@pytest.fixture(scope="module")
def r18():
    torch.manual_seed(0)
    return d3ssl_zoo.create_model("d3ssl_r18c4").eval()


def _boxes(n, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * (size / 2)
    return torch.cat([xy, xy + 8 + torch.rand(n, 2, generator=g) * (size / 2 - 8)], dim=1)


def _count_roi_align(monkeypatch):
    """Record the output size of every torchvision roi_align call the package makes."""
    sizes = []
    real = d3ssl_zoo.boxes.roi_align

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        sizes.append(out.numel())
        return out

    monkeypatch.setattr(d3ssl_zoo.boxes, "roi_align", spy)
    return sizes


# --- any number of boxes: torchvision's CPU roi_align crashes past 2**31 output elements --------------------------

def test_region_align_of_45000_boxes_calls_roi_align_below_2_to_the_31(monkeypatch):
    # 45,000 boxes x 256 channels x 14 x 14 is 2.26e9 output elements: one roi_align call with it dies with
    # SIGSEGV on the CPU. On the meta device the calls are planned exactly, without the 9 GB of memory.
    sizes = _count_roi_align(monkeypatch)
    c4 = torch.empty(1, 256, 14, 14, device="meta")
    rois = torch.empty(45_000, 5, device="meta")
    out = d3ssl_zoo.region_align(c4, rois, 14, 16)
    assert tuple(out.shape) == (45_000, 256, 14, 14)
    assert sum(sizes) == out.numel() > 2 ** 31
    assert len(sizes) > 1 and max(sizes) <= d3ssl_zoo.boxes.ROI_ALIGN_MAX_ELEMENTS < 2 ** 31


def test_forward_regions_pools_in_bounded_calls_with_the_one_call_result(r18, monkeypatch):
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    boxes = [_boxes(150, 64, seed=2), _boxes(130, 64, seed=3)]
    with torch.no_grad():
        one_call = r18.forward_regions(x, boxes)
        per_roi = r18.c4_channels * 14 * 14
        monkeypatch.setattr(d3ssl_zoo.boxes, "ROI_ALIGN_MAX_ELEMENTS", 40 * per_roi)
        sizes = _count_roi_align(monkeypatch)
        chunked = r18.forward_regions(x, boxes)
    assert len(sizes) == 7 and max(sizes) <= 40 * per_roi  # 280 boxes, 40 per call
    assert torch.equal(chunked, one_call)


def test_forward_regions_in_eval_runs_res5_on_bounded_passes(r18, monkeypatch):
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    boxes = [_boxes(45, 64, seed=5)]
    with torch.no_grad():
        one_pass = r18.forward_regions(x, boxes)
        monkeypatch.setattr(d3ssl_resnet, "REGIONS_PER_PASS", 10)
        sizes = _count_roi_align(monkeypatch)
        passes = r18.forward_regions(x, boxes)
    assert len(sizes) == 5 and max(sizes) == 10 * r18.c4_channels * 14 * 14
    assert torch.allclose(passes, one_pass, atol=1e-5, rtol=1e-5)


# --- silent nonsense refused -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("num_classes", [-1, -1000, 2.5])
def test_negative_or_fractional_num_classes_is_refused(num_classes):
    for create in (d3ssl_zoo.create_model, timm.create_model):
        with pytest.raises(ValueError, match=rf"num_classes must be an integer >= 0, got {num_classes}.*0 for the "
                                             r"headless backbone.*N for a freshly initialised N-way classifier"):
            create("d3ssl_r18c4", num_classes=num_classes)
    assert d3ssl_zoo.create_model("d3ssl_r18c4", num_classes=3).fc.out_features == 3


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_images_are_refused_by_the_region_api(r18, value):
    x = torch.randn(3, 3, 32, 32)
    x[1, 2, 5, 7] = value
    boxes = [torch.tensor([[0.0, 0.0, 16.0, 16.0]])] * 3
    for forward in (r18.forward_regions, r18.forward_regions_c5):
        with pytest.raises(ValueError, match=r"images \[1\] of the batch contain NaN or infinite values"):
            forward(x, boxes)


@pytest.mark.parametrize("images,match", [
    (torch.randn(1, 4, 32, 32), r"\(B, 3, H, W\) float32/float16/bfloat16 tensor \(RGB; drop an alpha channel "
                                r"with x\[:, :3\]\), got shape \(1, 4, 32, 32\) with 4 in the channel dimension"),
    (torch.randn(1, 1, 32, 32), r"float32/float16/bfloat16 tensor, got shape \(1, 1, 32, 32\) with 1 in"),
    (torch.randn(1, 3, 32, 32, dtype=torch.float64),
     r"\(B, 3, H, W\) float32/float16/bfloat16 tensor, got dtype torch.float64 .*convert with x.float\(\)"),
])
def test_wrong_channels_or_dtype_get_the_packages_error(r18, images, match):
    boxes = [torch.tensor([[0.0, 0.0, 16.0, 16.0]])]
    for call in (lambda: r18.forward_regions(images, boxes), lambda: r18.forward_regions_c5(images, boxes),
                 lambda: r18.forward_c4(images)):
        with pytest.raises(ValueError, match=match):
            call()


def test_float64_images_work_on_a_float64_model():
    model = d3ssl_zoo.create_model("d3ssl_r18c4").eval().double()
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        emb = model.forward_regions(x, [torch.tensor([[0.0, 0.0, 16.0, 16.0]], dtype=torch.float64)])
    assert emb.dtype == torch.float64 and emb.shape == (1, 512)


# --- save_pretrained keeps the user's own files ----------------------------------------------------------------------

@pytest.mark.parametrize("own", [("README.md",), ("config.json",), ("README.md", "config.json")])
def test_save_pretrained_refuses_a_folder_with_the_users_files(r18, tmp_path, own):
    texts = {"README.md": "# My project\n\nNotes I keep.\n", "config.json": '{"learning_rate": 0.1}\n'}
    for name in own:
        (tmp_path / name).write_text(texts[name])
    named = " and ".join(n for n in ("config.json", "README.md") if n in own)
    with pytest.raises(ValueError, match=rf"{tmp_path} already holds {named} not "
                                         r"written by save_pretrained.*overwrite=True"):
        d3ssl_zoo.save_pretrained(r18, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(own)  # nothing written, nothing replaced
    assert all((tmp_path / name).read_text() == texts[name] for name in own)

    d3ssl_zoo.save_pretrained(r18, tmp_path, overwrite=True)
    assert json.loads((tmp_path / "config.json").read_text())["architecture"] == "d3ssl_r18c4"
    assert (tmp_path / "model.safetensors").is_file()


def test_save_pretrained_writes_again_into_its_own_folder(r18, tmp_path):
    d3ssl_zoo.save_pretrained(r18, tmp_path / "export", tag="demo")
    d3ssl_zoo.save_pretrained(r18, tmp_path / "export", card_extra={"steps": 10})  # no overwrite= needed
    assert "| steps | 10 |" in (tmp_path / "export" / "README.md").read_text()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    d3ssl_zoo.save_pretrained(r18, tmp_path / "other")  # other files are not ours to judge
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


# --- messages that name the cause ------------------------------------------------------------------------------------

def test_invalid_config_json_is_named_with_line_and_column(r18, tmp_path):
    folder = d3ssl_zoo.save_pretrained(r18, tmp_path / "export")
    config = folder / "config.json"
    config.write_text('{\n  "architecture": "d3ssl_r18c4",\n  "num_classes": 0,\n}\n')
    with pytest.raises(ValueError, match=rf"{config}: not valid JSON at line 4, column 1: Expecting property name"):
        d3ssl_zoo.load_backbone(str(folder))
    config.write_text('{"num_classes": 0}\n')
    with pytest.raises(ValueError, match=rf"{config}: no \"architecture\""):
        d3ssl_zoo.load_backbone(str(folder))


def test_hf_hub_offline_without_cache_names_the_repo_and_the_way_out():
    with pytest.raises(PretrainedWeightsError) as info:
        timm.create_model("hf-hub:someone/not-cached-backbone", pretrained=True)
    text = str(info.value)
    assert "timm.create_model('hf-hub:someone/not-cached-backbone')" in text
    assert "Hub repo 'someone/not-cached-backbone'" in text and "HF_HUB_OFFLINE is set" in text
    assert "timm.create_model('local-dir:/path/to/folder', pretrained=True)" in text
    assert "pretrained_cfg_overlay=dict(file='/path/to/model.safetensors')" in text
    assert isinstance(info.value, LocalEntryNotFoundError)  # code that caught huggingface_hub's error still does
