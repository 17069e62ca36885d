import json
import shutil
import subprocess

import pytest

from d3ssl_zoo.cli import main
from d3ssl_zoo.tags import TAGS


def test_list_prints_every_tag_with_numbers(capsys):
    assert main(["list", "--width", "250"]) == 0
    out = capsys.readouterr().out
    for t in TAGS:
        assert t.name in out
    assert "VOC 57.8/82.5/64.4" in out and "O-KNN 73.1/90.1" in out and "CR 1.33" in out
    assert "published" in out


def test_info_prints_cfg_as_json(capsys):
    assert main(["info", "soco_r50c4.oimini_200ep"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["hf_hub_id"] == "d3ssl-zoo/soco_r50c4.oimini_200ep"
    assert cfg["recipe"] == "train/recipes/soco_r50c4.oimini_200ep.yaml"
    assert cfg["reported"]["coupling_rate"] == 1.31 and cfg["num_classes"] == 0


def test_info_unknown_tag_suggests(capsys):
    assert main(["info", "soco_r50c4.oimini200"]) == 2
    err = capsys.readouterr().err
    assert "Unknown tag 'oimini200'" in err and "soco_r50c4.oimini_200ep" in err


def test_console_script_installed():
    exe = shutil.which("d3ssl-zoo")
    if exe is None:
        pytest.fail("console script d3ssl-zoo is not installed; run pip install -e .")
    out = subprocess.run([exe, "info", "d3ssl_r50c4.coco_800ep"], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["tag"] == "coco_800ep"
