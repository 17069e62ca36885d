"""Two ladder folders side by side, rung by rung, paired by seed: what changed between two sets of readings (or any
other two settings) on the same scenes.

    python -m experiments.compare experiments/results/cuefree_ladder experiments/results/cuefree_ladder_sourced

Both folders must hold runs on the same scene set (``meta.settings.scenes`` and the same overrides of the data
source), so that seed s of a rung starts from the same random initialisation in both; the random-init rows are
compared first and any difference is printed. For each rung both folders ran and each metric, the table gives both
means over the seeds both have, the per-seed differences (second folder minus first) and a paired t-test over them
(``experiments.report.paired_t``); O-KNN also as the gain over the seed's random init. Markdown on stdout.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from experiments.ladder import RUNGS, Results
from experiments.report import _fmt, _p, _signed, paired_t, summary

__all__ = ["compare", "main"]

METRICS = (("oknn_top1", "O-KNN top-1", 1), ("disturbed_oknn_top1", "disturbed O-KNN top-1", 1),
           ("mcs_layer4", "MCS layer4", 3), ("mcs_layer3", "MCS layer3", 3), ("cr_layer4", "CR layer4", 4),
           ("cr_layer3", "CR layer3", 4))


def _source(data: dict) -> tuple:
    settings = data["meta"]["settings"]
    return settings.get("scenes"), sorted(o for o in settings.get("overrides", []) if o.startswith("dataset."))


def _readings(data: dict) -> str:
    readings = data["meta"].get("readings")
    return "; ".join(f"{k}: {v}" for k, v in readings.items()) if readings else "not stored (earlier readings)"


def _row(name: str, label: str, a: dict, b: dict, digits: int) -> list[str] | None:
    common = sorted(set(a) & set(b), key=lambda s: int(s[1:]))
    if not common:
        return None
    a, b = {s: a[s] for s in common}, {s: b[s] for s in common}
    diff = [b[s] - a[s] for s in common]
    test = paired_t(diff)
    if test is None:
        stats = "one seed: no test"
    else:
        t, df, p = test
        stats = f"t = {t:+.2f}, df {df}, {_p(p)}"
    per_seed = ", ".join(_signed(d, digits) for d in diff)
    mean = _signed(sum(diff) / len(diff), digits)
    return [name, label, ", ".join(common), _fmt(a, digits), _fmt(b, digits), f"{per_seed}", mean, stats]


def compare(first: Path, second: Path) -> str:
    """The markdown comparison of two ladder folders (see the module docstring)."""
    results = [Results.read(f / "results.json") for f in (first, second)]
    data = [r.data for r in results]
    for f, d in zip((first, second), data):
        if "evals" not in d:
            raise SystemExit(f"{f}/results.json holds no ladder evaluations ('evals'); pass two ladder folders")
    if _source(data[0]) != _source(data[1]):
        raise SystemExit(f"{first} and {second} used different data ({_source(data[0])} vs {_source(data[1])}): "
                         "seed s does not start from the same random initialisation in both; not comparable")
    rows = [summary(r) for r in results]
    out = [f"# {second.name} vs {first.name}", "",
           f"Made by `python -m experiments.compare {first} {second}`.", "",
           f"- first: `{first}`; readings: {_readings(data[0])}",
           f"- second: `{second}`; readings: {_readings(data[1])}", ""]
    init = [r.get("random_init", {}).get("oknn_top1", {}) for r in rows]
    common = sorted(set(init[0]) & set(init[1]), key=lambda s: int(s[1:]))
    moved = [s for s in common if init[0][s] != init[1][s]]
    out.append("Random init O-KNN top-1 on the seeds both have (" + ", ".join(common) + "): " +
               ("identical" if not moved else "differs on " + ", ".join(
                   f"{s} ({init[0][s]:.1f} vs {init[1][s]:.1f})" for s in moved)) + ".")
    out += ["", "d: second minus first, per seed; t: paired t-test over the seeds both have.", "",
            "| rung | metric | seeds | first | second | d per seed | mean d | paired t |",
            "|---|---|---|---|---|---|---|---|"]
    for rung in RUNGS:
        if rung not in rows[0] or rung not in rows[1]:
            continue
        for key, label, digits in METRICS:
            row = _row(rung, label, rows[0][rung].get(key, {}), rows[1][rung].get(key, {}), digits)
            if row:
                out.append("| " + " | ".join(row) + " |")
        gains = []
        for r in rows:
            base = r.get("random_init", {}).get("oknn_top1", {})
            gains.append({s: v - base[s] for s, v in r[rung].get("oknn_top1", {}).items() if s in base})
        row = _row(rung, "O-KNN gain over random init", gains[0], gains[1], 1)
        if row:
            out.append("| " + " | ".join(row) + " |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("first", type=Path, help="a ladder result folder (holds results.json)")
    p.add_argument("second", type=Path, help="another, on the same scenes; differences are second minus first")
    args = p.parse_args(argv)
    sys.stdout.write(compare(args.first, args.second))
    return 0


if __name__ == "__main__":
    sys.exit(main())
