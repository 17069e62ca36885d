"""Tests of d3ssl_zoo/tags.py: the recipes are package data, resolved inside the installed package."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import d3ssl_zoo
from d3ssl_zoo.engine import load_recipe
from d3ssl_zoo.tags import TAGS, get_tag, recipe_file, recipe_path, recipes_dir

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_RECIPES = Path(d3ssl_zoo.__file__).resolve().parent / "recipes"


def test_recipes_live_in_the_package():
    assert recipes_dir().resolve() == PACKAGE_RECIPES
    assert not (ROOT / "train" / "recipes").exists()  # one copy only
    assert not (PACKAGE_RECIPES / "mini").exists()  # the research ladder's recipes live in experiments/
    for tag in TAGS:
        assert tag.recipe == recipe_path(tag.name) == f"d3ssl_zoo/recipes/{tag.name}.yaml"
        assert tag.recipe_file.resolve() == PACKAGE_RECIPES / f"{tag.name}.yaml"
        assert load_recipe(tag.recipe_file).tag == tag.name
    for name in ("demo", "det_voc", "det_coco"):
        assert recipe_file(name).resolve() == PACKAGE_RECIPES / f"{name}.yaml"
    assert recipe_file("my/own.yaml") == Path("my/own.yaml")


def test_unknown_recipe_names_the_folder_and_the_known_recipes():
    with pytest.raises(FileNotFoundError) as e:
        recipe_file("d3ssl_r50c4.coco_900ep")
    msg = str(e.value)
    assert f"no recipe 'd3ssl_r50c4.coco_900ep' in {recipes_dir()}" in msg
    assert "d3ssl_r50c4.coco_800ep" in msg and "demo" in msg and "det_voc" in msg
    assert "path of a .yaml file" in msg


def test_tag_dict_carries_the_installed_recipe_file():
    d = get_tag("soco_r50c4.oimini_200ep").to_dict()
    assert d["recipe"] == "d3ssl_zoo/recipes/soco_r50c4.oimini_200ep.yaml"
    assert Path(d["recipe_file"]).resolve() == PACKAGE_RECIPES / "soco_r50c4.oimini_200ep.yaml"


_CHECK = """
import json, sys
import d3ssl_zoo
from d3ssl_zoo.engine import load_recipe
from d3ssl_zoo.tags import recipe_file
files = {n: str(recipe_file(n)) for n in ("d3ssl_r50c4.coco_800ep", "demo", "det_voc")}
tags = {n: load_recipe(f).tag for n, f in files.items() if not n.startswith("det_")}
tags["mine.yaml"] = load_recipe("mine.yaml").tag  # a recipe outside the package, on a packaged base
print(json.dumps({"package": d3ssl_zoo.__file__, "files": files, "tags": tags}))
"""


@pytest.mark.slow
def test_recipes_ship_with_a_non_editable_install(tmp_path):
    """SLOW (about 30-60 s): a non-editable install (what a wheel or ``pip install .`` gives) into a
    fresh venv, then, from outside the repository, every kind of recipe resolves inside that venv's
    site-packages and loads, and ``d3ssl-zoo info`` names the installed file."""
    # A copy of the sources, so the build writes nothing into the working tree.
    src = tmp_path / "src"
    shutil.copytree(ROOT / "d3ssl_zoo", src / "d3ssl_zoo",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    venv = tmp_path / "venv"
    # The venv sees the system's torch, timm, ... and its pip; only d3ssl_zoo is installed into it.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-compile",
                              "--quiet", str(src)], cwd=tmp_path, capture_output=True, text=True)
    assert install.returncode == 0, install.stdout + install.stderr

    (tmp_path / "mine.yaml").write_text("base: demo\ntrain:\n  epochs: 3\n")
    run = subprocess.run([str(python), "-c", _CHECK], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    site = Path(out["package"]).parent.parent
    assert site.is_relative_to(venv) and site.name == "site-packages"
    for name, path in out["files"].items():
        assert Path(path) == site / "d3ssl_zoo" / "recipes" / f"{name}.yaml", name
    assert out["tags"] == {"d3ssl_r50c4.coco_800ep": "d3ssl_r50c4.coco_800ep", "demo": "d3ssl_r18c4.demo",
                           "mine.yaml": "d3ssl_r18c4.demo"}
    assert (site / "d3ssl_zoo" / "data" / "coco_openimages_classes.csv").is_file()

    info = subprocess.run([str(venv / "bin" / "d3ssl-zoo"), "info", "soco_r50c4.oimini_200ep"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert info.returncode == 0, info.stderr
    cfg = json.loads(info.stdout)
    assert cfg["recipe_file"] == str(site / "d3ssl_zoo" / "recipes" / "soco_r50c4.oimini_200ep.yaml")
