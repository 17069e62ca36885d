"""``d3ssl-zoo eval oknn|coupling|mcs`` end to end on a tiny COCO-format dataset."""
import json
import os

import pytest

from d3ssl_zoo.cli import main


@pytest.fixture(scope="module")
def data(tmp_path_factory, write_coco):
    root = tmp_path_factory.mktemp("coco")
    train = write_coco(root, "train", 6, hw=(64, 96), seed=0)
    val = write_coco(root, "val", 3, hw=(64, 96), seed=1)
    return dict(zip(["train_ann", "train_images", "val_ann", "val_images"], train + val))


def test_eval_oknn_two_models_with_disturbed(data, tmp_path, capsys):
    out = tmp_path / "oknn"
    rc = main(["eval", "oknn", "--model", "resnet18", "--model", "d3ssl_r18c4", "--train-ann", data["train_ann"],
               "--train-images", data["train_images"], "--val-ann", data["val_ann"], "--val-images",
               data["val_images"], "--out", str(out), "--disturbed", "--objects-per-image", "0",
               "--short-side", "64", "--k", "3", "--no-progress"])
    assert rc == 0
    res = json.load(open(out / "results.json"))
    assert set(res["models"]) == {"resnet18", "d3ssl_r18c4"}
    assert set(res["models"]["resnet18"]) == {"oknn", "disturbed_oknn"}
    printed = capsys.readouterr().out
    assert "Disturbed O-KNN Top-1" in printed and "d3ssl_r18c4" in printed


@pytest.mark.parametrize("command,extra,png", [
    ("coupling", ["--num-pairs", "2", "--object-size", "32"], "coupling_rate.png"),
    ("mcs", ["--num-crops", "2", "--tile-size", "32"], "positional_mcs.png"),
])
def test_eval_per_stage_commands(data, tmp_path, capsys, command, extra, png):
    out = tmp_path / command
    rc = main(["eval", command, "--model", "resnet18", "--model", "resnet18", "--ann", data["val_ann"],
               "--images", data["val_images"], "--out", str(out), "--min-object-size", "16",
               "--no-progress", *extra])
    assert rc == 0
    res = json.load(open(out / "results.json"))
    assert list(res["models"]) == ["resnet18", "resnet18#2"]
    assert list(res["models"]["resnet18"]["per_stage"]) == ["layer1", "layer2", "layer3", "layer4"]
    assert os.path.getsize(out / png) > 0
    assert "layer4" in capsys.readouterr().out


def test_eval_bad_arguments(data, tmp_path, capsys):
    rc = main(["eval", "mcs", "--model", "resnet18", "--checkpoint", "a.safetensors", "--model", "resnet18",
               "--ann", data["val_ann"], "--images", data["val_images"], "--out", str(tmp_path)])
    assert rc == 2 and "one per --model" in capsys.readouterr().err
    rc = main(["eval", "coupling", "--model", "resnet18", "--out", str(tmp_path)])
    assert rc == 2 and "missing --ann, --images" in capsys.readouterr().err
    rc = main(["eval", "coupling", "--model", "resnet18", "--sample", "--ann", data["val_ann"], "--out", str(tmp_path)])
    assert rc == 2 and "--sample replaces --ann" in capsys.readouterr().err


@pytest.mark.parametrize("command, option, value, expected", [
    ("oknn", "--short-side", "-1", "-1 is too small: give an integer >= 1"),
    ("oknn", "--short-side", "0", "0 is too small: give an integer >= 1"),
    ("oknn", "--batch-size", "0", "0 is too small: give an integer >= 1"),
    ("oknn", "--temperature", "0", "0 is not a finite number > 0"),
    ("mcs", "--num-crops", "-3", "-3 is too small: give an integer >= 1"),
    ("mcs", "--tile-size", "0", "0 is too small: give an integer >= 32"),
    ("coupling", "--num-pairs", "x", "'x' is not an integer"),
])
def test_eval_rejects_bad_numbers_before_any_work(command, option, value, expected, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", command, "--model", "resnet18", "--sample", "--out", str(tmp_path / "out"), option, value])
    assert e.value.code == 2
    assert f"argument {option}: {expected}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_eval_with_checkpoint_file(data, tmp_path):
    import timm
    import torch
    from safetensors.torch import save_file

    from d3ssl_zoo.evaluation.mcs import run_mcs

    torch.manual_seed(1)
    reference = timm.create_model("resnet18").eval()
    ckpt = tmp_path / "r18.safetensors"
    save_file(reference.state_dict(), str(ckpt))
    out = tmp_path / "mcs"
    assert main(["eval", "mcs", "--model", "resnet18", "--checkpoint", str(ckpt), "--ann", data["val_ann"],
                 "--images", data["val_images"], "--num-crops", "1", "--tile-size", "32",
                 "--min-object-size", "16", "--no-progress", "--out", str(out)]) == 0
    got = json.load(open(out / "results.json"))["models"]["resnet18@r18.safetensors"]["per_stage"]
    want = run_mcs(reference, data["val_ann"], data["val_images"], num_crops=1, tile_size=32,
                   min_object_size=16, progress=False)["per_stage"]
    assert got == pytest.approx(want, abs=1e-6)


def test_eval_oknn_on_the_sample_dataset(tmp_path, capsys):
    out = tmp_path / "sample"
    rc = main(["eval", "oknn", "--sample", "--model", "d3ssl_r18c4", "--out", str(out), "--short-side", "64",
               "--objects-per-image", "0", "--k", "5", "--no-progress"])
    assert rc == 0
    res = json.load(open(out / "results.json"))["models"]["d3ssl_r18c4"]["oknn"]
    assert res["num_classes"] == 10 and res["num_queries"] > 0 and res["num_bank"] >= 5
    assert "O-KNN Top-1" in capsys.readouterr().out
