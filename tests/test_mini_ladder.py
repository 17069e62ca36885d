"""The mini ladder (experiments.mini_ladder) on a tiny scene set: two rungs through `accelerate launch`,
every evaluation stored, the report and figures written, and a relaunch that redoes nothing (resume);
the report's judgements; the diagnostics on the ladder's runs; experiments.report on a diagnostics folder."""
import json
import runpy
import shlex
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from experiments import (
    diagnose_bn_leak,
    diagnose_coupling,
    diagnose_instance_cues,
    diagnose_teacher,
    mini_ladder,
    report,
)
from experiments import ladder as ladder_helpers

SOURCE = "scenes:num_pretrain=12,num_train=24,num_val=6,image_size=96,object_size=40-56,seed=1"
ARGS = ["--rungs", "d3ssl", "soco", "--seeds", "0", "--short-side", "96", "--num-pairs", "4", "--num-crops", "4",
        "--object-size", "64", "--min-object-size", "16", "--ceiling-steps", "2",
        "--override", f"dataset.source={SOURCE}", "data.image_size=64", "data.small_size=32", "method.roi_size=4",
        "method.roi_size_small=2", "method.proj_hidden_dim=32", "method.pred_hidden_dim=32", "method.queue_size=64",
        "train.global_batch=4", "train.batch_size=4", "train.epochs=2", "train.checkpoint_every=3"]


@pytest.fixture(scope="module")
def ladder(tmp_path_factory):
    """Two rungs of the ladder on a tiny scene set, trained through ``accelerate launch``: slow."""
    root = tmp_path_factory.mktemp("ladder")
    argv = ARGS + ["--out", str(root / "results"), "--runs-dir", str(root / "runs")]
    assert mini_ladder.main(argv) == 0
    return root, argv


@pytest.mark.slow  # trains two rungs through accelerate launch (the ladder fixture)
def test_every_evaluation_is_stored(ladder):
    root, _ = ladder
    data = json.loads((root / "results" / "results.json").read_text())
    evals = data["evals"]
    assert {"random_init/s0", "supervised/s0"} <= set(evals)
    for rung in ("d3ssl", "soco"):
        steps = sorted(v["step"] for k, v in evals.items() if k.startswith(f"{rung}/s0/"))
        assert steps == [3, 6]  # 12 images / batch 4 = 3 steps per epoch, a checkpoint each
        final = evals[f"{rung}/s0/step6"]
        assert final["final"] and final["total_steps"] == 6
        assert 0 <= final["oknn"]["top1"] <= 100 and final["oknn"]["num_queries"] >= 6
        assert set(final["cr"]) == set(final["mcs"]) == {"layer1", "layer2", "layer3", "layer4"}
        assert "disturbed_oknn" in final and "cr" not in evals[f"{rung}/s0/step3"]
        for name in ("cr", "mcs"):  # a standard error per stage, over 4 pairs / crops
            assert set(final[f"{name}_se"]) == set(final[name]) and all(v >= 0 for v in final[f"{name}_se"].values())
        for stage, cr in final["cr"].items():  # the cosines behind the CR, and the most it could be
            c = final["cr_cosines"][stage]
            assert 0 < c["a2_b"] <= 1 and cr <= final["cr_max"][stage] * (1 + 1e-6)
    assert data["meta"]["readings"] == ladder_helpers.READINGS  # the readings the runs followed
    shift = data["shift_statistics"]
    assert set(shift) == {"all K (literal)", "1 of K"}
    # one proposal leaves at least as much room to move as the union of K
    assert shift["1 of K"]["mean_shift_px"] >= shift["all K (literal)"]["mean_shift_px"]


@pytest.mark.slow  # trains two rungs through accelerate launch (the ladder fixture)
def test_report_and_figures(ladder):
    root, _ = ladder
    md = (root / "results" / "results.md").read_text()
    assert "| random init (floor) | 1 |" in md and "| supervised RoI classifier (ceiling, 2 steps) | 1 |" in md
    assert "| SoCo | 1 |" in md and "| D3SSL (L_dc + L_dp) | 1 |" in md
    assert "D3SSL above SoCo on O-KNN top-1 (Tab. 4): **" in md
    assert f"Data: `{SOURCE}`" in md and "Recipe overrides for every rung: `data.image_size=64 " in md
    assert "D3SSL trained >= random init + 10 points O-KNN top-1, rising with training: **" in md
    assert "L_dp lowers CR (layer4) (Tab. 7): not measured yet" in md  # no w/o-L_dp rung in this run
    assert "D3SSL lower CR (layer3) than SoCo (Sec. 3.1, Fig. 3b): **not reproduced**: " in md  # one seed
    assert "| CR layer4 ↓ | MCS layer4 ↑ | CR layer3 ↓ | MCS layer3 ↑ |" in md
    assert report.readings_line({"readings": ladder_helpers.READINGS}) in md
    room = md.split("## The room the coupling rate has (layer4)")[1].split("##")[0]
    assert "| random init (floor) | 1 | 0." in room and "| D3SSL (L_dc + L_dp) | 1 | 0." in room
    for fig in ("oknn_vs_steps.png", "cr_mcs_per_stage.png"):
        assert (root / "results" / fig).stat().st_size > 5000



@pytest.mark.slow  # trains two rungs through accelerate launch (the ladder fixture)
def test_the_folder_keeps_its_command_and_report_only_rewrites_the_report(ladder, monkeypatch):
    root, argv = ladder
    out = root / "results"
    data = json.loads((out / "results.json").read_text())
    assert data["command"] == shlex.join(["python", "-m", "experiments.mini_ladder", *argv])
    script = (out / "command.sh").read_text()
    assert script.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in script
    assert shlex.split(script.split("\n\n", 1)[1].replace("\\\n", " ")) == shlex.split(data["command"])
    report_md = (out / "results.md").read_text()
    assert "python -m experiments.mini_ladder \\\n    --rungs d3ssl soco \\\n" in report_md
    (out / "results.md").unlink()
    (out / "oknn_vs_steps.png").unlink()
    monkeypatch.setattr(mini_ladder.subprocess, "run", lambda *a, **k: pytest.fail("nothing should be trained"))
    assert mini_ladder.main(argv + ["--report-only"]) == 0
    assert (out / "results.md").read_text() == report_md and (out / "oknn_vs_steps.png").stat().st_size > 5000
    assert json.loads((out / "results.json").read_text()) == data  # the report records no command
    with pytest.raises(FileNotFoundError, match="run the ladder with --out"):
        mini_ladder.main(["--out", str(root / "nowhere"), "--report-only"])


def test_a_folder_built_by_several_commands_lists_them_once_each(tmp_path):
    meta = {"settings": {"short_side": 256}}
    results = ladder_helpers.Results(tmp_path / "results.json", meta)
    results.record_command("python -m experiments.mini_ladder --seeds 0 1")
    results.record_command("python -m experiments.mini_ladder --seeds 0 1")
    stored = json.loads((tmp_path / "results.json").read_text())["command"]
    assert stored == "python -m experiments.mini_ladder --seeds 0 1"
    results.record_command("python -m experiments.mini_ladder --seeds 2 3")
    results.record_command("python -m experiments.mini_ladder --seeds 0 1")
    assert ladder_helpers.Results.read(tmp_path / "results.json").data["command"] == [
        "python -m experiments.mini_ladder --seeds 0 1", "python -m experiments.mini_ladder --seeds 2 3"]



@pytest.mark.parametrize("module", ["mini_ladder", "report", "diagnose_bn_leak", "diagnose_coupling",
                                    "diagnose_instance_cues", "diagnose_oknn_read", "diagnose_teacher"])
@pytest.mark.filterwarnings("ignore:'experiments.:RuntimeWarning")  # runpy: the test file imported them already
def test_every_experiment_runs_as_a_module_from_the_repository_root(module, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [module, "--help"])
    with pytest.raises(SystemExit) as e:
        runpy.run_module(f"experiments.{module}", run_name="__main__")
    assert e.value.code == 0 and f"usage: python -m experiments.{module}" in capsys.readouterr().out

RESULTS = Path(__file__).resolve().parents[1] / "experiments" / "results"


@pytest.mark.parametrize("folder", sorted(p.name for p in RESULTS.iterdir() if (p / "results.json").is_file()))
def test_each_result_folder_is_what_its_results_json_generates(folder, tmp_path):
    # results.md and command.sh are generated: regenerating them from results.json changes nothing
    path = RESULTS / folder / "results.json"
    data = json.loads(path.read_text())
    assert data["question"] and report.commands(data)
    if "evals" in data:
        report.write_report(ladder_helpers.Results.read(path), tmp_path, figures=False)
    else:
        report.write_diagnostics_report(RESULTS / folder, tmp_path)
        assert {e["file"] for e in data["files"]} == {p.name for p in (RESULTS / folder).glob("*.json")} - {
            "results.json"}
    for name in ("results.md", "command.sh"):
        assert (tmp_path / name).read_text() == (RESULTS / folder / name).read_text(), f"{folder}/{name}"
    assert (RESULTS / folder / "command.sh").stat().st_mode & 0o111


def test_the_experiments_index_has_one_row_per_result_folder_with_its_commands():
    index = (RESULTS.parent / "README.md").read_text()
    rows = {line.split("`")[1]: line.split(" | ") for line in index.splitlines() if line.startswith("| [`")}
    assert set(rows) == {p.name for p in RESULTS.iterdir() if p.is_dir()}
    for folder, cells in rows.items():
        data = json.loads((RESULTS / folder / "results.json").read_text())
        listed = [c.strip("`") for c in cells[2].split("<br>")]
        if "evals" in data:  # a ladder folder: the very commands its results.json keeps
            assert listed == report.commands(data), folder
        else:  # a diagnostics folder: its command.sh, which runs every command results.json keeps
            assert listed[0].startswith(f"bash experiments/results/{folder}/command.sh"), folder
        assert cells[3].strip() and cells[4].strip().rstrip(" |"), folder  # a finding and a date


def _in_progress(folder: str) -> bool:
    """The index marks a folder whose ladder is still running: its finding starts with "In progress"."""
    index = (RESULTS.parent / "README.md").read_text()
    row = next(line for line in index.splitlines() if line.startswith(f"| [`{folder}`]"))
    return row.split(" | ")[3].startswith("In progress")


@pytest.mark.parametrize("folder", sorted(p.parent.name for p in RESULTS.glob("*/results.json")
                                          if "evals" in json.loads(p.read_text())))
def test_each_ladder_folders_commands_make_exactly_its_runs_with_its_settings(folder):
    """Every run stored was made by a command the folder records, and (once the folder is finished) every run
    a recorded command makes is stored."""
    data = json.loads((RESULTS / folder / "results.json").read_text())
    settings = {k: v for k, v in data["meta"]["settings"].items() if k != "scenes"}
    made = set()
    for command in report.commands(data):
        words = shlex.split(command)
        assert words[:3] == ["python", "-m", "experiments.mini_ladder"]
        args = mini_ladder.parser().parse_args(words[3:])
        assert args.out == f"experiments/results/{folder}" and args.runs_dir == f"runs/{folder}"
        # the settings the ladder checks results.json against: another command would be refused
        assert {**mini_ladder.eval_settings(args), "overrides": args.override} == settings
        assert args.ceiling_steps == data["evals"].get("supervised/s0", {}).get("training", {}).get("steps", 0)
        made |= {(rung, f"s{seed}") for rung in args.rungs for seed in args.seeds}
    stored = {tuple(k.split("/")[:2]) for k in data["evals"] if k.split("/")[0] in ladder_helpers.RUNGS}
    assert stored <= made if _in_progress(folder) else made == stored
    assert {k.split("/")[1] for k in data["evals"] if k.startswith("random_init/")} == {s for _, s in made}

def test_the_gain_target_is_judged_per_seed_against_its_own_init_and_its_whole_curve():
    def evals(inits, curves):
        out = {f"random_init/s{s}": {"step": 0, "oknn": {"top1": v}} for s, v in enumerate(inits)}
        for s, pts in enumerate(curves):
            out.update({f"d3ssl/s{s}/step{step}": {"step": step, "oknn": {"top1": v}} for step, v in pts})
        return out

    curves = report.learning_curves(evals([20.0, 25.0], [[(20, 26.0), (10, 24.0)], [(10, 36.0), (20, 35.5)]]))
    assert curves["d3ssl"] == {"s0": [(0, 20.0), (10, 24.0), (20, 26.0)], "s1": [(0, 25.0), (10, 36.0), (20, 35.5)]}
    line = report.gain_line(curves)
    # mean gain +8.25: s0 rises but gains +6.0; s1 gains +10.5 but falls at its last checkpoint
    assert "**no** (+8.2 points on the mean; s0 +6.0, rising at every checkpoint; " in line
    assert "s1 +10.5, not rising at every checkpoint (25.0 → 36.0 → 35.5)" in line
    met = report.gain_line(report.learning_curves(evals([20.0], [[(10, 25.0), (20, 31.0)]])))
    assert "**yes** (+11.0 points on the mean; s0 +11.0, rising at every checkpoint)" in met
    assert report.gain_line({}) is None  # nothing trained yet: no verdict
    # with the val split's size, a fall is told apart from the evaluation's noise; the verdict stays "no"
    noisy = report.gain_line(curves, num_queries=900)
    assert ("(25.0 → 36.0 → 35.5; its largest fall, 0.5 points (standard error 2.3), is within twice its standard "
            "error)") in noisy
    assert "**no** (+8.2 points on the mean;" in noisy and "s0 +6.0, rising at every checkpoint;" in noisy
    fell = report.learning_curves(evals([20.0], [[(10, 40.0), (20, 38.0), (30, 30.0)]]))
    assert ("(20.0 → 40.0 → 38.0 → 30.0; its largest fall, 8.0 points (standard error 2.2), is beyond twice its "
            "standard error)"
            in report.gain_line(fell, num_queries=900))


def test_directions_compare_two_rungs_on_the_seeds_both_have():
    rows = {"d3ssl": {"oknn_top1": {"s0": 30.0, "s1": 20.0}, "disturbed_oknn_top1": {"s0": 29.0, "s1": 19.0}},
            "soco": {"oknn_top1": {"s0": 27.0}, "disturbed_oknn_top1": {"s0": 23.0}}}
    lines = report.directions(rows)
    # on the mean over both seeds D3SSL (25.0) would be below SoCo (27.0); paired on s0 it is above
    assert ("- D3SSL above SoCo on O-KNN top-1 (Tab. 4): **not reproduced**: same direction; too few seeds for a "
            "test (d3ssl 30.0 vs soco 27.0; d +3.0 (s0); mean +3.0; one seed: no test; evaluation noise: no standard "
            "error stored; on the seeds both have: s0)") in lines
    assert ("- ... and more so on disturbed O-KNN (Tab. 4: +2.9 vs +8.8): **not reproduced**: same direction; too few "
            "seeds for a test (gaps +3.0 vs +6.0; excess d +3.0 (s0); mean +3.0; one seed: no test; evaluation noise: "
            "no standard error stored; on the seeds both have: s0)") in lines
    rows["soco"] = {"oknn_top1": {"s0": 27.0, "s1": 21.0}, "disturbed_oknn_top1": {"s0": 23.0, "s1": 18.0}}
    assert ("- D3SSL above SoCo on O-KNN top-1 (Tab. 4): **not reproduced**: same direction; too few seeds for a test "
            "(d3ssl 25.0 ±5.0 vs soco 24.0 ±3.0; d +3.0, -1.0 (s0, s1); mean +1.0, paired t = +0.50, df 1, p = 0.705; "
            "sign test p = 1.000; evaluation noise: no standard error stored)") in report.directions(rows)
    assert "- L_dp raises MCS (layer4) (Tab. 7): not measured yet" in lines
    # Sec. 3's claims compare D3SSL with SoCo on the diagnostics: lower MCS for D3SSL on three seeds is reversed
    rows["d3ssl"]["mcs_layer4"] = {"s0": 0.92, "s1": 0.93, "s2": 0.90}
    rows["soco"]["mcs_layer4"] = {"s0": 0.95, "s1": 0.99, "s2": 0.97}
    assert ("- D3SSL less positional bias than SoCo: higher MCS (layer4) (Sec. 3.2, Fig. 4b): **reversed** "
            "(d3ssl 0.917 ±0.015 vs soco 0.970 ±0.020; d -0.0300, -0.0600, -0.0700 (s0, s1, s2); mean -0.0533, "
            "paired t = -4.44, df 2, p = 0.047; sign test p = 0.250; evaluation noise: no standard error stored)"
            ) in report.directions(rows)


def test_the_evaluation_noise_is_given_beside_the_verdict():
    def line(d3ssl, dconly, se, key="cr_layer4", text="L_dp lowers CR (layer4) (Tab. 7)"):
        rows = {"d3ssl": {key: d3ssl, f"{key}_se": {s: se for s in d3ssl}},
                "d3ssl_dconly": {key: dconly, f"{key}_se": {s: se for s in dconly}}}
        return next(x for x in report.directions(rows) if x.startswith(f"- {text}:"))

    # lower on every seed by about 0.001, each evaluation's standard error 0.002: the difference's is
    # sqrt(3 * 2 * 0.002^2) / 3 = 0.0016, and no seed's difference is beyond twice its own (0.0028)
    seeds = ("s0", "s1", "s2")
    low = line(dict(zip(seeds, (1.000, 1.000, 1.001))), dict(zip(seeds, (1.001, 1.0012, 1.0018))), 0.002)
    assert low.startswith("- L_dp lowers CR (layer4) (Tab. 7): **reproduced** (")
    assert low.endswith("; evaluation noise: standard error of the mean difference 0.0016, a seed's difference beyond "
                        "twice its own on 0 of 3)")
    # the same per-seed values with ten times smaller errors: every seed beyond its own noise
    assert line(dict(zip(seeds, (1.000, 1.000, 1.001))), dict(zip(seeds, (1.001, 1.0012, 1.0018))), 0.0002).endswith(
        "standard error of the mean difference 0.0002, a seed's difference beyond twice its own on 3 of 3)")


def test_the_top1_standard_error_is_binomial_over_the_queries():
    evals = {"random_init/s0": {"step": 0, "oknn": {"top1": 20.0, "top5": 60.0, "num_queries": 400},
                                "disturbed_oknn": {"top1": 50.0, "top5": 90.0, "num_queries": 100}}}
    row = report.summary(SimpleNamespace(data={"evals": evals}))["random_init"]
    assert row["oknn_top1_se"]["s0"] == pytest.approx(2.0)  # sqrt(20 * 80 / 400)
    assert row["disturbed_oknn_top1_se"]["s0"] == pytest.approx(5.0)  # sqrt(50 * 50 / 100)
    assert row["cr_layer4_se"] == {}  # not evaluated: no error either


def test_the_learning_curve_figure_gives_every_seed_its_own_line_style_in_seed_order():
    styles = report.seed_linestyles({"s10", "s2", "s0", "s1"})
    assert list(styles) == ["s0", "s1", "s2", "s10"]  # by number, not as strings ("s10" < "s2")
    assert [name for name, _ in styles.values()] == ["solid", "dashed", "dash-dot", "dotted"]
    assert len({str(ls) for _, ls in styles.values()}) == 4
    assert report.seed_linestyles({"s0", "s1", "s2", "s3", "s4"})["s4"] == styles["s0"]  # cycles past four


@pytest.mark.slow  # trains two rungs through accelerate launch (the ladder fixture)
def test_relaunch_redoes_nothing_and_a_lost_evaluation_is_redone(ladder, monkeypatch):
    root, argv = ladder
    path = root / "results" / "results.json"
    before = json.loads(path.read_text())
    launched = []
    monkeypatch.setattr(mini_ladder.subprocess, "run", lambda *a, **k: launched.append(a))
    assert mini_ladder.main(argv) == 0
    assert launched == [] and json.loads(path.read_text())["evals"] == before["evals"]
    # a ladder killed before one evaluation finished: only that one is computed again, identically
    lost = dict(before)
    lost["evals"] = {k: v for k, v in before["evals"].items() if k != "soco/s0/step6"}
    path.write_text(json.dumps(lost))
    assert mini_ladder.main(argv) == 0
    assert launched == []
    assert json.loads(path.read_text())["evals"]["soco/s0/step6"] == before["evals"]["soco/s0/step6"]


@pytest.mark.slow  # trains two rungs through accelerate launch (the ladder fixture)
def test_evaluations_stored_without_standard_errors_get_them_on_relaunch_and_nothing_else(ladder, monkeypatch, capsys):
    root, argv = ladder
    path = root / "results" / "results.json"
    before = path.read_text()
    monkeypatch.setattr(mini_ladder.subprocess, "run", lambda *a, **k: pytest.fail("nothing should be trained"))

    def without_errors(change=None):
        data = json.loads(before)
        for key in ("random_init/s0", "soco/s0/step6"):
            del data["evals"][key]["cr_se"], data["evals"][key]["mcs_se"]
        if change:
            change(data["evals"])
        path.write_text(json.dumps(data))

    try:
        without_errors()
        assert mini_ladder.main(argv) == 0
        # the same errors, the rest untouched
        assert json.loads(path.read_text())["evals"] == json.loads(before)["evals"]
        # a stored mean that the weights no longer give is refused, not mixed with new errors
        without_errors(lambda evals: evals["soco/s0/step6"]["cr"].update(
            layer4=evals["soco/s0/step6"]["cr"]["layer4"] + 0.01))
        with pytest.raises(RuntimeError, match=r"soco/s0/step6: cr at layer4 comes out as .* delete soco/s0/step6 "):
            mini_ladder.main(argv)
        # a run whose checkpoints are gone keeps its evaluation as it was, and says so
        without_errors()
        (root / "runs" / "soco_s0").rename(root / "runs" / "soco_s0.moved")
        capsys.readouterr()
        assert mini_ladder.main(argv) == 0
        assert "soco/s0/step6: no step-6 checkpoint in " in capsys.readouterr().out
        assert "cr_se" not in json.loads(path.read_text())["evals"]["soco/s0/step6"]
    finally:
        if (root / "runs" / "soco_s0.moved").exists():
            (root / "runs" / "soco_s0.moved").rename(root / "runs" / "soco_s0")
        path.write_text(before)


def with_ceiling_steps(argv: list[str], steps: str) -> list[str]:
    i = argv.index("--ceiling-steps") + 1
    return argv[:i] + [steps] + argv[i + 1:]


@pytest.mark.slow  # trains two rungs through accelerate launch (the ladder fixture)
def test_ceiling_steps_zero_skips_the_ceiling_and_a_negative_count_is_refused(ladder, monkeypatch, capsys):
    root, argv = ladder
    path = root / "results" / "results.json"
    before = path.read_text()
    data = json.loads(before)
    del data["evals"]["supervised/s0"]
    path.write_text(json.dumps(data))
    monkeypatch.setattr(mini_ladder.subprocess, "run", lambda *a, **k: pytest.fail("nothing should be trained"))
    try:
        assert mini_ladder.main(with_ceiling_steps(argv, "0")) == 0
        assert "supervised/s0" not in json.loads(path.read_text())["evals"]
        md = (root / "results" / "results.md").read_text()
        assert "| random init (floor) | 1 |" in md and "supervised RoI classifier" not in md
        with pytest.raises(SystemExit):
            mini_ladder.main(with_ceiling_steps(argv, "-1"))
        assert "--ceiling-steps must be >= 0 (0 skips the supervised ceiling), got -1" in capsys.readouterr().err
    finally:
        path.write_text(before)
        assert mini_ladder.main(argv) == 0  # the report again from the untouched results


@pytest.mark.slow  # trains two rungs through accelerate launch (the ladder fixture)
def test_other_settings_are_refused(ladder):
    root, argv = ladder
    with pytest.raises(ValueError, match="other settings"):
        mini_ladder.main([a if a != "4" else "5" for a in argv])


@pytest.mark.slow  # trains two rungs through accelerate launch (the ladder fixture)
def test_diagnostics_run_on_a_ladder_run(ladder, tmp_path, capsys):

    root, _ = ladder
    run = root / "runs" / "d3ssl_s0"
    assert diagnose_bn_leak.main(["--run", str(run), "--batches", "1", "--out", str(tmp_path / "leak.json")]) == 0
    leak = json.loads((tmp_path / "leak.json").read_text())
    assert leak["step"] == 6 and leak["bn_groups"] == 1
    for model in ("random init", "trained"):
        for mode in ("train", "eval"):
            r = leak[f"{model}/{mode}"]
            assert -1 <= r["cos_bank"] <= 1 and 0 <= r["p_above_bank"] <= 1 and 0 <= r["p_above_same_batch"] <= 1
    # the two models are different networks: their statistics differ
    assert leak["random init/train"] != leak["trained/train"]
    with pytest.raises(SystemExit, match="soco run"):
        diagnose_bn_leak.main(["--run", str(root / "runs" / "soco_s0")])

    assert diagnose_instance_cues.main(["--run", str(run), "--short-side", "96",
                                        "--out", str(tmp_path / "cues.json")]) == 0
    cues = json.loads((tmp_path / "cues.json").read_text())
    assert set(cues["classes"]) == {"shape", "photo", "fill", "hue", "size", "rotation", "aspect", "position", "row",
                                    "column", "count", "neighbour"}
    assert all(0 < v <= 100 for v in cues["chance"].values())
    assert all(0 <= v <= 100 for m in cues["shape_within_position"].values() for v in m.values())
    for attr, gain in cues["gain"].items():
        assert gain == pytest.approx(cues["top1"]["trained"][attr] - cues["top1"]["random init"][attr])
    assert "trained - random init" in capsys.readouterr().out


@pytest.mark.slow  # trains two rungs through accelerate launch (the ladder fixture)
def test_coupling_diagnostic_on_ladder_runs(ladder, tmp_path):

    root, _ = ladder
    runs = [str(root / "runs" / f"{r}_s0") for r in ("d3ssl", "soco")]
    assert diagnose_coupling.main(["--run", *runs, "--ceiling-steps", "2", "--num-pairs", "4", "--object-size", "64",
                                   "--short-side", "96", "--images", "2", "--out", str(tmp_path / "cr.json")]) == 0
    models = json.loads((tmp_path / "cr.json").read_text())["models"]
    init, torchvision_init, d3ssl, soco, ceiling = models.values()
    assert list(models)[2:] == ["d3ssl_s0 (step 6)", "soco_s0 (step 6)", "supervised ceiling (2 steps)"]
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        # SoCo's initialisation: every block is its shortcut, so past the stem nothing mixes B into A
        assert init["blocks"][stage] == {"branch_to_shortcut": 0.0, "last_bn_weight": 0.0}
        if stage != "layer1":  # layer1's edge cells still see the stem's few pixels across A's border
            assert init["cosines"][stage]["a1_a2"] == pytest.approx(1.0, abs=1e-6)
            assert init["cr"][stage] == pytest.approx(1.0, abs=1e-6)
        assert torchvision_init["blocks"][stage]["last_bn_weight"] == 1.0
        assert torchvision_init["blocks"][stage]["branch_to_shortcut"] > 0.1
        for m in models.values():
            assert m["cr"][stage] <= m["cr_max"][stage] * (1 + 1e-6)
    # the same draws otherwise: with the branches open, B moves A's layer4 feature
    assert torchvision_init["cosines"]["layer4"]["a1_a2"] < 1 - 1e-4
    # training moves the zero-initialised weights off 0
    assert d3ssl["blocks"]["layer4"]["last_bn_weight"] > 0 and soco["blocks"]["layer4"]["last_bn_weight"] > 0
    with pytest.raises(SystemExit, match="no checkpoints"):
        diagnose_coupling.main(["--run", str(tmp_path)])


@pytest.mark.slow  # trains two rungs through accelerate launch (the ladder fixture)
def test_teacher_diagnostic_on_ladder_runs(ladder, tmp_path):

    # a constant momentum leaves m^n of the start; SoCo's cosine from 0.99 to 1 over the ladder's 279 steps, 1/4
    assert diagnose_teacher.init_weight_held(5, 10, 0.9, 0.9) == pytest.approx(0.9 ** 5)
    assert diagnose_teacher.init_weight_held(0, 10, 0.9, 1.0) == 1.0
    assert diagnose_teacher.init_weight_held(279, 279, 0.99, 1.0) == pytest.approx(0.245, abs=1e-3)
    assert diagnose_teacher.init_weight_held(279, 279, 0.95, 1.0) < 1e-3

    root, _ = ladder
    run = root / "runs" / "d3ssl_s0"
    assert diagnose_teacher.main(["--run", str(run), "--oknn", "--short-side", "96",
                                  "--out", str(tmp_path / "t.json")]) == 0
    rows = json.loads((tmp_path / "t.json").read_text())["runs"][str(run)]["checkpoints"]
    assert [r["step"] for r in rows] == [3, 6]
    assert rows[0]["init_weight_held"] > rows[1]["init_weight_held"] > 0
    assert rows[1]["momentum"] == 1.0  # the cosine ends at momentum_final
    # the gap is the one between the two backbones the checkpoint holds, relative to the random init's norm
    ckpt = ladder_helpers.final_checkpoint(run)[0]
    student, teacher = (ladder_helpers.backbone_from_checkpoint(ckpt, n).state_dict() for n in ("student", "teacher"))
    init = ladder_helpers.initial_backbone(ladder_helpers.final_checkpoint(run)[1], 0).state_dict()
    learnt = [k for k, v in init.items() if v.is_floating_point() and "running_" not in k]
    gap = sum(float((teacher[k] - student[k]).pow(2).sum()) for k in learnt) ** 0.5
    assert rows[1]["teacher_to_student"] == pytest.approx(gap / sum(float(init[k].pow(2).sum()) for k in learnt) ** 0.5)
    assert rows[1]["student_moved"] > 0 and rows[1]["teacher_moved"] > 0
    # the student's O-KNN is the ladder's own evaluation of that checkpoint
    stored = json.loads((root / "results" / "results.json").read_text())["evals"]
    assert rows[1]["oknn_student"] == pytest.approx(stored["d3ssl/s0/step6"]["oknn"]["top1"])
    assert 0 <= rows[1]["oknn_teacher"] <= 100
    with pytest.raises(SystemExit, match="no checkpoints"):
        diagnose_teacher.main(["--run", str(tmp_path)])


def test_replayed_attributes_match_the_stored_split(tmp_path):
    from d3ssl_zoo.data import scenes
    from d3ssl_zoo.evaluation.objects import load_coco_objects

    cfg = scenes.SceneConfig(num_pretrain=2, num_train=3, num_val=5, image_size=96, object_size=(32, 48), seed=2)
    ds = scenes.get_scene_dataset(cfg, tmp_path / "s", workers=1, progress=False)
    original, original_mask = scenes._texture, scenes.shape_mask
    attrs = diagnose_instance_cues.replay_attributes(cfg, "val", 5)
    assert scenes._texture is original  # the generator is left as it was
    stored = np.concatenate([r.objects.labels for r in load_coco_objects(ds.val_ann, ds.val_images).images])
    assert np.array_equal(attrs["shape"], stored)
    # another seed's stream gives other objects: the check above is the replay's, not a coincidence
    other = diagnose_instance_cues.replay_attributes(scenes.SceneConfig(**{**cfg.__dict__, "seed": 3}), "val", 5)
    assert not np.array_equal(other["shape"], stored)
    n = len(stored)
    assert all(len(v) == n for v in attrs.values())
    assert attrs["photo"].max() < len(scenes.PHOTOS) and set(attrs["fill"]) <= {0, 1}
    assert attrs["hue"].max() < diagnose_instance_cues.HUE_BINS and set(attrs["size"]) <= {0, 1, 2}
    assert set(attrs["rotation"]) <= {0, 1, 2} and set(attrs["aspect"]) <= {0, 1, 2}
    # place and context from the stored boxes: the grid cell of each box centre, the image's shape count
    # and the shape of the nearest other box
    images = load_coco_objects(ds.val_ann, ds.val_images).images
    position, row, column, count, neighbour = [], [], [], [], []
    for r in images:
        boxes, labels = np.asarray(r.objects.boxes), r.objects.labels
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2
        cell = np.minimum(centre * 3 // cfg.image_size, 2).astype(int)
        position += (cell[:, 1] * 3 + cell[:, 0]).tolist()
        row += cell[:, 1].tolist()  # y
        column += cell[:, 0].tolist()  # x
        count += [len(labels)] * len(labels)
        for k in range(len(labels)):
            d = [np.hypot(*(centre[j] - centre[k])) if j != k else np.inf for j in range(len(labels))]
            neighbour.append(int(labels[int(np.argmin(d))]) if len(labels) > 1 else len(scenes.SHAPES))
    assert attrs["position"].tolist() == position and attrs["count"].tolist() == count
    assert attrs["row"].tolist() == row and attrs["column"].tolist() == column and row != column
    assert attrs["neighbour"].tolist() == neighbour
    # the cue-free scenes: the same layouts, so the same shapes and poses, and no photo, fill or hue to replay
    cue_free = diagnose_instance_cues.replay_attributes(scenes.SceneConfig(**{**cfg.__dict__, "instance_cues": 0}),
                                                        "val", 5)
    assert set(cue_free) == set(attrs) - {"photo", "fill", "hue"}
    assert all(np.array_equal(cue_free[k], attrs[k]) for k in cue_free)
    assert scenes.shape_mask is original_mask


def test_replayed_pose_is_the_drawn_pose():
    import cv2

    from d3ssl_zoo.data import scenes

    # one shape per image on the cue-free scenes, no clutter: a square's outline shows its drawn rotation
    # and aspect (its sides are scaled by sqrt(aspect) and 1/sqrt(aspect) before it is rotated)
    cfg = scenes.SceneConfig(num_val=150, image_size=96, object_size=(64, 72), objects_per_image=(1, 1),
                             clutter=(0, 0), max_rotation=30, instance_cues=0, seed=1)
    attrs = diagnose_instance_cues.replay_attributes(cfg, "val", cfg.num_val)
    rng = np.random.default_rng([cfg.seed, 2])
    photos = scenes._photos()
    cut_angle, cut_aspect = cfg.max_rotation / 3, np.log(1.25) / 3
    checked = 0
    for k in range(cfg.num_val):
        img, _, labels = scenes.render_scene(photos, cfg, rng)
        if labels[0] != scenes.SHAPES.index("square"):
            continue
        mask = (img[..., 0] > (scenes.FLAT_FILL[0] + scenes.FLAT_BACKGROUND[0]) / 2).astype(np.uint8)
        corners = cv2.boxPoints(cv2.minAreaRect(cv2.findNonZero(mask)))
        edges = np.roll(corners, -1, 0) - corners
        angles = (np.degrees(np.arctan2(edges[:, 1], edges[:, 0])) + 90) % 180 - 90  # each side's direction
        along = int(np.argmin(np.abs(angles)))  # a side along the rotated x axis (|rotation| <= 30 < 45 degrees)
        angle = angles[along]
        log_aspect = np.log(np.hypot(*edges[along]) / np.hypot(*edges[(along + 1) % 4]))
        if abs(abs(angle) - cut_angle) > 2:  # clear of a bin edge
            assert attrs["rotation"][k] == np.digitize(angle, [-cut_angle, cut_angle]), (k, angle)
            checked += 1
        if abs(abs(log_aspect) - cut_aspect) > 0.03:
            assert attrs["aspect"][k] == np.digitize(log_aspect, [-cut_aspect, cut_aspect]), (k, log_aspect)
    assert checked >= 8


def test_shape_within_position_shows_what_the_place_hides(capsys):

    rng = np.random.default_rng(0)

    def split(n):
        return {"shape": rng.integers(0, 10, n), "position": rng.integers(0, 9, n)}

    attrs = {"train": split(1800), "val": split(600)}

    def features(place_weight):  # a weak shape signal, a place signal of the given weight, noise
        out = {}
        for name, a in attrs.items():
            f = 0.6 * np.eye(19)[a["shape"]] + place_weight * np.eye(19)[10 + a["position"]]
            out[name] = torch.nn.functional.normalize(torch.from_numpy(f + rng.normal(0, 0.35, f.shape)).float(), dim=1)
        return out

    placed = diagnose_instance_cues.shape_within(features(1.5), attrs, "position")
    assert placed["same"] > placed["random"] + 10  # neighbours at the same place, whatever their shape
    unplaced = diagnose_instance_cues.shape_within(features(0.0), attrs, "position")
    assert abs(unplaced["same"] - unplaced["random"]) < 5  # nothing to hide: a smaller bank either way
    assert unplaced["random"] > placed["random"]
    # a cell no train object falls in: its queries are left out, and the output says so
    attrs["train"]["position"][attrs["train"]["position"] == 3] = 4
    emptied = diagnose_instance_cues.shape_within(features(1.5), attrs, "position")
    left_out = int((attrs["val"]["position"] == 3).sum())
    assert f"no train object has position 3; its {left_out} val objects are left out" in capsys.readouterr().out
    assert emptied["same"] > emptied["random"] + 10
