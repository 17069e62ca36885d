"""train/show_views.py draws its figure."""
import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "train" / "show_views.py"


def test_show_views_writes_png(tmp_path):
    spec = importlib.util.spec_from_file_location("show_views", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    a = np.zeros((96, 128, 3), np.uint8)
    a[10:60, 20:90] = (200, 40, 40)
    a[40:90, 70:120] = (40, 200, 40)
    Image.fromarray(a).save(tmp_path / "x.png")
    Image.fromarray(np.full((50, 50, 3), 90, np.uint8)).save(tmp_path / "bg.png")
    out = tmp_path / "views.png"
    assert mod.main(["--image", str(tmp_path / "x.png"), "--background", str(tmp_path / "bg.png"),
                     "--out", str(out)]) == 0
    img = Image.open(out)
    assert img.format == "PNG" and img.size[0] > 600
