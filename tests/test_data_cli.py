"""``d3ssl-zoo proposals`` / ``oimini`` / ``sample``: the data pipeline's one entry point per tool."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from d3ssl_zoo.cli import main
from d3ssl_zoo.data.proposal_store import ProposalStore


def test_proposals_subcommand_writes_file_and_summary(tmp_path, capsys):
    (tmp_path / "imgs").mkdir()
    a = np.zeros((48, 64, 3), np.uint8)
    a[10:30, 10:40] = 200
    Image.fromarray(a).save(tmp_path / "imgs" / "x.png")
    out = tmp_path / "p.safetensors"
    assert main(["proposals", "--images", str(tmp_path / "imgs"), "--out", str(out), "--workers", "1",
                 "--resize-long", "0", "--no-progress"]) == 0
    assert "proposals / image" in capsys.readouterr().out
    assert ProposalStore(out).image_ids.tolist() == [0]


def test_sample_subcommand_prints_paths(capsys):
    assert main(["sample"]) == 0
    paths = json.loads(capsys.readouterr().out)
    assert set(paths) >= {"root", "images_dir", "pretrain_ann", "proposals", "train_ann", "val_ann"}


def test_proposals_subcommand_rejects_bad_coco_json(tmp_path, capsys):
    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(tmp_path / "imgs" / "x.png")
    out = tmp_path / "p.safetensors"
    no_images = tmp_path / "no_images.json"
    no_images.write_text(json.dumps({"annotations": [], "categories": []}))
    args = ["--images", str(tmp_path / "imgs"), "--out", str(out), "--workers", "1", "--no-progress"]
    assert main(["proposals", "--coco", str(no_images), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("d3ssl-zoo proposals: ") and "no_images.json has no 'images' list" in err
    dup = tmp_path / "dup.json"
    dup.write_text(json.dumps({"images": [{"id": 3, "file_name": "x.png"}, {"id": 3, "file_name": "x.png"}]}))
    assert main(["proposals", "--coco", str(dup), *args]) == 2
    assert "dup.json lists image id(s) 3 more than once" in capsys.readouterr().err
    assert not out.exists()


def test_sample_subcommand_reports_a_cache_that_is_a_file(tmp_path, monkeypatch, capsys):
    (tmp_path / "f").write_text("")
    monkeypatch.setenv("D3SSL_ZOO_CACHE", str(tmp_path / "f"))
    assert main(["sample"]) == 2
    assert f"d3ssl-zoo sample: D3SSL_ZOO_CACHE={tmp_path / 'f'} cannot be a cache folder" in capsys.readouterr().err


def test_each_data_tool_has_one_entry_point_with_its_description(capsys):
    import d3ssl_zoo.data.openimages_mini as oimini

    root = Path(__file__).resolve().parents[1]
    assert not (root / "train" / "make_proposals.py").exists() and not hasattr(oimini, "main")
    with pytest.raises(SystemExit):
        main(["proposals", "--help"])
    out = capsys.readouterr().out
    assert "Killed runs resume where they stopped" in out and "--flush-every" in out and "--min-side" in out
    with pytest.raises(SystemExit):
        main(["oimini", "--help"])
    assert "print the Tab. 2 statistics" in " ".join(capsys.readouterr().out.split())
