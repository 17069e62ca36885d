"""Figures and tables of the diagnostics: per-stage curves as Fig. 3b / 4b, tables as Tab. 4 / 7."""
from __future__ import annotations

import os
from typing import Dict, List, Mapping, Optional, Sequence

from matplotlib.figure import Figure

__all__ = ["plot_per_stage", "format_table", "stage_table", "oknn_table"]

METRIC_LABELS = {"coupling_rate": "coupling rate (CR, ideal 1)",
                 "positional_mcs": "positional MCS (ideal 1)"}


def plot_per_stage(per_model: Mapping[str, Mapping[str, float]], metric: str, path: str,
                   ideal: Optional[float] = 1.0) -> str:
    """One line per model over the stages (x axis) as the paper's Fig. 3b / 4b; writes a PNG."""
    if not per_model:
        raise ValueError("nothing to plot: no model results")
    fig = Figure(figsize=(5, 3.6), dpi=150)
    ax = fig.add_subplot()
    for label, values in per_model.items():
        stages = list(values)
        ax.plot(range(len(stages)), [values[s] for s in stages], marker="o", label=label)
        ax.set_xticks(range(len(stages)), stages)
    if ideal is not None:
        ax.axhline(ideal, color="grey", linestyle="--", linewidth=1, label="ideal")
    ax.set_xlabel("stage")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    return path


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]], title: str = "") -> str:
    """Plain-text table with aligned columns; floats with 3 decimals, strings as given."""
    body: List[List[str]] = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in r] for r in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in body)) if body else len(str(h))
              for i, h in enumerate(headers)]
    line = "  ".join(str(h).ljust(w) for h, w in zip(headers, widths))
    out = ([title] if title else []) + [line, "-" * len(line)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in body]
    return "\n".join(out)


def stage_table(per_model: Mapping[str, Mapping[str, float]], metric: str) -> str:
    """Per-stage values of one metric, one row per model (Tab. 7 reads the last column)."""
    stages = list(next(iter(per_model.values())))
    rows = [[label, *(v[s] for s in stages)] for label, v in per_model.items()]
    return format_table(["model", *stages], rows, title=METRIC_LABELS.get(metric, metric))


def oknn_table(per_model: Mapping[str, Dict[str, dict]]) -> str:
    """Tab. 4: O-KNN and disturbed O-KNN top-1/top-5 (%) per model; ``per_model[label]`` maps
    'oknn' / 'disturbed_oknn' to ``run_oknn`` results (either may be absent)."""
    kinds = [k for k in ("oknn", "disturbed_oknn") if any(k in r for r in per_model.values())]
    headers = ["model"] + [f"{'O-KNN' if k == 'oknn' else 'Disturbed O-KNN'} {t}"
                           for k in kinds for t in ("Top-1", "Top-5")]
    rows = [[label] + [f"{r[k][t]:.2f}" if k in r else "-" for k in kinds for t in ("top1", "top5")]
            for label, r in per_model.items()]
    return format_table(headers, rows, title="Object-level kNN (%)")
