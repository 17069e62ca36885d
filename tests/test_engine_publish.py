"""Tests of train/publish.py: the dry-run folder loads from a Hugging Face cache with HF_HUB_OFFLINE=1."""
import importlib.util
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

import d3ssl_zoo
from d3ssl_zoo.engine import load_recipe, train
from d3ssl_zoo.tags import get_tag, recipes_dir

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("publish", ROOT / "train" / "publish.py")  # a script, not a module
publish = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(publish)

RECIPES = recipes_dir()

TAG = "d3ssl_r50c4.coco_800ep"
COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


@pytest.fixture(scope="module")
def r50_run(tmp_path_factory, make_tiny_source, tiny_overrides):
    """Two steps of a ResNet-50-C4 run on four tiny images (the architecture of the published tag)."""
    root = tmp_path_factory.mktemp("publish")
    images, proposals = make_tiny_source(root / "data", num_images=4)
    recipe = load_recipe(RECIPES / "demo.yaml", tiny_overrides(images, proposals) + [
        "model.name=d3ssl_r50c4", "train.checkpoint_every=100"])
    return train(recipe, root / "run")


def _put_in_hf_cache(folder: Path, repo_id: str) -> None:
    root = Path(os.environ["HF_HOME"]) / "hub" / ("models--" + repo_id.replace("/", "--"))
    shutil.rmtree(root, ignore_errors=True)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(COMMIT)
    shutil.copytree(folder, root / "snapshots" / COMMIT)


def test_dry_run_folder_loads_offline_from_hf_cache(r50_run, tmp_path, capsys):
    out = tmp_path / "card"
    assert publish.main(["--checkpoint", str(r50_run.output_dir), "--tag", TAG, "--dry-run", "--out", str(out),
                         "--metric", "oknn_top1=12.5"]) == 0
    assert "sha256 of model.safetensors" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors", "recipe.yaml"]
    card = (out / "README.md").read_text()
    assert "measured: oknn_top1 | 12.5" in card and "git commit" in card and "epochs trained | 1 of 1" in card
    assert yaml.safe_load((out / "recipe.yaml").read_text())["model"]["name"] == "d3ssl_r50c4"

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    _put_in_hf_cache(out, get_tag(TAG).hf_hub_id)
    model = d3ssl_zoo.create_model(TAG, pretrained=True)
    trained = r50_run.method.backbone.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())


def test_upload_offline_fails_clearly(r50_run, capsys):
    assert publish.main(["--checkpoint", str(r50_run.last_checkpoint), "--tag", TAG]) == 1
    err = capsys.readouterr().err
    assert "HF_HUB_OFFLINE" in err and "Nothing was uploaded" in err and "--dry-run --out DIR" in err


def test_wrong_architecture_and_missing_checkpoint(r50_run, tmp_path, capsys):
    assert publish.main(["--checkpoint", str(r50_run.output_dir), "--tag", "soco_r50c4.coco_800ep",
                         "--dry-run", "--out", str(tmp_path / "x")]) == 2
    assert "is for architecture soco_r50c4" in capsys.readouterr().err
    assert publish.main(["--checkpoint", str(tmp_path), "--tag", TAG, "--dry-run", "--out", str(tmp_path / "y")]) == 2
    assert "neither a checkpoint folder" in capsys.readouterr().err


@pytest.mark.parametrize("metric", ["ap=abc", "ap=", "ap=nan", "ap=[1, x]", "ap=true", "=57.6"])
def test_metric_that_is_not_a_number_is_refused(metric, tmp_path, capsys):
    assert publish.main(["--checkpoint", str(tmp_path), "--tag", TAG, "--dry-run", "--out", str(tmp_path / "card"),
                         "--metric", metric]) == 2
    assert f"--metric {metric!r}" in capsys.readouterr().err
    assert not (tmp_path / "card").exists()


def test_metrics_are_numbers_or_lists_of_numbers():
    assert publish.parse_metrics(["ap=57.6", "ap_ap50_ap75=[57.6, 82.1, 64]", "n=3"]) == {
        "ap": 57.6, "ap_ap50_ap75": [57.6, 82.1, 64], "n": 3}


def test_a_damaged_newest_checkpoint_is_skipped_or_refused(r50_run, tmp_path, capsys):
    # a copy of the run whose newest checkpoint lost its weights, next to an intact older one
    run = tmp_path / "run"
    shutil.copytree(r50_run.output_dir / "checkpoints", run / "checkpoints")
    intact = run / "checkpoints" / r50_run.last_checkpoint.name
    newer = run / "checkpoints" / "step_00000009"
    shutil.copytree(intact, newer)
    (newer / "model.safetensors").write_bytes(b"")
    assert publish.main(["--checkpoint", str(run), "--tag", TAG, "--dry-run", "--out", str(tmp_path / "card")]) == 0
    assert f"from {intact}" in capsys.readouterr().out
    assert publish.main(["--checkpoint", str(newer), "--tag", TAG, "--dry-run", "--out", str(tmp_path / "c2")]) == 2
    assert "model.safetensors" in capsys.readouterr().err
