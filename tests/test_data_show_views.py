"""train/show_views.py draws its figure."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "train" / "show_views.py"


def _load():
    spec = importlib.util.spec_from_file_location("show_views", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_show_views_writes_png(tmp_path):
    mod = _load()
    a = np.zeros((96, 128, 3), np.uint8)
    a[10:60, 20:90] = (200, 40, 40)
    a[40:90, 70:120] = (40, 200, 40)
    Image.fromarray(a).save(tmp_path / "x.png")
    Image.fromarray(np.full((50, 50, 3), 90, np.uint8)).save(tmp_path / "bg.png")
    out = tmp_path / "new" / "folder" / "views.png"  # a missing folder is created
    assert mod.main(["--image", str(tmp_path / "x.png"), "--background", str(tmp_path / "bg.png"),
                     "--out", str(out)]) == 0
    img = Image.open(out)
    assert img.format == "PNG" and img.size[0] > 600


def test_show_views_checks_out_before_any_work(tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(SystemExit) as e:  # the image does not exist either: --out is checked first
        _load().main(["--image", str(tmp_path / "missing.png"), "--out", str(tmp_path / "a_file" / "views.png")])
    assert e.value.code == 2
    assert "cannot create its folder" in capsys.readouterr().err
