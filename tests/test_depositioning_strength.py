"""experiments.depositioning_strength: the statistic of docs/design.md's rule for data.dp_proposals."""
import json
import runpy
import sys

import numpy as np
import pytest

from experiments import depositioning_strength as ds
from experiments import report


def raw(t, d12, side=100, k=2):
    return {"view_side": side, "num_proposals": k,
            "per_n": {n: {"t": np.asarray(t[n], float), "d12": np.asarray(d12[n], float)} for n in t}}


def test_summary_counts_regions_that_move_more_than_between_the_views():
    r = raw({1: [10, 0, 30, 5], 2: [10, 0, 0, 40]},
            {1: [[5], [1], [40], [2]], 2: [[5, 20], [0, 3], [1, 1], [39, 41]]})
    flat = raw({1: [10, 10, 10, 10], 2: [1, 1, 1, 1]}, {1: [[0]] * 4, 2: [[2, 2]] * 4})
    rows = ds.summarise(r, flat, resamples=200)
    one, two = rows
    assert (one["n"], one["dp_proposals"], one["regions"], one["samples"]) == (1, 1, 4, 4)
    assert (two["n"], two["dp_proposals"], two["regions"]) == (2, 0, 8)  # n = K is dp_proposals 0
    assert one["share_moves_more"] == pytest.approx(0.5)  # 10 > 5 and 5 > 2; 0 < 1 and 30 < 40
    assert two["share_moves_more"] == pytest.approx(2 / 8)  # 10 > 5 and 40 > 39; t = 0 never moves more
    assert one["share_moves_more_noflip"] == 1.0 and two["share_moves_more_noflip"] == 0.0
    assert one["median_t"] == pytest.approx(0.075) and two["median_x1_x2"] == pytest.approx(0.04)
    assert one["share_t_zero"] == 0.25 and two["share_t_zero"] == 0.5
    lo, hi = one["share_ci95"]
    assert 0.0 <= lo < 0.5 < hi <= 1.0
    assert one["share_ci95_noflip"] == [1.0, 1.0]


def test_the_rule_takes_the_largest_n_above_half_in_every_setting():
    def setting(shares):
        rows = [{"n": n + 1, "share_moves_more": s} for n, s in enumerate(shares)]
        return {"num_proposals": len(shares), "rows": rows}

    assert ds.decide({"a": setting([0.9, 0.7, 0.6, 0.2]), "b": setting([0.8, 0.51, 0.4, 0.3])}) == {
        "dp_proposals": 2, "holds": True}
    assert ds.decide({"a": setting([0.9, 0.3, 0.6, 0.2]), "b": setting([0.8, 0.6, 0.7, 0.3])}) == {
        "dp_proposals": 3, "holds": True}  # the largest n, not the first run of them
    assert ds.decide({"a": setting([0.5, 0.4, 0.3, 0.2]), "b": setting([0.9, 0.6, 0.4, 0.3])}) == {
        "dp_proposals": 1, "holds": False}  # exactly one half is not more than half
    with pytest.raises(ValueError, match="different K"):
        ds.decide({"a": setting([0.9, 0.6]), "b": setting([0.9, 0.6, 0.6])})


def test_measure_draws_the_pipelines_shift_and_views(make_tiny_source, tiny_overrides, tmp_path):
    images, proposals = make_tiny_source(tmp_path)
    overrides = tiny_overrides(images, proposals)
    raw_flip = ds.measure("demo", overrides, 10)
    raw_noflip = ds.measure("demo", overrides, 10, flip=False)
    assert (raw_flip["view_side"], raw_flip["num_proposals"], raw_flip["prc_rule"]) == (64, 2, "area")
    for r in (raw_flip, raw_noflip):
        assert sorted(r["per_n"]) == [1, 2]
        assert r["per_n"][1]["d12"].shape == (10, 1) and r["per_n"][2]["d12"].shape == (10, 2)
        # n only decides which regions enter x3: the views, and so x1 -> x2, are the same draws for every n
        assert np.array_equal(r["per_n"][1]["d12"][:, 0], r["per_n"][2]["d12"][:, 0])
        assert (r["per_n"][1]["t"] >= 0).all() and (r["per_n"][2]["t"] <= 64 * np.sqrt(2)).all()
    # the flips move the boxes between the views; without them the same crops give other distances
    assert not np.array_equal(raw_flip["per_n"][2]["d12"], raw_noflip["per_n"][2]["d12"])
    # one box fewer to keep inside the view leaves the shift at least as much room: on average it is larger
    assert raw_flip["per_n"][1]["t"].mean() >= raw_flip["per_n"][2]["t"].mean()


@pytest.mark.slow
def test_the_folder_it_writes_is_what_the_report_regenerates(tmp_path, monkeypatch):
    monkeypatch.setattr(ds, "SETTINGS", {"sample_r50": ds.SETTINGS["sample_r50"]})
    out = tmp_path / "depositioning_strength"
    assert ds.main(["--out", str(out), "--images", "6", "--resamples", "50"]) == 0
    index = json.loads((out / "results.json").read_text())
    data = json.loads((out / ds.FILE).read_text())
    assert index["question"] == data["question"] and [f["file"] for f in index["files"]] == [ds.FILE]
    assert index["command"].startswith("python -m experiments.depositioning_strength --out ")
    assert [r["n"] for r in data["settings"]["sample_r50"]["rows"]] == [1, 2, 3, 4]
    assert data["settings"]["sample_r50"]["view_side"] == 224
    md = (out / "results.md").read_text()
    report.write_diagnostics_report(out, tmp_path / "again")
    assert (tmp_path / "again" / "results.md").read_text() == md
    assert f"n = {data['decision']['dp_proposals']}" in md


@pytest.mark.filterwarnings("ignore:'experiments.:RuntimeWarning")  # runpy: this file imported it already
def test_it_runs_as_a_module_from_the_repository_root(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["depositioning_strength", "--help"])
    with pytest.raises(SystemExit) as e:
        runpy.run_module("experiments.depositioning_strength", run_name="__main__")
    assert e.value.code == 0 and "usage: python -m experiments.depositioning_strength" in capsys.readouterr().out


def test_the_recipes_use_the_n_the_recorded_statistic_gives_and_the_authors_prc():
    from d3ssl_zoo.engine import load_recipe
    from d3ssl_zoo.tags import recipe_file

    root = ds.ROOT
    data = json.loads((root / "experiments" / "results" / "depositioning_strength" / ds.FILE).read_text())
    n = data["decision"]["dp_proposals"]
    assert {s["prc_rule"] for s in data["settings"].values()} == {"area"}
    for name in ("d3ssl_r50c4.coco_800ep", "d3ssl_r50c4.coco_200ep", "d3ssl_r50c4.oimini_800ep", "demo"):
        d = load_recipe(recipe_file(name)).data
        assert (d.dp_proposals, d.prc_rule) == (n, "area"), name
    rungs = root / "experiments" / "recipes"
    assert load_recipe(rungs / "d3ssl.yaml").data.dp_proposals == n
    assert load_recipe(rungs / "d3ssl_dp1.yaml").data.dp_proposals == 1
    assert {load_recipe(rungs / f"{r}.yaml").data.prc_rule for r in ("d3ssl", "d3ssl_dconly", "soco_d3aug")} == {"area"}
