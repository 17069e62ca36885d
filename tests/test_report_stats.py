"""The paired comparison over seeds that experiments.report judges the paper's directions by: Student's t CDF for
integer degrees of freedom, the paired t-test, the exact sign test, the verdict rule, and how results.md shows
them (the verdict lines, the layer3 columns, the readings the runs used)."""
import json
import math

import pytest

from experiments import ladder, report


# ---------------------------------------------------------------- Student's t, the paired t-test, the sign test
def two_sided(t: float, df: int) -> float:
    return 2 * (1 - report.student_t_cdf(abs(t), df))


def test_student_t_gives_known_values_without_scipy():
    assert two_sided(2.353, 3) == pytest.approx(0.100, abs=5e-4)  # the 0.10 critical value of a t table
    assert two_sided(9.2, 3) == pytest.approx(0.0027, abs=5e-5)
    assert two_sided(3.182, 3) == pytest.approx(0.050, abs=5e-4)  # the 0.05 critical value, df 3
    assert two_sided(12.706, 1) == pytest.approx(0.050, abs=5e-4)  # df 1
    assert two_sided(2.776, 4) == pytest.approx(0.050, abs=5e-4)  # df 4
    assert two_sided(1.0, 1) == pytest.approx(0.5, abs=1e-12)  # df 1 is the Cauchy distribution: P(|T| > 1) = 1/2
    assert two_sided(2.0, 2) == pytest.approx(1 - 2 / math.sqrt(6), abs=1e-12)  # df 2: P(|T| > t) = 1 - t/sqrt(t²+2)
    assert report.student_t_cdf(0.0, 5) == pytest.approx(0.5, abs=1e-15)
    assert report.student_t_cdf(-1.7, 6) == pytest.approx(1 - report.student_t_cdf(1.7, 6), abs=1e-15)
    assert report.student_t_cdf(math.inf, 3) == 1.0 and report.student_t_cdf(-math.inf, 3) == 0.0
    # more degrees of freedom: thinner tails, towards the normal's 0.0455 at t = 2
    tails = [two_sided(2.0, df) for df in (1, 2, 3, 5, 10, 30, 200)]
    assert tails == sorted(tails, reverse=True) and tails[-1] == pytest.approx(0.0468, abs=5e-4)
    for df in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="df must be an integer >= 1"):
            report.student_t_cdf(1.0, df)


def test_student_t_agrees_with_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in range(1, 41):
        for t in (-60.0, -9.2, -3.0, -1.0, -0.3, 0.0, 0.5, 1.5, 2.353, 4.0, 12.0, 150.0):
            assert report.student_t_cdf(t, df) == pytest.approx(stats.t.cdf(t, df), abs=1e-12), (t, df)


def test_the_paired_t_test_of_per_seed_differences():
    t, df, p = report.paired_t([1.0, 2.0, 3.0])  # mean 2, sample sd 1: t = 2 / (1 / sqrt 3)
    assert (t, df) == (pytest.approx(2 * math.sqrt(3)), 2)
    assert p == pytest.approx(1 - t / math.sqrt(t * t + 2), abs=1e-12)  # df 2's closed form, 0.074
    t, df, p = report.paired_t([5.9, 1.7, 1.3, 1.3])
    assert (round(t, 3), df, round(p, 3)) == (2.275, 3, 0.107)
    assert report.paired_t([0.5, 0.5, 0.5]) == (math.inf, 2, 0.0)  # no spread at all
    assert report.paired_t([-0.5, -0.5]) == (-math.inf, 1, 0.0)
    assert report.paired_t([0.0, 0.0, 0.0]) == (0.0, 2, 1.0)
    assert report.paired_t([3.0]) is None  # one seed: no test


def test_the_exact_sign_test():
    assert report.sign_test([1.0, 2.0, 3.0, 4.0]) == pytest.approx(0.125)  # 2 / 2^4: the least 4 seeds can give
    assert report.sign_test([-1.0, -2.0, -3.0, -4.0]) == pytest.approx(0.125)
    assert report.sign_test([1.0, 1.0, 1.0, -1.0]) == pytest.approx(2 * (1 + 4) / 16)
    assert report.sign_test([0.0, 1.0, 1.0, 1.0]) == pytest.approx(2 / 8)  # a zero counts for neither side
    assert report.sign_test([1.0, -1.0]) == 1.0 and report.sign_test([0.0, 0.0]) == 1.0
    assert report.sign_test([1.0] * 10) == pytest.approx(2 / 1024)


def test_the_sign_test_agrees_with_scipy():
    stats = pytest.importorskip("scipy.stats")
    for n in range(1, 13):
        for k in range(n + 1):
            d = [1.0] * k + [-1.0] * (n - k)
            assert report.sign_test(d) == pytest.approx(stats.binomtest(k, n, 0.5).pvalue, abs=1e-12), (k, n)


# ---------------------------------------------------------------- the verdict rule
def seeds(*values: float) -> dict[str, float]:
    return {f"s{i}": v for i, v in enumerate(values)}


def test_the_verdict_rule_on_crafted_per_seed_differences():
    j = report.judge(seeds(1.0, 2.0, 3.0, 4.0))  # t = 3.87, df 3, p = 0.030
    assert (j.verdict, j.why, j.label()) == ("reproduced", "", "**reproduced**")
    assert (j.n, j.df, round(j.t, 2), round(j.p, 3), j.p_sign) == (4, 3, 3.87, 0.030, pytest.approx(0.125))
    j = report.judge(seeds(-1.0, -2.0, -3.0, -4.0))
    assert (j.verdict, j.label(), round(j.p, 3)) == ("reversed", "**reversed**", 0.030)
    # the paper's direction on every seed, but p = 0.107: not reproduced
    j = report.judge(seeds(5.9, 1.7, 1.3, 1.3))
    assert j.label() == "**not reproduced**: same direction, not significant" and j.mean == pytest.approx(2.55)
    j = report.judge(seeds(-2.0, 1.0, -1.0, -3.0))  # p = 0.239
    assert j.label() == "**not reproduced**: opposite direction, not significant"
    assert report.judge(seeds(1.0, -1.0, 2.0, -2.0)).label() == "**not reproduced**: no difference"
    # fewer than 3 seeds: never a verdict, however clear the numbers
    j = report.judge(seeds(3.0, 3.1))
    assert j.p < 0.05 and j.label() == "**not reproduced**: same direction; too few seeds for a test"
    j = report.judge(seeds(-3.0))
    assert j.t is None and j.p is None
    assert j.label() == "**not reproduced**: opposite direction; too few seeds for a test"
    # the rule's threshold: d = a-1, a, a+1 has t = a sqrt(3); df 2's 0.05 critical value is 4.303
    above, below = report.judge(seeds(1.52, 2.52, 3.52)), report.judge(seeds(1.45, 2.45, 3.45))
    assert (above.verdict, round(above.p, 4)) == ("reproduced", 0.0487)
    assert (below.verdict, round(below.p, 4)) == ("not reproduced", 0.0513)
    assert below.why == "same direction, not significant"
    with pytest.raises(ValueError, match="no seed"):
        report.judge({})


def direction(rows: dict, text: str) -> str:
    return next(x for x in report.directions(rows) if x.startswith(f"- {text}:"))


def test_a_direction_line_gives_the_verdict_the_per_seed_differences_the_tests_and_the_noise():
    rows = {"d3ssl": {"oknn_top1": seeds(33.8, 31.1, 32.8, 32.0, 30.0), "oknn_top1_se": seeds(1.5, 1.5, 1.5, 1.5, 1.5)},
            "soco": {"oknn_top1": seeds(27.9, 29.4, 31.5, 30.7), "oknn_top1_se": seeds(1.5, 1.5, 1.5, 1.5)}}
    # compared on the 4 seeds both have: d +5.9, +1.7, +1.3, +1.3
    assert direction(rows, "D3SSL above SoCo on O-KNN top-1 (Tab. 4)") == (
        "- D3SSL above SoCo on O-KNN top-1 (Tab. 4): **not reproduced**: same direction, not significant (d3ssl 32.4 "
        "±1.3 vs soco 29.9 ±1.8; d +5.9, +1.7, +1.3, +1.3 (s0, s1, s2, s3); mean +2.5, paired t = +2.28, df 3, "
        "p = 0.107; sign test p = 0.125; evaluation noise: standard error of the mean difference 1.1, a seed's "
        "difference beyond twice its own on 1 of 4; on the seeds both have: s0, s1, s2, s3)")
    # SoCo's MCS lower than D3SSL's on every seed by about 0.03: Sec. 3.2's direction, reproduced, at either stage
    for stage in ("layer4", "layer3"):
        rows["d3ssl"][f"mcs_{stage}"] = seeds(0.95, 0.96, 0.94, 0.97)
        rows["soco"][f"mcs_{stage}"] = seeds(0.92, 0.925, 0.91, 0.945)
    line = direction(rows, "D3SSL less positional bias than SoCo: higher MCS (layer3) (Sec. 3.2, Fig. 4b)")
    assert line.startswith("- D3SSL less positional bias than SoCo: higher MCS (layer3) (Sec. 3.2, Fig. 4b): "
                           "**reproduced** (d3ssl 0.955 ±0.015 vs soco 0.925 ±0.017; d +0.0300, +0.0350, +0.0300, "
                           "+0.0250 (s0, s1, s2, s3); mean +0.0300, paired t = +14.70, df 3, p < 0.001; sign test "
                           "p = 0.125; evaluation noise: no standard error stored")
    assert "**reproduced**" in direction(rows, "D3SSL less positional bias than SoCo: higher MCS (layer4) (Sec. 3.2, "
                                               "Fig. 4b)")
    # CR lower is the paper's direction: D3SSL's CR higher on every seed is reversed
    rows["d3ssl"]["cr_layer3"], rows["soco"]["cr_layer3"] = seeds(1.05, 1.06, 1.04, 1.05), seeds(1.0, 1.0, 1.0, 1.01)
    rows["d3ssl"]["cr_layer3_se"] = seeds(0.01, 0.01, 0.01, 0.01)
    rows["soco"]["cr_layer3_se"] = seeds(0.01, 0.01)
    line = direction(rows, "D3SSL lower CR (layer3) than SoCo (Sec. 3.1, Fig. 3b)")
    assert "**reversed** (d3ssl 1.050 ±0.010 vs soco 1.002 ±0.005; d -0.0500, -0.0600, -0.0400, -0.0400 " in line
    assert "evaluation noise: standard errors stored for s0, s1 only" in line
    assert direction(rows, "D3SSL lower CR (layer4) than SoCo (Sec. 3.1, Fig. 3b)").endswith("not measured yet")
    assert direction(rows, "L_dp raises MCS (layer3) (Tab. 7)").endswith("not measured yet")
    # every CR / MCS direction is judged at layer4 and at layer3
    texts = [x.split(":")[0] for x in report.directions(rows)]
    for claim in ("D3SSL lower CR ({}) than SoCo", "SoCo + Aug_D3SSL lower CR ({}) than SoCo", "L_dp lowers CR ({})",
                  "L_dp raises MCS ({})"):
        assert [sum(t.startswith(f"- {claim.format(s)}") for t in texts) for s in ("layer4", "layer3")] == [1, 1]
    # the 1-of-K rung is judged only in a folder that ran it (its d3ssl rung pasted all K proposals)
    one_of_k = "- L_dp on 1 of K raises MCS ({}) over w/o L_dp"
    assert not any(t.startswith(one_of_k.format("layer4")) for t in texts)
    rows["d3ssl_dp1"] = {"mcs_layer4": seeds(0.9, 0.9), "mcs_layer3": seeds(0.9, 0.9)}
    texts = [x.split(":")[0] for x in report.directions(rows)]
    assert [sum(t.startswith(one_of_k.format(s)) for t in texts) for s in ("layer4", "layer3")] == [1, 1]


def test_more_so_on_disturbed_is_a_paired_comparison_of_the_excess():
    def rows(gaps, disturbed_gaps):
        n = len(gaps)
        return {"d3ssl": {"oknn_top1": seeds(*(30.0 + g for g in gaps)),
                          "disturbed_oknn_top1": seeds(*(25.0 + g for g in disturbed_gaps))},
                "soco": {"oknn_top1": seeds(*[30.0] * n), "disturbed_oknn_top1": seeds(*[25.0] * n)}}

    text = "... and more so on disturbed O-KNN (Tab. 4: +2.9 vs +8.8)"
    # the paper's +2.9 vs +8.8 on every seed, with a little spread: reproduced
    line = direction(rows([2.9, 3.0, 2.8, 2.9], [8.8, 8.6, 9.0, 8.9]), text)
    assert line.startswith(f"- {text}: **reproduced** (gaps +2.9 vs +8.8; excess d +5.9, +5.6, +6.2, +6.0 (s0, s1, "
                           "s2, s3); mean +5.9, paired t = +")
    assert line.endswith("; evaluation noise: no standard error stored)")
    assert direction(rows([2.6, 2.6, 2.7, 2.5], [2.7, 2.4, 2.9, 2.6]), text).startswith(
        f"- {text}: **not reproduced**: same direction, not significant")
    assert direction(rows([2.0, 2.0], [9.0, 8.0]), text).startswith(
        f"- {text}: **not reproduced**: same direction; too few seeds for a test")


# ---------------------------------------------------------------- results.md: layer3 columns and the readings
def evaluation(top1: float, mcs4: float, mcs3: float) -> dict:
    stages = ("layer1", "layer2", "layer3", "layer4")
    return {"step": 9, "final": True,
            "oknn": {"top1": top1, "top5": 70.0, "num_bank": 100, "num_queries": 400},
            "disturbed_oknn": {"top1": top1 - 1, "top5": 68.0, "num_queries": 400},
            "cr": {s: 1.0 for s in stages}, "cr_se": {s: 0.001 for s in stages},
            "mcs": {**{s: 0.99 for s in stages}, "layer4": mcs4, "layer3": mcs3}, "mcs_se": {s: 0.002 for s in stages}}


def test_results_md_prints_the_readings_and_the_layer3_columns(tmp_path):
    evals = {}
    for i in range(3):
        evals[f"random_init/s{i}"] = {**evaluation(20.0 + i, 0.999, 0.998), "step": 0}
        evals[f"d3ssl/s{i}/step9"] = evaluation(30.0 + i, 0.93 + i / 100, 0.961 + i / 1000)
        evals[f"soco/s{i}/step9"] = evaluation(28.0 + i, 0.95, 0.987)
    meta = {"settings": {"short_side": 256, "overrides": ["dataset.source=scenes:instance_cues=0"], "scenes": "k"},
            "readings": {"SoCo data path": "position pairing", "PRC": "side ratio", "extra": "x"}}
    (tmp_path / "results.json").write_text(json.dumps({"meta": meta, "evals": evals, "question": "Q?",
                                                       "command": "python -m experiments.mini_ladder --seeds 0 1 2"}))
    report.write_report(ladder.Results.read(tmp_path / "results.json"), tmp_path, figures=False)
    md = (tmp_path / "results.md").read_text()
    # under the question, in READINGS' order, one the constant does not name last
    assert ("**Question.** Q?\n\n**Readings.** PRC: side ratio; SoCo data path: position pairing; extra: x "
            "([docs/design.md](../../../docs/design.md#readings-of-the-paper)).\n\n") in md
    assert ("| row | seeds | O-KNN top-1 | top-5 | disturbed top-1 | top-5 | CR layer4 ↓ | MCS layer4 ↑ | "
            "CR layer3 ↓ | MCS layer3 ↑ |") in md
    assert ("| D3SSL (L_dc + L_dp) | 3 | 31.0 ±1.0 | 70.0 ±0.0 | 30.0 ±1.0 | 68.0 ±0.0 | 1.000 ±0.000 | 0.940 ±0.010 | "
            "1.000 ±0.000 | 0.962 ±0.001 |") in md
    assert report.VERDICT_RULE in md and report.NOISE_RULE in md
    # MCS: D3SSL below SoCo on every seed at layer3 (0.961-0.963 vs 0.987): reversed
    assert "- D3SSL less positional bias than SoCo: higher MCS (layer3) (Sec. 3.2, Fig. 4b): **reversed** " in md
    # no readings stored: no line
    del meta["readings"]
    (tmp_path / "results.json").write_text(json.dumps({"meta": meta, "evals": evals}))
    report.write_report(ladder.Results.read(tmp_path / "results.json"), tmp_path, figures=False)
    assert "**Readings.**" not in (tmp_path / "results.md").read_text()


def test_a_folder_labelled_with_readings_refuses_results_made_with_others(tmp_path):
    assert set(ladder.READINGS) == {"proposals", "PRC", "de-positioning", "SoCo data path"}
    meta = {"settings": {"short_side": 256}, "readings": ladder.READINGS}
    results = ladder.Results(tmp_path / "results.json", meta)
    results.put("random_init/s0", {"step": 0})
    assert json.loads((tmp_path / "results.json").read_text())["meta"]["readings"] == ladder.READINGS
    ladder.Results(tmp_path / "results.json", meta)  # the same readings: resumes
    other = {**ladder.READINGS, "PRC": "side ratio"}
    with pytest.raises(ValueError, match="holds results made with other readings of the paper"):
        ladder.Results(tmp_path / "results.json", {**meta, "readings": other})
    # a folder with results but no readings recorded is not relabelled either
    (tmp_path / "results.json").write_text(json.dumps({"meta": {"settings": meta["settings"]},
                                                       "evals": {"random_init/s0": {"step": 0}}}))
    with pytest.raises(ValueError, match=r"other readings of the paper \(not recorded\)"):
        ladder.Results(tmp_path / "results.json", meta)


def test_l_dp_is_judged_on_o_knn_as_tab_6_is():
    rows = {"d3ssl": {"oknn_top1": seeds(30.0, 31.0, 29.0, 32.0), "disturbed_oknn_top1": seeds(25.0, 25.0, 25.0, 25.0)},
            "d3ssl_dconly": {"oknn_top1": seeds(26.0, 27.5, 25.0, 28.0),
                             "disturbed_oknn_top1": seeds(25.0, 26.0, 24.0, 25.5)}}
    assert direction(rows, "L_dp raises O-KNN top-1 (Tab. 7 direction)").startswith(
        "- L_dp raises O-KNN top-1 (Tab. 7 direction): **reproduced** (d3ssl 30.5 ±1.5 vs d3ssl_dconly 26.6 ±1.5; "
        "d +4.0, +3.5, +4.0, +4.0 (s0, s1, s2, s3)")
    assert direction(rows, "L_dp raises disturbed O-KNN top-1 (Tab. 7 direction)").startswith(
        "- L_dp raises disturbed O-KNN top-1 (Tab. 7 direction): **not reproduced**: opposite direction, not "
        "significant")
