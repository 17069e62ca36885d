"""``d3ssl-zoo proposals`` / ``sample`` subcommands of the data pipeline."""
import json

import numpy as np
from PIL import Image

from d3ssl_zoo.cli import main
from d3ssl_zoo.data.proposals import ProposalStore


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
