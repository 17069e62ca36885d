import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import d3ssl_zoo
from d3ssl_zoo import cli
from d3ssl_zoo.cli import main
from d3ssl_zoo.tags import TAGS


def test_list_prints_every_tag_with_numbers(capsys):
    assert main(["list", "--format", "table", "--width", "250"]) == 0
    out = capsys.readouterr().out
    for t in TAGS:
        assert t.name in out
    assert "VOC 57.8/82.5/64.4" in out and "O-KNN 73.1/90.1" in out and "CR 1.33" in out
    assert "published" in out


@pytest.mark.parametrize("width", [40, 80, 120])
def test_list_table_never_wraps_a_tag(capsys, width):
    assert main(["list", "--format", "table", "--width", str(width)]) == 0
    lines = capsys.readouterr().out.splitlines()
    for t in TAGS:
        assert any(t.name in line for line in lines), t.name


def test_list_plain_is_one_tab_separated_line_per_tag(capsys):
    assert main(["list", "--format", "plain"]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [row[0] for row in rows] == [t.name for t in TAGS]
    assert rows[0] == ["d3ssl_r50c4.coco_800ep", "COCO train2017", "800", "Tab. 1",
                       "VOC 57.8/82.5/64.4; COCO det 40.3/60.1/44.0; COCO seg 35.1/56.9/37.6", "no"]
    assert all(len(row) == 6 for row in rows)


def test_list_defaults_to_plain_when_piped_and_table_on_a_terminal(capsys, monkeypatch):
    assert main(["list"]) == 0  # capsys' stdout is not a terminal
    assert capsys.readouterr().out.splitlines()[0].split("\t")[0] == TAGS[0].name
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert main(["list", "--width", "250"]) == 0
    assert "published" in capsys.readouterr().out


def test_list_json_has_every_tag_with_its_numbers(capsys):
    assert main(["list", "--format", "json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert [e["name"] for e in entries] == [t.name for t in TAGS]
    oimini = entries[[t.name for t in TAGS].index("d3ssl_r50c4.oimini_800ep")]
    assert oimini["reported"]["oknn_top1_top5"] == [73.1, 90.1]
    assert oimini["epochs"] == 800 and oimini["published"] is False


def test_list_and_info_import_no_other_subcommand(capsys, monkeypatch):
    monkeypatch.setattr(cli, "SUBCOMMAND_MODULES", ("d3ssl_zoo.no_such_cli",))
    assert main(["list", "--format", "plain"]) == 0
    assert main(["info", "d3ssl_r50c4.coco_800ep"]) == 0
    with pytest.raises(ModuleNotFoundError, match="no_such_cli"):
        main(["--help"])


@pytest.mark.slow
@pytest.mark.parametrize("argv", [["list"], ["info", "d3ssl_r50c4.coco_800ep"]])
def test_output_into_a_closed_pipe_exits_quietly(argv):
    # `d3ssl-zoo list | head -1` once head has exited: every write to stdout fails with EPIPE.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "d3ssl_zoo.cli", *argv], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write_end)
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr
    assert proc.returncode == 141


def test_info_prints_cfg_as_json(capsys):
    assert main(["info", "soco_r50c4.oimini_200ep"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["hf_hub_id"] == "d3ssl-zoo/soco_r50c4.oimini_200ep"
    assert cfg["recipe"] == "d3ssl_zoo/recipes/soco_r50c4.oimini_200ep.yaml"
    installed = Path(d3ssl_zoo.__file__).parent / "recipes" / "soco_r50c4.oimini_200ep.yaml"
    assert cfg["recipe_file"] == str(installed) and installed.is_file()
    assert cfg["reported"]["coupling_rate"] == 1.31 and cfg["num_classes"] == 0


def test_info_unknown_tag_suggests(capsys):
    assert main(["info", "soco_r50c4.oimini200"]) == 2
    err = capsys.readouterr().err
    assert "Unknown tag 'oimini200'" in err and "soco_r50c4.oimini_200ep" in err


@pytest.mark.slow
def test_console_script_installed():
    exe = shutil.which("d3ssl-zoo")
    if exe is None:
        pytest.fail("console script d3ssl-zoo is not installed; run pip install -e .")
    out = subprocess.run([exe, "info", "d3ssl_r50c4.coco_800ep"], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["tag"] == "coco_800ep"
