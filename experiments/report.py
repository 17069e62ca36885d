"""Each result folder's ``results.md`` (and ``command.sh``, and a ladder's figures), generated from its
``results.json``:

    python -m experiments.report experiments/results/cuefree_ladder     # one folder
    python -m experiments.report experiments/results/*/                 # every folder

A ladder folder (``experiments.mini_ladder`` writes its ``results.json``, which holds the evaluations
under ``evals``) gets the table of every row, the paper's directions judged against the evaluation
noise, and the figures. A diagnostics folder (its ``results.json`` indexes the JSON files that the
``experiments.diagnose_*`` scripts wrote, each with the command that wrote it) gets one table per
file. Both get ``command.sh``: the folder's commands, run from the repository root. The question a
folder answers and the commands that made it come from ``results.json`` (``question``, ``command``).
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from d3ssl_zoo.evaluation.features import STAGES
from experiments.depositioning_strength import strength_table
from experiments.ladder import PAPER, READINGS, RUNGS, SHIFT_READINGS, Results

__all__ = ["write_report", "write_diagnostics_report", "write_command_sh", "report", "summary", "directions",
           "judge", "Judgement", "student_t_cdf", "paired_t", "sign_test", "readings_line", "gain_line",
           "learning_curves", "seed_linestyles", "main"]

GENERATED = "Generated from `results.json` by `python -m experiments.report` (do not edit by hand)."
# How the report judges a direction (results.md states both rules above the directions).
ALPHA = 0.05  # the paired t-test's two-sided level
MIN_SEEDS = 3  # fewer seeds than this: no verdict other than "not reproduced"
DIRECTION_STAGES = ("layer4", "layer3")  # the stages CR and MCS are judged at (the paper does not give its stage)
VERDICT_RULE = (
    "Each direction is judged on the per-seed differences d of the two rows, on the seeds both have (d > 0: the "
    "paper's direction; the runs of one seed start from the same random initialisation): **reproduced** when the "
    f"mean d is above 0 and a paired t-test (t = mean d / (s_d / √n), df = n - 1) gives a two-sided p below {ALPHA}; "
    f"**reversed** when the mean d is below 0 with p below {ALPHA}; otherwise **not reproduced** (same direction, "
    f"or opposite direction, not significant). With fewer than {MIN_SEEDS} seeds a direction is not reproduced (too "
    "few seeds for a test), whatever its numbers. An exact two-sided sign test is given beside the t-test; it does "
    "not decide (with 4 seeds its p is at least 0.125).")
NOISE_RULE = ("Beside each verdict, the evaluation noise: the standard error of the mean difference, from each "
              "evaluation's own (binomial for top-1, over the pairs / crops for CR and MCS; taken as independent "
              "although both rows see the same queries, so on the large side), and on how many seeds the difference "
              "exceeds twice its own standard error.")
# The learning-curve figure tells seeds apart by line style (seed_linestyles; a fifth seed repeats the first).
SEED_LINESTYLES = (("solid", "-"), ("dashed", "--"), ("dash-dot", "-."), ("dotted", (0, (1, 1))))


# ---------------------------------------------------------------- the commands of a folder
def commands(data: dict) -> list[str]:
    """The commands that made a folder, in order (``results.json``'s ``command``: one string or a list)."""
    command = data.get("command")
    return [] if command is None else [command] if isinstance(command, str) else list(command)


def _wrapped(command: str, indent: str = "    ") -> str:
    """A command over several lines, one option per line (a backslash ends each line but the last)."""
    words = shlex.split(command)
    lines: list[list[str]] = [[]]
    for word in words:
        if word.startswith("--") or word.endswith(".py"):  # an option, or the script a launcher runs
            if lines[-1]:
                lines.append([])
        lines[-1].append(word)
    return f" \\\n{indent}".join(shlex.join(line) for line in lines)


def readings_line(meta: dict) -> str | None:
    """The line of ``results.md`` that names the readings of the paper the folder's runs used (``meta.readings``,
    written by ``experiments.mini_ladder`` from ``experiments.ladder.READINGS``); None where none are stored."""
    readings = meta.get("readings")
    if not readings:
        return None
    order = list(READINGS)  # READINGS' order, not the JSON's (sorted); a reading it does not name last
    ordered = sorted(readings.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order))
    return "**Readings.** " + "; ".join(f"{what}: {how}" for what, how in ordered) + \
        " ([docs/design.md](../../../docs/design.md#readings-of-the-paper))."


def _question_and_commands(data: dict, meta: dict | None = None) -> list[str]:
    """The lines of ``results.md`` that state the folder's question, the readings its runs used and the commands
    that made it."""
    lines = [f"**Question.** {data['question']}", ""] if data.get("question") else []
    readings = readings_line(meta or {})
    lines += [readings, ""] if readings else []
    made = commands(data)
    if made:
        lines += ["Made by (from the repository root; `command.sh` runs the same):", "", "```bash",
                  *(_wrapped(c) for c in made), "```", ""]
    return lines


def write_command_sh(folder: Path, data: dict, name: str | None = None) -> Path | None:
    """``command.sh`` of the folder ``name`` (default: ``folder``'s) into ``folder``: its commands, run from the
    repository root (none stored: no file)."""
    made = commands(data)
    if not made:
        return None
    name = name or folder.name
    lines = ["#!/usr/bin/env bash", f"# {name}: {data['question']}" if data.get("question") else f"# {name}",
             "# " + GENERATED.replace("`", "")]
    lines += [f"# Reads the training runs of experiments/results/{n}/ (made by its command.sh): run that first."
              for n in data.get("needs", [])]
    lines += ["set -euo pipefail", 'cd "$(dirname "$0")/../../.."', "", *(_wrapped(c) for c in made), ""]
    path = folder / "command.sh"
    path.write_text("\n".join(lines))
    path.chmod(0o755)
    return path


# ---------------------------------------------------------------- a ladder folder
def _final_evals(results: Results, prefix: str) -> dict[str, dict]:
    """``{"s<seed>": evaluation}`` of a row's final checkpoints (the floor and ceiling: their only one)."""
    return {k.split("/")[1]: v for k, v in results.data["evals"].items() if k.startswith(prefix + "/") and
            (v.get("final") or prefix in ("random_init", "supervised"))}


def _stat(values: dict[str, float]) -> tuple[float, float, int]:
    """Mean, range and count of one metric's per-seed values."""
    a = np.asarray(list(values.values()), np.float64)
    return float(a.mean()), float(a.max() - a.min()) if len(a) > 1 else float("nan"), len(a)


def _fmt(values: dict[str, float], digits: int = 1) -> str:
    if not values:
        return "–"
    mean, spread, n = _stat(values)
    return f"{mean:.{digits}f}" + (f" ±{spread / 2:.{digits}f}" if n > 1 else "")


def summary(results: Results) -> dict:
    """Per row (floor, ceiling, rungs) and metric: ``{"s<seed>": value}``, for the table and the directions."""
    rows = {}
    for name in ["random_init", "supervised", *RUNGS]:
        evals = _final_evals(results, name)
        if not evals:
            continue
        row = {"seeds": len(evals)}
        for metric in ("oknn", "disturbed_oknn"):
            for k in ("top1", "top5"):
                row[f"{metric}_{k}"] = {seed: e[metric][k] for seed, e in evals.items() if metric in e}
            # binomial standard error of a top-1 accuracy, in points
            row[f"{metric}_top1_se"] = {seed: float(np.sqrt(e[metric]["top1"] * (100 - e[metric]["top1"])
                                                            / e[metric]["num_queries"]))
                                        for seed, e in evals.items() if metric in e}
        for metric in ("cr", "mcs"):
            for s in STAGES:
                row[f"{metric}_{s}"] = {seed: e[metric][s] for seed, e in evals.items() if metric in e}
                row[f"{metric}_{s}_se"] = {seed: e[f"{metric}_se"][s] for seed, e in evals.items()
                                           if f"{metric}_se" in e}
        for s in STAGES:  # the cosines behind the CR (stored by evaluations since they were kept)
            for c in ("a1_b", "a2_b", "a1_a2"):
                row[f"cr_cos_{c}_{s}"] = {seed: e["cr_cosines"][s][c] for seed, e in evals.items()
                                          if "cr_cosines" in e}
            row[f"cr_max_{s}"] = {seed: e["cr_max"][s] for seed, e in evals.items() if "cr_max" in e}
        rows[name] = row
    return rows


def val_queries(evals: dict) -> int | None:
    """The number of O-KNN queries of the val split, where every stored evaluation agrees on it."""
    counts = {v["oknn"]["num_queries"] for v in evals.values() if "num_queries" in v.get("oknn", {})}
    return counts.pop() if len(counts) == 1 else None


def learning_curves(evals: dict) -> dict:
    """``{rung: {"s<seed>": [(step, O-KNN top-1), ...]}}`` in step order, each seed starting at its random
    initialisation (step 0) where that was evaluated."""
    curves: dict = {}
    for k, v in evals.items():
        parts = k.split("/")
        if parts[0] in RUNGS and len(parts) == 3:
            curves.setdefault(parts[0], {}).setdefault(parts[1], []).append((v["step"], v["oknn"]["top1"]))
    for by_seed in curves.values():
        for seed, pts in by_seed.items():
            init = evals.get(f"random_init/{seed}")
            by_seed[seed] = sorted(pts + ([(0, init["oknn"]["top1"])] if init else []))
    return curves


def gain_line(curves: dict, rung: str = "d3ssl", target: float = 10.0, num_queries: int | None = None) -> str | None:
    """The ladder's first target for one rung: trained >= its own seed's random init + ``target`` points of O-KNN
    top-1, rising with training; per seed and on the mean, so a seed that misses it is named.

    "Rising" is judged on the values as evaluated: any fall between two checkpoints fails it. With
    ``num_queries`` (the val split's), a seed that falls is also told whether its largest fall exceeds
    twice its standard error (binomial, the two evaluations taken as independent), so the reader sees
    whether the curve turned down or flattened within the evaluation's noise."""
    by_seed = {s: pts for s, pts in sorted(curves.get(rung, {}).items()) if len(pts) > 1 and pts[0][0] == 0}
    if not by_seed:
        return None
    gains = {s: pts[-1][1] - pts[0][1] for s, pts in by_seed.items()}
    rising = {s: all(b[1] > a[1] for a, b in zip(pts, pts[1:])) for s, pts in by_seed.items()}
    mean = float(np.mean(list(gains.values())))
    met = mean >= target and all(g >= target for g in gains.values()) and all(rising.values())

    def fall(pts) -> str:
        if not num_queries:
            return ""
        a, b = max(zip(pts, pts[1:]), key=lambda ab: ab[0][1] - ab[1][1])
        se = float(np.sqrt((a[1] * (100 - a[1]) + b[1] * (100 - b[1])) / num_queries))
        where = "within" if a[1] - b[1] <= 2 * se else "beyond"
        return (f"; its largest fall, {a[1] - b[1]:.1f} points (standard error {se:.1f}), is {where} twice its "
                "standard error")

    per_seed = "; ".join(f"{s} {g:+.1f}, " + ("rising at every checkpoint" if rising[s] else "not rising at every "
                         "checkpoint (" + " → ".join(f"{t:.1f}" for _, t in by_seed[s]) + fall(by_seed[s]) + ")")
                         for s, g in gains.items())
    return (f"- {RUNGS[rung].split(' (')[0]} trained >= random init + {target:g} points O-KNN top-1, rising with "
            f"training: {'**yes**' if met else '**no**'} ({mean:+.1f} points on the mean; {per_seed})")


# ---------------------------------------------------------------- the paired comparison over seeds
def student_t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t with an integer number of degrees of freedom ``df`` >= 1.

    The closed-form finite series for integer df (Abramowitz & Stegun, *Handbook of Mathematical Functions*,
    26.7.3 and 26.7.4): with theta = atan(|t| / sqrt(df)), P(|T| <= |t|) is
    (2 / pi) (theta + sin(theta) cos(theta) (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ... up to cos^(df-3))) for odd df
    (2 theta / pi for df = 1) and sin(theta) (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ... up to cos^(df-2)) for even df."""
    if isinstance(df, bool) or int(df) != df or df < 1:
        raise ValueError(f"df must be an integer >= 1, got {df!r}")
    df = int(df)
    if math.isnan(t):
        raise ValueError("t is NaN")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    theta = math.atan(abs(t) / math.sqrt(df))
    sin, cos2 = math.sin(theta), math.cos(theta) ** 2
    series, term = 1.0, 1.0
    if df % 2:
        for k in range(1, (df - 1) // 2):
            term *= cos2 * (2 * k) / (2 * k + 1)
            series += term
        inside = 2 / math.pi * (theta + (sin * math.cos(theta) * series if df > 1 else 0.0))
    else:
        for k in range(1, df // 2):
            term *= cos2 * (2 * k - 1) / (2 * k)
            series += term
        inside = sin * series
    tail = (1.0 - inside) / 2  # P(T > |t|)
    return 1.0 - tail if t >= 0 else tail


def paired_t(diffs) -> tuple[float, int, float] | None:
    """The paired t-test of per-seed differences: t = mean / (s / sqrt(n)) with s the sample standard deviation,
    df = n - 1 and the two-sided p; None for fewer than 2 differences. Equal differences give t = +-inf, p = 0
    (or t = 0, p = 1 when they are all 0)."""
    d = np.asarray(list(diffs), np.float64)
    n = len(d)
    if n < 2:
        return None
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if sd == 0:
        return (0.0, n - 1, 1.0) if mean == 0 else (math.copysign(math.inf, mean), n - 1, 0.0)
    t = mean / (sd / math.sqrt(n))
    return t, n - 1, min(1.0, 2 * (1 - student_t_cdf(abs(t), n - 1)))


def sign_test(diffs) -> float:
    """The exact two-sided sign test's p (binomial, 1/2 each way) of per-seed differences; a zero difference
    counts for neither side and is left out."""
    d = [x for x in diffs if x != 0]
    n = len(d)
    if n == 0:
        return 1.0
    k = min(sum(x > 0 for x in d), sum(x < 0 for x in d))
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


@dataclass(frozen=True)
class Judgement:
    """A direction's verdict on per-seed differences (> 0: the paper's direction) and the numbers behind it."""

    verdict: str  # "reproduced", "reversed" or "not reproduced"
    why: str  # for "not reproduced": "same direction, not significant", "too few seeds for a test", ...
    mean: float
    n: int
    t: float | None
    df: int | None
    p: float | None  # the paired t-test's two-sided p
    p_sign: float

    def label(self) -> str:
        return f"**{self.verdict}**" + (f": {self.why}" if self.why else "")


def judge(diff: dict[str, float]) -> Judgement:
    """The verdict on per-seed differences ``{"s<seed>": d}`` (d > 0: the paper's direction): ``VERDICT_RULE``."""
    values = list(diff.values())
    if not values:
        raise ValueError("no seed to judge")
    mean = float(np.mean(values))
    test = paired_t(values)
    t, df, p = test if test is not None else (None, None, None)
    p_sign = sign_test(values)
    side = "same direction" if mean > 0 else "opposite direction" if mean < 0 else "no difference"
    if len(values) < MIN_SEEDS:
        return Judgement("not reproduced", f"{side}; too few seeds for a test", mean, len(values), t, df, p, p_sign)
    if p < ALPHA and mean > 0:
        return Judgement("reproduced", "", mean, len(values), t, df, p, p_sign)
    if p < ALPHA and mean < 0:
        return Judgement("reversed", "", mean, len(values), t, df, p, p_sign)
    return Judgement("not reproduced", side + ("" if mean == 0 else ", not significant"), mean, len(values), t, df,
                     p, p_sign)


def _signed(value: float, digits: int) -> str:
    return f"{round(value, digits) + 0.0:+.{digits}f}"  # + 0.0: a value that rounds to zero reads +0.0, not -0.0


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _test_text(j: Judgement, digits: int) -> str:
    """The paired comparison's numbers: mean difference, paired t, sign test."""
    mean = f"mean {_signed(j.mean, digits)}"
    if j.t is None:
        return f"{mean}; one seed: no test"
    t = f"{j.t:+.2f}" if math.isfinite(j.t) else ("+inf" if j.t > 0 else "-inf")
    return f"{mean}, paired t = {t}, df {j.df}, {_p(j.p)}; sign test {_p(j.p_sign)}"


def _noise_text(diff: dict[str, float], se: dict[str, float], digits: int) -> str:
    """The evaluation noise beside a verdict: the standard error of the mean difference (each evaluation's own,
    taken as independent) and on how many seeds the difference exceeds twice its own."""
    if se and len(se) == len(diff):
        mean_se = float(np.sqrt(sum(v * v for v in se.values()))) / len(diff)
        beyond = sum(abs(diff[s]) > 2 * se[s] for s in se)
        return (f"; evaluation noise: standard error of the mean difference {mean_se:.{digits}f}, a seed's "
                f"difference beyond twice its own on {beyond} of {len(diff)}")
    return (f"; evaluation noise: standard errors stored for {', '.join(se)} only" if se
            else "; evaluation noise: no standard error stored")


def _per_seed(diff: dict[str, float], digits: int) -> str:
    return "d " + ", ".join(_signed(v, digits) for v in diff.values()) + f" ({', '.join(diff)})"


def directions(rows: dict, curves: dict | None = None, num_queries: int | None = None) -> list[str]:
    """Each paper direction: reproduced, not reproduced or reversed (``VERDICT_RULE``), from a paired comparison
    over the seeds both rows have (each seed has its own random initialisation, so a rung whose second seed has
    not run yet is not held against the other rung's mean over two seeds), with the rows' means over seeds and
    half-ranges, the per-seed differences and, beside the verdict, the evaluation noise (``NOISE_RULE``)."""
    def paired(keys: list[tuple[str, str]]) -> list[dict] | None:
        values = [rows.get(row, {}).get(key, {}) for row, key in keys]
        common = set.intersection(*(set(v) for v in values))
        return [{s: v[s] for s in sorted(common, key=lambda s: int(s[1:]))} for v in values] if common else None

    def restricted(rungs: tuple[str, ...], key: str, common: dict) -> str:
        every = set.union(*(set(rows[r][key]) for r in rungs))
        return f"; on the seeds both have: {', '.join(common)}" if set(common) != every else ""

    lines = []

    def check(text, a, b, higher_is_better, key):
        pair = paired([(a, key), (b, key)])
        if pair is None:
            lines.append(f"- {text}: not measured yet")
            return
        xa, xb = pair
        sign = 1 if higher_is_better else -1
        diff = {s: sign * (xa[s] - xb[s]) for s in xa}  # > 0: the paper's direction
        se_a, se_b = (rows[r].get(f"{key}_se", {}) for r in (a, b))
        se = {s: float(np.hypot(se_a[s], se_b[s])) for s in xa if s in se_a and s in se_b}
        # CR and MCS: 3 digits for values, 4 for differences and errors (theirs are ~1e-4)
        digits, nd = (3, 4) if key.startswith(("cr", "mcs")) else (1, 1)
        j = judge(diff)
        lines.append(f"- {text}: {j.label()} ({a} {_fmt(xa, digits)} vs {b} {_fmt(xb, digits)}; "
                     f"{_per_seed(diff, nd)}; {_test_text(j, nd)}{_noise_text(diff, se, nd)}"
                     f"{restricted((a, b), key, xa)})")

    line = gain_line(curves or {}, num_queries=num_queries)
    if line:
        lines.append(line)
    check("D3SSL above SoCo on O-KNN top-1 (Tab. 4)", "d3ssl", "soco", True, "oknn_top1")
    check("D3SSL above SoCo on disturbed O-KNN top-1 (Tab. 4)", "d3ssl", "soco", True, "disturbed_oknn_top1")
    keys = [(r, k) for k in ("oknn_top1", "disturbed_oknn_top1") for r in ("d3ssl", "soco")]
    pair = paired(keys)
    if pair is not None:
        d, s, dd, sd = pair
        excess = {k: (dd[k] - sd[k]) - (d[k] - s[k]) for k in d}  # > 0: the gap is wider on disturbed O-KNN
        errors = [rows[r].get(f"{k}_se", {}) for r, k in keys]
        se = {k: float(np.sqrt(sum(e[k] ** 2 for e in errors))) for k in d if all(k in e for e in errors)}
        j = judge(excess)
        g1, g2 = (_stat(a)[0] - _stat(b)[0] for a, b in ((d, s), (dd, sd)))
        lines.append(f"- ... and more so on disturbed O-KNN (Tab. 4: +2.9 vs +8.8): {j.label()} (gaps {g1:+.1f} vs "
                     f"{g2:+.1f}; excess {_per_seed(excess, 1)}; {_test_text(j, 1)}{_noise_text(excess, se, 1)}"
                     f"{restricted(('d3ssl', 'soco'), 'oknn_top1', d)})")
    for stage in DIRECTION_STAGES:
        # Sec. 3: "Our D3SSL method ... yields the lowest coupling rate and positional bias" (Fig. 3b, 4b)
        check(f"D3SSL lower CR ({stage}) than SoCo (Sec. 3.1, Fig. 3b)", "d3ssl", "soco", False, f"cr_{stage}")
        check(f"D3SSL less positional bias than SoCo: higher MCS ({stage}) (Sec. 3.2, Fig. 4b)", "d3ssl", "soco",
              True, f"mcs_{stage}")
    check("SoCo + Aug_D3SSL above SoCo on O-KNN top-1 (Tab. 6 direction)", "soco_d3aug", "soco", True, "oknn_top1")
    for stage in DIRECTION_STAGES:
        check(f"SoCo + Aug_D3SSL lower CR ({stage}) than SoCo (Tab. 6)", "soco_d3aug", "soco", False, f"cr_{stage}")
    # Tab. 7 reports VOC AP (+1.5 with L_dp); at this scale O-KNN stands in for it, as for Tab. 6
    check("L_dp raises O-KNN top-1 (Tab. 7 direction)", "d3ssl", "d3ssl_dconly", True, "oknn_top1")
    check("L_dp raises disturbed O-KNN top-1 (Tab. 7 direction)", "d3ssl", "d3ssl_dconly", True,
          "disturbed_oknn_top1")
    for stage in DIRECTION_STAGES:
        check(f"L_dp lowers CR ({stage}) (Tab. 7)", "d3ssl", "d3ssl_dconly", False, f"cr_{stage}")
        check(f"L_dp raises MCS ({stage}) (Tab. 7)", "d3ssl", "d3ssl_dconly", True, f"mcs_{stage}")
    if "d3ssl_dp1" in rows:  # folders whose d3ssl rung pasted all K proposals (earlier readings) ran this rung too
        for stage in DIRECTION_STAGES:
            check(f"L_dp on 1 of K raises MCS ({stage}) over w/o L_dp", "d3ssl_dp1", "d3ssl_dconly", True,
                  f"mcs_{stage}")
    return lines


def write_report(results: Results, out: Path, figures: bool = True) -> None:
    """``results.md`` (tables, directions), the figures (unless ``figures`` is false) and ``command.sh`` of a
    ladder folder, from its ``results.json``."""
    rows = summary(results)
    meta = results.data["meta"]
    source = next((o.split("=", 1)[1] for o in meta["settings"]["overrides"] if o.startswith("dataset.source=")),
                  "scenes")
    others = [o for o in meta["settings"]["overrides"] if not o.startswith("dataset.source=")]
    ceiling = results.data["evals"].get("supervised/s0", {}).get("training", {}).get("steps")
    names = {"random_init": "random init (floor)", **RUNGS,
             "supervised": "supervised RoI classifier (ceiling" + (f", {ceiling} steps)" if ceiling else ")")}
    lines = ["# Mini ladder: results", "", GENERATED, "", *_question_and_commands(results.data, meta),
             "Mean over seeds "
             f"± half the seed-to-seed range. Data: `{source}` (scene set key {meta['settings']['scenes']}). "
             + (f"Recipe overrides for every rung: `{' '.join(others)}`. " if others else "") +
             "O-KNN on the scene set's held-out val split "
             f"({meta['settings']['short_side']} px short side); CR and MCS at layer4 and layer3 "
             "(the paper's stage is not given; every stage in results.json and the figure).", "",
             "| row | seeds | O-KNN top-1 | top-5 | disturbed top-1 | top-5 | CR layer4 ↓ | MCS layer4 ↑ | "
             "CR layer3 ↓ | MCS layer3 ↑ |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        lines.append(f"| {names[name]} | {row['seeds']} | {_fmt(row['oknn_top1'])} | {_fmt(row['oknn_top5'])} | "
                     f"{_fmt(row['disturbed_oknn_top1'])} | {_fmt(row['disturbed_oknn_top5'])} | "
                     f"{_fmt(row['cr_layer4'], 3)} | {_fmt(row['mcs_layer4'], 3)} | "
                     f"{_fmt(row['cr_layer3'], 3)} | {_fmt(row['mcs_layer3'], 3)} |")
    lines += ["", "Paper (R50-C4, 800 epochs, Tab. 4): O-KNN SoCo 70.2/88.3, D3SSL 73.1/90.1; disturbed SoCo "
              "47.0/66.1, D3SSL 55.8/73.4. Tab. 7: CR 1.33 → 1.17, MCS 0.68 → 0.82 with L_dp. Tab. 6: CR "
              "1.31 (SoCo) → 1.20 (SoCo + Aug_D3SSL).", "", "## The paper's directions", "",
              VERDICT_RULE, "", NOISE_RULE, "",
              *directions(rows, learning_curves(results.data["evals"]), val_queries(results.data["evals"]))]
    shift = results.data.get("shift_statistics")
    if shift:
        lines += ["", "## The de-positioning shift t (Eq. 6-8) on the pre-training views", "",
                  "| proposals in the composite | zero shift | median \\|t\\| (px) | mean \\|t\\| (px) | "
                  "median union cover | view |", "|---|---|---|---|---|---|"]
        for name, s in ((n, shift[n]) for n in SHIFT_READINGS if n in shift):  # not the JSON's (sorted) order
            lines.append(f"| {name} | {100 * s['zero_shift_share']:.0f}% | {s['median_shift_px']:.1f} | "
                         f"{s['mean_shift_px']:.1f} | {100 * s['median_union_cover']:.0f}% | {s['view_px']} px |")
    lines += cr_room_lines(rows, names)
    lines += ["", "![O-KNN vs steps](oknn_vs_steps.png)", "", "![CR and MCS per stage](cr_mcs_per_stage.png)", ""]
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text("\n".join(lines))
    if figures:
        _figures(results, rows, out)
    write_command_sh(out, results.data, results.path.parent.name)


def cr_room_lines(rows: dict, names: dict) -> list[str]:
    """The cosines the layer4 CR is the ratio of, for the rows whose evaluations stored them."""
    stored = {n: r for n, r in rows.items() if r["cr_cos_a2_b_layer4"]}
    if not stored:
        return []
    lines = ["", "## The room the coupling rate has (layer4)", "",
             "CR = cos(A1, B) / cos(A2, B), and a cosine is at most 1, so a pair's CR is at most 1 / cos(A2, B): "
             "where the features of objects of different classes are nearly parallel, B cannot raise the CR "
             "much above 1 however far it moves A's feature; cos(A1, A2) says how far it moved it "
             "(1: not at all).", "",
             "| row | seeds | cos(A2, B) | largest CR possible (mean of 1 / cos(A2, B)) | cos(A1, B) | cos(A1, A2) | "
             "CR ↓ |",
             "|---|---|---|---|---|---|---|"]
    for name, row in stored.items():
        bound = row["cr_max_layer4"]
        lines.append(f"| {names[name]} | {len(bound)} | {_fmt(row['cr_cos_a2_b_layer4'], 3)} | {_fmt(bound, 3)} | "
                     f"{_fmt(row['cr_cos_a1_b_layer4'], 3)} | {_fmt(row['cr_cos_a1_a2_layer4'], 3)} | "
                     f"{_fmt({k: row['cr_layer4'][k] for k in bound}, 3)} |")
    return lines


def seed_linestyles(seeds) -> dict[str, tuple[str, object]]:
    """``{"s<seed>": (style name, matplotlib linestyle)}`` in seed-number order, one style per seed."""
    ordered = sorted(seeds, key=lambda s: int(s[1:]))
    return dict(zip(ordered, itertools.cycle(SEED_LINESTYLES)))


def _figures(results: Results, rows: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    curves = learning_curves(results.data["evals"])
    styles = seed_linestyles({s for by_seed in curves.values() for s in by_seed})
    for i, rung in enumerate(RUNGS):
        for j, (seed, pts) in enumerate(sorted(curves.get(rung, {}).items())):
            ax.plot(*zip(*pts), marker="o", color=f"C{i}", linestyle=styles[seed][1],
                    label=f"{rung}" if j == 0 else None)
    if "supervised" in rows:
        ax.axhline(_stat(rows["supervised"]["oknn_top1"])[0], color="k", linestyle=":", label="supervised ceiling")
    ax.set_xlabel("training step")
    ax.set_ylabel("O-KNN top-1 (%)")
    legend = ", ".join(f"{name} seed {s[1:]}" for s, (name, _) in styles.items())
    ax.set_title(f"O-KNN top-1 vs training ({legend})", fontsize=10)
    if ax.get_legend_handles_labels()[0]:  # nothing to label before the first rung or ceiling is evaluated
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "oknn_vs_steps.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for metric, ax, ideal in (("cr", axes[0], 1.0), ("mcs", axes[1], 1.0)):
        for i, name in enumerate(["random_init", *RUNGS]):
            if name not in rows or not rows[name][f"{metric}_layer4"]:
                continue
            ys = [_stat(rows[name][f"{metric}_{s}"])[0] for s in STAGES]
            ax.plot(range(1, 5), ys, marker="o", color="gray" if name == "random_init" else f"C{i - 1}", label=name)
            if name in PAPER[metric]:
                ax.scatter([4.15], [PAPER[metric][name]], marker="*", s=120, color=f"C{i - 1}", edgecolor="k",
                           zorder=3)
        ax.axhline(ideal, color="k", linewidth=0.5)
        ax.set_xticks(range(1, 5), [f"layer{s}" for s in range(1, 5)])
        ax.set_title({"cr": "coupling rate (ideal 1, lower better)",
                      "mcs": "positional MCS (ideal 1, higher better)"}[metric])
    axes[0].legend(fontsize=8)
    fig.suptitle("per stage, mean over seeds; stars: the paper's values (R50, stage assumed layer4)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "cr_mcs_per_stage.png", dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- a diagnostics folder
# The attributes of experiments.diagnose_instance_cues in table order, and how its reads are named.
ATTRIBUTES = ("shape", "photo", "fill", "hue", "size", "rotation", "aspect", "position", "row", "column", "count",
              "neighbour")
READS = {"c5": "C5 (O-KNN's)", "c4_head": "C4 → res5 (the pre-training path)"}


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def _gain(value: float) -> str:
    return f"**{round(value, 1) + 0.0:+.1f}**"  # + 0.0: a gain that rounds to zero reads +0.0, not -0.0


def _read_name(features: str) -> str:
    name, _, size = features.partition(":")
    return READS.get(name, features) + (f", {size}x{size} RoIs" if size else "")


def _run_name(run: str) -> str:
    """``runs/<ladder folder>/<rung>_s<seed>`` -> ``<ladder folder>/<rung>_s<seed>``."""
    return "/".join(Path(run).parts[-2:])


def instance_cues_table(files: dict[str, dict]) -> list[str]:
    """k-NN top-1 of every replayed attribute, random init -> trained, for each ``instance_cues_*.json``."""
    attrs = [a for a in ATTRIBUTES if any(a in d["top1"]["trained"] for d in files.values())]
    within = any("shape_within_position" in d for d in files.values())
    classes = {}
    for d in files.values():
        for a, n in d["classes"].items():
            classes.setdefault(a, n)
    header = ["run", "model", *(f"{a} ({classes[a]})" for a in attrs)]
    if within:
        header += ["shape, bank of the query's cell", "shape, as many from anywhere"]
    rows = []
    chance: dict = {}  # the val share of each attribute's commonest value, where every file agrees on it
    one_chance = all("chance" in d for d in files.values())
    for d in files.values():
        for a, v in d.get("chance", {}).items():
            one_chance = one_chance and abs(chance.setdefault(a, v) - v) < 1e-9
    if one_chance:
        rows.append(["(commonest value)", "", *(f"{chance[a]:.1f}" if a in chance else "–" for a in attrs)]
                    + (["", ""] if within else []))
    for name, d in files.items():
        label = name.removeprefix("instance_cues_").removesuffix(".json")
        models = ([("commonest value", d["chance"])] if "chance" in d and not one_chance else []) + \
            [("random init", d["top1"]["random init"]), ("trained", d["top1"]["trained"])]
        for model, values in models:
            row = [label, model, *(f"{values[a]:.1f}" if a in values else "–" for a in attrs)]
            if within:
                w = d.get("shape_within_position", {}).get(model)
                row += [f"{w['same']:.1f}", f"{w['random']:.1f}"] if w else ["–", "–"]
            rows.append(row)
        row = [label, "**gain**", *(_gain(d["gain"][a]) if a in d["gain"] else "–" for a in attrs)]
        if within:
            w = d.get("shape_within_position")
            row += ([_gain(w["trained"][k] - w["random init"][k]) for k in ("same", "random")] if w else ["–", "–"])
        rows.append(row)
    return ["Weighted k-NN top-1 % (k 20, T 0.07) of each attribute replayed from the generator, for a run's final "
            "checkpoint and its exact random init: bank = every train-split object, queries = every val object; `–`: "
            "not measured by that run's diagnostic.", "",
            *_table(header, rows)]


def bn_leak_table(files: dict[str, dict]) -> list[str]:
    """Query-vs-key statistics of each ``bn_leak_*.json`` (P: chance the positive scores above a random one)."""
    rows = []
    for name, d in files.items():
        label = name.removeprefix("bn_leak_").removesuffix(".json")
        for model in ("random init", "trained"):
            for mode in ("train", "eval"):
                r = d[f"{model}/{mode}"]
                rows.append([label, model, mode, *(f"{r[k]:.3f}" for k in (
                    "cos_positive", "cos_bank", "cos_same_batch", "p_above_bank", "p_above_same_batch"))])
    first = next(iter(files.values()))
    return [f"{first['batches']} batches of {first['batch_size']} pre-training images, BN groups as trained "
            f"({', '.join(str(d['bn_groups']) for d in files.values())}).", "",
            *_table(["run", "model", "BN", "cos(q, positive)", "cos(q, bank)", "cos(q, same-batch keys)",
                     "P vs bank", "P vs same batch"], rows)]


def checkpoint_oknn_table(data: dict) -> list[str]:
    """O-KNN top-1 (top-5) % of every checkpoint of each run: ``{run: {step: {"top1", "top5"}}}``."""
    steps = sorted({int(s) for by_step in data.values() for s in by_step})
    rows = [[run, *(f"{by_step[str(s)]['top1']:.1f} ({by_step[str(s)]['top5']:.1f})" if str(s) in by_step else "–"
                    for s in steps)] for run, by_step in data.items()]
    return ["O-KNN top-1 % (top-5 %) at each checkpoint.", "", *_table(["run", *(f"step {s}" for s in steps)], rows)]


def teacher_table(data: dict) -> list[str]:
    """The teacher's schedule and how far student and teacher moved, per checkpoint of each run."""
    oknn = any("oknn_student" in c for r in data["runs"].values() for c in r["checkpoints"])
    header = ["run", "m base", "step", "m", "init held", "student moved", "teacher moved", "gap"]
    header += ["O-KNN student", "O-KNN teacher"] if oknn else []
    rows = []
    for run, r in data["runs"].items():
        for c in r["checkpoints"]:
            row = [_run_name(run), f"{r['momentum_base']:g}", str(c["step"]), f"{c['momentum']:.4f}",
                   f"{c['init_weight_held']:.3f}", f"{c['student_moved']:.3f}", f"{c['teacher_moved']:.3f}",
                   f"{c['teacher_to_student']:.3f}"]
            if oknn:
                row += [f"{c['oknn_student']:.1f}", f"{c['oknn_teacher']:.1f}"] if "oknn_student" in c else ["–", "–"]
            rows.append(row)
    return ["m: the momentum at that step; init held: the share of its random init the teacher still holds; moved "
            "and gap: L2 distances over the learnt weights as a fraction of the init's norm.", "",
            *_table(header, rows)]


def coupling_table(data: dict) -> list[str]:
    """The coupling rate per stage with the cosines it is the ratio of, and how open each stage's blocks are."""
    rows = []
    for name, m in data["models"].items():
        for s in STAGES:
            c = m["cosines"][s]
            rows.append([name, s, f"{m['cr'][s]:.4f}", f"{m['cr_max'][s]:.4f}", f"{c['a2_b']:.4f}",
                         f"{c['a1_b']:.4f}", f"{c['a1_a2']:.4f}", f"{m['blocks'][s]['branch_to_shortcut']:.3f}",
                         f"{m['blocks'][s]['last_bn_weight']:.3f}"])
    return [f"{data['num_pairs']} pairs of {data['object_size']} px objects, seed {data['seed']}.", "",
            *_table(["model", "stage", "CR", "largest CR possible", "cos(A2, B)", "cos(A1, B)", "cos(A1, A2)",
                     "branch / shortcut", "last BN weight"], rows)]


def oknn_read_table(data: dict) -> list[str]:
    """O-KNN top-1 of each read, random init -> trained (every checkpoint read, in step order)."""
    reads: dict = {}
    for key, top1 in data.items():
        parts = key.split("/")
        bn = parts.pop()[3:] if parts[-1].startswith("bn=") else ""
        side, features, name, ckpt = parts.pop(), parts.pop(), parts.pop(), parts.pop()
        read = reads.setdefault(("/".join(parts), features, int(side), bn), {"trained": {}})
        step = int(ckpt.removeprefix("step_"))
        if name == "random init":
            read["random init"] = top1
        else:
            read["trained"][step] = top1
    rows = []
    for (run, features, side, bn), read in sorted(reads.items()):
        trained = sorted(read["trained"].items())
        init = read.get("random init")
        rows.append([_run_name(run), _read_name(features), str(side), bn or "the checkpoint's",
                     "–" if init is None else f"{init:.1f}",
                     " / ".join(f"{v:.1f} (step {s})" for s, v in trained) if trained else "–",
                     _gain(trained[-1][1] - init) if trained and init is not None else "–"])
    return ["O-KNN top-1 % of each read (the bank, queries and k-NN of O-KNN); BN: the running statistics read "
            "with (recomputed over `<images>` whole pre-training images for `precise*`). C5 is O-KNN's read, the "
            "paper's protocol; C4 → res5, the pre-training path's read, is a diagnostic chosen after the first "
            "results.", "",
            *_table(["run", "read", "short side", "BN", "random init", "trained", "gain (last)"], rows)]


KINDS = {  # file-name prefix -> (section title, the table of one file or, for GROUPED kinds, of every such file)
    "instance_cues_": ("What the region features encode (`experiments.diagnose_instance_cues`)", instance_cues_table),
    "bn_leak_": ("Does the model recognise its BN batch? (`experiments.diagnose_bn_leak`)", bn_leak_table),
    "coupling_": ("The coupling rate and how open the residual blocks are (`experiments.diagnose_coupling`)",
                  coupling_table),
    "teacher_": ("How far the teacher follows the student (`experiments.diagnose_teacher`)", teacher_table),
    "oknn_read_": ("Two reads of one backbone: O-KNN's C5 map and the pre-training path "
                   "(`experiments.diagnose_oknn_read`)", oknn_read_table),
    "oknn": ("O-KNN at every checkpoint", checkpoint_oknn_table),
    "depositioning_strength": ("How far de-positioning moves a region (`experiments.depositioning_strength`)",
                               strength_table)}
GROUPED = ("instance_cues_", "bn_leak_")


def _kind(name: str) -> str:
    for prefix in KINDS:
        if name.startswith(prefix):
            return prefix
    raise ValueError(f"no table for {name}: its name starts with none of {', '.join(KINDS)}")


def _made(entry: dict) -> list[str]:
    command = entry.get("command")
    return [command] if isinstance(command, str) else list(command or [])


def write_diagnostics_report(folder: Path, out: Path | None = None) -> Path:
    """``results.md`` and ``command.sh`` of a diagnostics folder (into ``out``, default the folder itself), from its
    ``results.json`` index: every JSON file it lists, with the command that wrote it, as a table (the
    ``instance_cues_*`` and ``bn_leak_*`` files each in one table, their commands in a second)."""
    out = folder if out is None else out
    data = json.loads((folder / "results.json").read_text())
    lines = [f"# {data.get('title', folder.name)}", "", GENERATED, ""]
    lines += [f"**Question.** {data['question']}", ""] if data.get("question") else []
    if data.get("needs"):
        lines += ["The diagnostics read the training runs of " + ", ".join(
            f"[`{n}`](../{n}/results.md)" for n in data["needs"]) + " (each made by its folder's `command.sh`).", ""]
    if data.get("training"):
        lines += ["The runs they read, trained first (from the repository root):", "", "```bash",
                  *(_wrapped(c) for c in data["training"]), "```", ""]
    lines += ["`command.sh` runs every command of this page, in order (from the repository root).", ""]
    if (folder / "findings.md").is_file():
        lines += ["What the numbers show, with the other runs they are read against: [findings.md](findings.md).", ""]
    by_kind: dict[str, list[dict]] = {}
    for entry in data["files"]:
        by_kind.setdefault(_kind(entry["file"]), []).append(entry)
    for kind, entries in by_kind.items():
        title, table = KINDS[kind]
        lines += [f"## {title}", ""]
        if kind in GROUPED:
            files = {e["file"]: json.loads((folder / e["file"]).read_text()) for e in entries}
            lines += [*table(files), "", *_table(["file", "what", "command"], [
                [f"[`{e['file']}`]({e['file']})", e["about"], " && ".join(f"`{c}`" for c in _made(e)) or "–"]
                for e in entries]), ""]
            continue
        for e in entries:
            lines += [f"### [`{e['file']}`]({e['file']})", "", e["about"], ""]
            made = _made(e)
            if made:
                lines += ["```bash", *(_wrapped(c) for c in made), "```", ""]
            lines += [*table(json.loads((folder / e["file"]).read_text())), ""]
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text("\n".join(lines))
    write_command_sh(out, data, folder.name)
    return out / "results.md"


# ---------------------------------------------------------------- the command line
def report(folder: Path) -> Path:
    """Regenerate one folder's report from its ``results.json`` (a ladder's or a diagnostics index)."""
    path = folder / "results.json"
    if not path.is_file():
        raise SystemExit(f"{folder} holds no results.json")
    data = json.loads(path.read_text())
    if "evals" in data:
        write_report(Results.read(path), folder)
        return folder / "results.md"
    if "files" in data:
        return write_diagnostics_report(folder)
    raise SystemExit(f"{path} is neither a ladder's results (no 'evals') nor a diagnostics index (no 'files')")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.report", description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", type=Path, help="result folders (each holds a results.json)")
    args = p.parse_args(argv)
    for folder in args.folders:
        print(f"[report] {report(folder)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
