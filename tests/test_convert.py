"""Converters in (docs/transfer.md): fake checkpoints in each official layout, mapped tensor by tensor."""
import argparse

import pytest
import torch
from safetensors.torch import save_file

import d3ssl_zoo
from d3ssl_zoo.convert import convert_checkpoint, detect_layout, read_checkpoint
from d3ssl_zoo.convert.cli import register
from d3ssl_zoo.convert.layouts import extract_backbone, key_prefixes


@pytest.fixture(scope="module")
def trunk():
    """A d3ssl_r18c4 trunk with distinct values in every tensor (BN stats included)."""
    g = torch.Generator().manual_seed(0)
    sd = d3ssl_zoo.create_model("d3ssl_r18c4", num_classes=0).state_dict()
    return {k: (torch.randn(v.shape, generator=g) if v.is_floating_point() else v + 7) for k, v in sd.items()}


def _with_prefix(sd, prefix, shift=0.0):
    return {prefix + k: (v + shift if v.is_floating_point() else v) for k, v in sd.items()}


def soco_ckpt(t):
    model = {**_with_prefix(t, "module.encoder."), **_with_prefix(t, "module.encoder_k.", 1.0),
             "module.projector.linear1.weight": torch.randn(16, 512), "module.projector.bn1.weight": torch.ones(16),
             "module.projector_k.linear1.weight": torch.randn(16, 512),
             "module.predictor.linear1.weight": torch.randn(16, 8),
             "module.predictor.linear2.weight": torch.randn(8, 16)}
    return {"opt": argparse.Namespace(arch="resnet18", lr=1.0, output_dir="x"), "model": model,
            "optimizer": {"state": {}, "param_groups": []}, "epoch": 3}


def pixpro_ckpt(t):
    model = {**_with_prefix(t, "module.encoder."), **_with_prefix(t, "module.encoder_k.", 1.0),
             "module.projector.linear1.weight": torch.randn(16, 512, 1, 1),
             "module.projector_k.linear1.weight": torch.randn(16, 512, 1, 1),
             "module.value_transform.weight": torch.randn(8, 8, 1, 1)}
    return {"opt": argparse.Namespace(arch="resnet18"), "model": model, "epoch": 2}


def moco_ckpt(t):
    sd = {**_with_prefix(t, "module.encoder_q."), **_with_prefix(t, "module.encoder_k.", 1.0),
          "module.encoder_q.fc.0.weight": torch.randn(512, 512), "module.encoder_q.fc.0.bias": torch.randn(512),
          "module.encoder_q.fc.2.weight": torch.randn(128, 512), "module.encoder_q.fc.2.bias": torch.randn(128),
          "module.queue": torch.randn(128, 64), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    return {"epoch": 200, "arch": "resnet18", "state_dict": sd, "optimizer": {"state": {}, "param_groups": []}}


def densecl_ckpt(t):
    sd = {**_with_prefix(t, "encoder_q.0."), **_with_prefix(t, "backbone."), **_with_prefix(t, "encoder_k.0.", 1.0),
          "encoder_q.1.mlp.0.weight": torch.randn(8, 512), "queue": torch.randn(8, 16), "queue2": torch.randn(8, 16)}
    return {"meta": {"epoch": 800, "config": "model = dict(type='DenseCL')"}, "state_dict": sd}


def timm_ckpt(t):
    sd = {**t, "fc.weight": torch.randn(10, 512), "fc.bias": torch.randn(10)}
    return {"epoch": 5, "arch": "resnet18", "state_dict": sd, "version": 2,
            "args": argparse.Namespace(model="resnet18")}


def torchvision_ckpt(t):
    return {**t, "fc.weight": torch.randn(1000, 512), "fc.bias": torch.randn(1000)}


def _load_folder(out):
    return d3ssl_zoo.create_model("d3ssl_r18c4", pretrained=True, num_classes=0,
                                  pretrained_cfg_overlay=dict(file=str(out / "model.safetensors")))


def _assert_same(model, trunk):
    sd = model.state_dict()
    assert set(sd) == set(trunk)
    for k, v in trunk.items():
        assert torch.equal(sd[k], v), k


@pytest.mark.parametrize("build, layout", [
    (soco_ckpt, "soco"), (pixpro_ckpt, "pixpro"), (moco_ckpt, "moco"), (densecl_ckpt, "densecl"),
    (timm_ckpt, "timm"), (torchvision_ckpt, "torchvision")])
def test_each_layout_is_detected_and_mapped_tensor_by_tensor(tmp_path, trunk, build, layout):
    src = tmp_path / f"{layout}.pth"
    torch.save(build(trunk), src)
    report = convert_checkpoint(src, tmp_path / "out", "auto")
    assert report.layout == layout and report.detected
    assert report.model_name == "d3ssl_r18c4" and report.num_tensors == len(trunk)
    _assert_same(_load_folder(tmp_path / "out"), trunk)
    # the momentum encoder (shifted by +1) must not have been picked
    assert layout in ("timm", "torchvision") or report.ignored_prefixes


def test_explicit_format_matches_auto_and_reports_dropped_head(tmp_path, trunk):
    src = tmp_path / "moco.pth"
    torch.save(moco_ckpt(trunk), src)
    report = convert_checkpoint(src, tmp_path / "out", "moco")
    assert not report.detected
    assert sorted(report.dropped_under_prefix) == ["fc.0.bias", "fc.0.weight", "fc.2.bias", "fc.2.weight"]
    assert report.ignored_prefixes["module.encoder_k."] == len(trunk)
    assert "fc.0.weight" in report.summary()
    _assert_same(_load_folder(tmp_path / "out"), trunk)


def test_densecl_extracted_backbone_and_safetensors_input(tmp_path, trunk):
    src = tmp_path / "extracted.pth"
    torch.save({"state_dict": dict(trunk), "author": "DenseCL"}, src)
    convert_checkpoint(src, tmp_path / "a", "densecl")
    _assert_same(_load_folder(tmp_path / "a"), trunk)
    st = tmp_path / "plain.safetensors"
    save_file(dict(trunk), str(st))
    assert convert_checkpoint(st, tmp_path / "b").layout == "torchvision"
    _assert_same(_load_folder(tmp_path / "b"), trunk)


def test_soco_resnet50_becomes_soco_r50c4(tmp_path):
    sd = d3ssl_zoo.create_model("d3ssl_r50c4", num_classes=0).state_dict()
    src = tmp_path / "soco50.pth"
    torch.save(soco_ckpt(sd), src)
    report = convert_checkpoint(src, tmp_path / "out")
    assert report.model_name == "soco_r50c4"
    loaded = d3ssl_zoo.load_backbone(str(tmp_path / "out"))
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in sd.items())


def test_missing_bn_counters_are_filled_and_reported(tmp_path, trunk):
    src = tmp_path / "old.pth"
    torch.save({k: v for k, v in trunk.items() if not k.endswith("num_batches_tracked")}, src)
    report = convert_checkpoint(src, tmp_path / "out")
    n = sum(k.endswith("num_batches_tracked") for k in trunk)
    assert report.filled_num_batches_tracked == n > 0 and "num_batches_tracked" in report.summary()


def test_unknown_layout_lists_the_prefixes_it_saw(tmp_path, trunk):
    src = tmp_path / "odd.pth"
    torch.save({"weights": _with_prefix(trunk, "net.student.")}, src)
    with pytest.raises(ValueError) as e:
        convert_checkpoint(src, tmp_path / "out")
    msg = str(e.value)
    assert "unknown checkpoint layout" in msg and "weights" in msg
    ckpt = read_checkpoint(src)
    with pytest.raises(ValueError, match="net.student"):
        detect_layout({"model": ckpt["weights"]})


def test_wrong_explicit_format_names_what_it_expected(trunk):
    with pytest.raises(ValueError, match="no ResNet stem found under prefixes"):
        extract_backbone(densecl_ckpt(trunk), "moco")
    with pytest.raises(ValueError, match=r"expects the weights under one of \['model'"):
        extract_backbone(moco_ckpt(trunk), "soco")
    with pytest.raises(ValueError, match="unknown format"):
        extract_backbone(moco_ckpt(trunk), "byol")


class Opaque:
    """Any class other than argparse.Namespace: unpickling it could run code."""


def test_non_weights_files_are_refused_without_unpickling(tmp_path):
    src = tmp_path / "evil.pth"
    torch.save({"model": {"conv1.weight": torch.zeros(1)}, "obj": Opaque()}, src)
    with pytest.raises(ValueError, match="weights_only=True"):
        read_checkpoint(src)
    pkl = tmp_path / "model.pkl"
    pkl.write_bytes(b"not read")
    with pytest.raises(ValueError, match="never unpickles"):
        read_checkpoint(pkl)
    with pytest.raises(FileNotFoundError):
        read_checkpoint(tmp_path / "missing.pth")


def test_architecture_outside_the_zoo_is_an_error(tmp_path):
    import torchvision
    src = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), src)
    with pytest.raises(ValueError, match=r"basic blocks \(3, 4, 6, 3\)"):
        convert_checkpoint(src, tmp_path / "out")


def test_key_prefixes_groups_by_trunk_start():
    keys = ["module.encoder_q.conv1.weight", "module.encoder_q.layer1.0.conv1.weight", "module.queue", "queue2"]
    assert key_prefixes(keys) == {"module.encoder_q.": 2, "module.queue": 1, "queue2": 1}


def test_cli_convert(tmp_path, trunk, capsys):
    src = tmp_path / "moco.pth"
    torch.save(moco_ckpt(trunk), src)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["convert", str(src), "--out", str(tmp_path / "out")])
    assert args.func(args) == 0
    assert "layout moco (detected) -> d3ssl_r18c4" in capsys.readouterr().out
    args = parser.parse_args(["convert", str(tmp_path / "nope.pth"), "--out", str(tmp_path / "x")])
    assert args.func(args) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_cli_convert_of_a_truncated_file_names_it(tmp_path, trunk, capsys, suffix):
    src = tmp_path / f"cut{suffix}"
    if suffix == ".pth":
        torch.save(moco_ckpt(trunk), src)
    else:
        save_file({k: v.contiguous() for k, v in trunk.items()}, str(src))
    src.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["convert", str(src), "--out", str(tmp_path / "out")])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert f"cannot read {src}" in err and "truncated" in err and "download or copy it again" in err
    assert not (tmp_path / "out").exists()


def test_random_bytes_are_not_reported_as_unsafe_objects(tmp_path):
    src = tmp_path / "noise.pth"
    src.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError, match=r"noise\.pth with torch.load: the file is neither a zip archive nor a pickle"):
        read_checkpoint(src)
