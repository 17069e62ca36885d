"""Export (docs/transfer.md): detectron2 C4 pickle and configs, torchvision and mmdet files, round trips."""
import argparse
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import d3ssl_zoo
from d3ssl_zoo.convert import (
    backbone_state_dict,
    convert_checkpoint,
    detectron2_r50c4_keys,
    export_state_dict,
    match_detectron2_keys,
)
from d3ssl_zoo.convert.cli import register
from d3ssl_zoo.convert.detectron2 import (
    detectron2_config,
    from_detectron2_key,
    to_detectron2_key,
    write_detectron2_pickle,
)


@pytest.fixture(scope="module")
def r50():
    g = torch.Generator().manual_seed(1)
    model = d3ssl_zoo.create_model("d3ssl_r50c4", num_classes=0)
    with torch.no_grad():
        for v in model.state_dict().values():
            if v.is_floating_point():
                v.copy_(torch.randn(v.shape, generator=g))
    return model


def test_key_renaming_follows_detectron2_names():
    cases = {"conv1.weight": "stem.conv1.weight", "bn1.running_var": "stem.conv1.norm.running_var",
             "layer1.0.conv2.weight": "res2.0.conv2.weight", "layer1.0.bn3.bias": "res2.0.conv3.norm.bias",
             "layer3.5.bn1.weight": "res4.5.conv1.norm.weight",
             "layer4.0.downsample.0.weight": "res5.0.shortcut.weight",
             "layer2.0.downsample.1.running_mean": "res3.0.shortcut.norm.running_mean"}
    for tv, d2 in cases.items():
        assert to_detectron2_key(tv) == d2 and from_detectron2_key(d2) == tv
    with pytest.raises(ValueError, match="not a ResNet trunk key"):
        to_detectron2_key("projector.linear1.weight")


def test_pickle_has_detectron2_format_and_round_trips(tmp_path, r50):
    sd = backbone_state_dict(r50)
    path = tmp_path / "d2.pkl"
    report = export_state_dict(sd, "detectron2", path, configs=False)
    with open(path, "rb") as f:   # our own file, just written by this test
        data = pickle.load(f)
    assert set(data) == {"model", "__author__", "matching_heuristics"}
    assert data["matching_heuristics"] is True and data["__author__"] != "Caffe2"
    assert report.num_tensors == len(data["model"]) == len(sd)
    assert all(isinstance(v, np.ndarray) for v in data["model"].values())
    assert {k.split(".")[0] for k in data["model"]} == {"stem", "res2", "res3", "res4", "res5"}
    back = {from_detectron2_key(k): torch.from_numpy(v) for k, v in data["model"].items()}
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)


def test_export_fits_the_key_set_detectron2_r50c4_expects(tmp_path, r50):
    model = write_detectron2_pickle(backbone_state_dict(r50), tmp_path / "d2.pkl")
    expected = detectron2_r50c4_keys(50, extra_norm=True)
    matched, missing, unused = match_detectron2_keys(sorted(expected), sorted(model))
    assert unused == []                                        # every exported tensor is loaded
    assert sorted(missing) == sorted(f"roi_heads.res5.norm.{p}" for p in
                                     ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"))
    assert matched["backbone.stem.conv1.weight"] == "stem.conv1.weight"
    assert matched["roi_heads.res5.0.shortcut.norm.weight"] == "res5.0.shortcut.norm.weight"
    for mk, ck in matched.items():
        assert tuple(model[ck].shape) == expected[mk], mk
    # 1 stem conv + 16 blocks x 3 convs + 4 shortcuts = 53 conv layers, each with a 5-tensor norm
    assert len(model) == 53 * 6


def test_key_matcher_refuses_ambiguity():
    with pytest.raises(ValueError, match="matches both"):
        match_detectron2_keys(["a.conv1.weight", "b.conv1.weight"], ["conv1.weight"])


def test_resnet18_cannot_go_to_detectron2_c4(tmp_path):
    sd = backbone_state_dict(d3ssl_zoo.create_model("d3ssl_r18c4", num_classes=0))
    with pytest.raises(ValueError, match="bottleneck"):
        export_state_dict(sd, "detectron2", tmp_path / "x.pkl")


def test_generated_configs_carry_the_protocol_settings(tmp_path, r50):
    report = export_state_dict(backbone_state_dict(r50), "detectron2", tmp_path / "w.pkl")
    assert len(report.configs) == 2
    cfgs = {Path(p).name.split("_", 1)[1]: yaml.safe_load(open(p)) for p in report.configs}
    voc, coco = cfgs["pascal_voc_R_50_C4_24k.yaml"], cfgs["coco_mask_rcnn_R_50_C4_1x.yaml"]
    for cfg in (voc, coco):
        m = cfg["MODEL"]
        assert m["WEIGHTS"] == str((tmp_path / "w.pkl").resolve())
        assert cfg["INPUT"]["FORMAT"] == "RGB"
        assert m["PIXEL_MEAN"] == [123.675, 116.28, 103.53] and m["PIXEL_STD"] == [58.395, 57.12, 57.375]
        assert m["RESNETS"]["STRIDE_IN_1X1"] is False
        assert m["RESNETS"]["NORM"] == "SyncBN" and m["RESNETS"]["DEPTH"] == 50
        assert m["RESNETS"]["OUT_FEATURES"] == ["res4"]
        assert m["BACKBONE"]["FREEZE_AT"] == 0
        assert m["ROI_HEADS"]["NAME"] == "Res5ROIHeadsExtraNorm"
        assert m["ROI_BOX_HEAD"]["POOLER_RESOLUTION"] == 14 and m["ROI_BOX_HEAD"]["POOLER_TYPE"] == "ROIAlignV2"
        assert cfg["SOLVER"]["IMS_PER_BATCH"] == 16 and cfg["SOLVER"]["BASE_LR"] == 0.02
    assert voc["MODEL"]["MASK_ON"] is False and voc["MODEL"]["ROI_HEADS"]["NUM_CLASSES"] == 20
    assert voc["SOLVER"]["MAX_ITER"] == 24000 and voc["SOLVER"]["STEPS"] == [18000, 22000]
    assert voc["DATASETS"]["TRAIN"] == ["voc_2007_trainval", "voc_2012_trainval"]
    assert voc["DATASETS"]["TEST"] == ["voc_2007_test"]
    assert coco["MODEL"]["MASK_ON"] is True and coco["MODEL"]["ROI_HEADS"]["NUM_CLASSES"] == 80
    assert coco["SOLVER"]["MAX_ITER"] == 90000 and coco["SOLVER"]["STEPS"] == [60000, 80000]
    assert "Res5ROIHeadsExtraNorm" in open(report.configs[0]).read().split("MODEL:")[0]   # header says how to run
    with pytest.raises(ValueError, match="unknown detectron2 task"):
        detectron2_config("lvis")


@pytest.mark.parametrize("target, name, layout", [("torchvision", "tv.pth", "torchvision"),
                                                   ("torchvision", "tv.safetensors", "torchvision"),
                                                   ("mmdet", "mm.pth", "mmdet")])
def test_export_then_import_is_identical(tmp_path, target, name, layout):
    model = d3ssl_zoo.create_model("d3ssl_r18c4", num_classes=0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    folder = tmp_path / "zoo"
    d3ssl_zoo.save_pretrained(model, folder, model_name="d3ssl_r18c4")
    out = tmp_path / name
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["export", str(folder), "--to", target, "--out", str(out)])
    assert args.func(args) == 0
    report = convert_checkpoint(out, tmp_path / "back")
    assert report.layout == layout
    back = d3ssl_zoo.load_backbone(str(tmp_path / "back")).state_dict()
    ref = model.state_dict()
    assert set(back) == set(ref) and all(torch.equal(back[k], ref[k]) for k in ref)


def test_torchvision_export_loads_into_torchvision(tmp_path):
    import torchvision
    model = d3ssl_zoo.create_model("d3ssl_r18c4", num_classes=0)
    export_state_dict(backbone_state_dict(model), "torchvision", tmp_path / "tv.pth")
    tv = torchvision.models.resnet18()
    result = tv.load_state_dict(torch.load(tmp_path / "tv.pth", weights_only=True), strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and result.unexpected_keys == []
    x = torch.randn(1, 3, 64, 64)
    tv.fc = torch.nn.Identity()
    assert torch.allclose(tv.eval()(x), model.eval()(x), atol=1e-5)
