"""De-positioning's strength: do the regions pasted into x3 move more than the de-coupling views move them?

The paper (Sec. 1) says the de-positioning module "yields views with higher variance than one in the
de-coupling module". This measures that property on the pre-training pipeline's own samples: the dataset's
``__getitem__`` (crop, proposals, flips, RBJ and the shift t of Eq. 6-7, drawn in the data worker by
``d3ssl_zoo.data.composite.depositioning_masks``), for ``data.dp_proposals = n``, n = 1..K (n = K is the
literal reading of Sec. 4.2, ``dp_proposals: 0``). For each region pasted into x3 (the first n of the K):

* x2 -> x3: the length of t in view pixels (every pasted region moves by t; Eq. 8);
* x1 -> x2: the distance between the region's box centres in the x1 and x2 views as the network receives
  them (the RoIs after RBJ, each view's own horizontal flip included), in view pixels;

and it reports the share of regions with ``|t| > x1 -> x2`` (a 95 % interval by a bootstrap over samples,
whose regions share one t), the medians of ``|t|`` (over samples) and of x1 -> x2 (over regions) as
fractions of the view side, and the share of samples with t = 0. The "without flips" columns are the same
samples with ``data.flip_p = 0`` (every draw before the flips is the same; the shift then follows the
unflipped boxes). Two settings: the bundled sample at the R50 recipe's views (224 px) and the cue-free
scenes at the mini ladder's views (128 px). docs/design.md ("which proposals enter x3 and L_dp") fixes n
from these numbers: the largest n with a share above 0.5 in both settings.

    python -m experiments.depositioning_strength --out experiments/results/depositioning_strength

writes ``depositioning_strength.json`` and the folder's ``results.json`` index, then ``results.md`` and
``command.sh`` (``experiments.report``). A few minutes on one CPU core (the cue-free scenes are built on
first use).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from d3ssl_zoo.data import build_pretrain_dataset
from d3ssl_zoo.data.datasets import source_records
from d3ssl_zoo.engine import load_recipe
from d3ssl_zoo.tags import recipe_file

__all__ = ["SETTINGS", "measure", "summarise", "decide", "strength_table", "main"]

ROOT = Path(__file__).resolve().parents[1]
FILE = "depositioning_strength.json"
# name -> (recipe, overrides, what it is)
SETTINGS = {
    "sample_r50": ("d3ssl_r50c4.coco_800ep", ["dataset.source=sample"],
                   "the bundled sample (scikit-image photos and the sample's labelled-train images) at the R50 "
                   "recipe's views (224 px)"),
    "cuefree_mini": ("experiments/recipes/d3ssl.yaml", ["dataset.source=scenes:instance_cues=0"],
                     "the cue-free scenes at the mini ladder's views (128 px)"),
}
QUESTION = ("Do the regions pasted into x3 move more from x2 to x3 than from x1 to x2, as the paper's \"views with "
            "higher variance than one in the de-coupling module\" (Sec. 1) says, and for which number n of the K "
            "proposals in x3 (data.dp_proposals)?")


def _centres(boxes: np.ndarray) -> np.ndarray:
    return (boxes[..., :2] + boxes[..., 2:]) / 2


def measure(recipe: str, overrides: list[str], images: int, seed: int | None = None, *,
            flip: bool = True) -> dict:
    """Per-n raw distances of one setting: ``{n: {"t": (S,), "d12": (S, n)}}`` in view pixels, plus the view
    side, K and the recipe's PRC rule. Samples are the keys ``(j // len, j % len)``, j < ``images``, of
    the dataset the recipe builds (seed: the recipe's ``train.seed`` unless given)."""
    rec = load_recipe(recipe_file(recipe) if not recipe.endswith(".yaml") else ROOT / recipe, overrides)
    cfg = rec.data if flip else dataclasses.replace(rec.data, flip_p=0.0)
    if not cfg.depositioning or cfg.views != "d3ssl":
        raise ValueError(f"{recipe}: de-positioning is off (data.depositioning / data.views); nothing to measure")
    source = rec.dataset.source
    builtin = str(source) == "sample" or str(source).partition(":")[0] == "scenes"
    proposals = None if builtin else rec.dataset.proposals
    records = source_records(cfg, source)
    seed = rec.train.seed if seed is None else seed
    k = cfg.num_proposals
    out = {"view_side": cfg.image_size, "num_proposals": k, "prc_rule": cfg.prc_rule, "seed": seed,
           "source": str(source), "per_n": {}}
    for n in range(1, k + 1):
        ds = build_pretrain_dataset(dataclasses.replace(cfg, dp_proposals=n), source, proposals, seed, records)
        ts, d12 = [], []
        for j in range(images):
            s = ds[(j // len(ds), j % len(ds))]
            if s["boxes3"].shape[0] != n:
                raise AssertionError(f"dp_proposals={n} pasted {s['boxes3'].shape[0]} regions")
            ts.append(float(np.hypot(*s["t"])))
            d12.append(np.linalg.norm(_centres(s["boxes2"][:n]) - _centres(s["boxes1"][:n]), axis=-1))
        out["per_n"][n] = {"t": np.asarray(ts), "d12": np.stack(d12)}
    out["dataset_images"] = len(ds)
    return out


def _bootstrap(per_sample: np.ndarray, rng: np.random.Generator, resamples: int) -> tuple[float, float]:
    """95 % percentile interval of the mean of ``per_sample`` over samples drawn with replacement."""
    idx = rng.integers(0, len(per_sample), (resamples, len(per_sample)))
    means = per_sample[idx].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def summarise(raw: dict, raw_noflip: dict, resamples: int = 2000, seed: int = 0) -> list[dict]:
    """One row per n: the shares (with bootstrap intervals), medians as fractions of the view side, t = 0 share."""
    side = raw["view_side"]
    rng = np.random.default_rng(seed)
    rows = []
    for n, r in raw["per_n"].items():
        row = {"n": int(n), "dp_proposals": 0 if int(n) == raw["num_proposals"] else int(n),
               "samples": int(len(r["t"])), "regions": int(r["d12"].size)}
        for key, rr in (("", r), ("_noflip", raw_noflip["per_n"][n])):
            more = (rr["t"][:, None] > rr["d12"]).mean(axis=1)  # per sample: the share of its n regions
            lo, hi = _bootstrap(more, rng, resamples)
            row.update({f"share_moves_more{key}": float(more.mean()), f"share_ci95{key}": [lo, hi],
                        f"median_t{key}": float(np.median(rr["t"]) / side),
                        f"median_x1_x2{key}": float(np.median(rr["d12"]) / side),
                        f"share_t_zero{key}": float((rr["t"] == 0).mean())})
        rows.append(row)
    return rows


def decide(results: dict) -> dict:
    """docs/design.md's rule: the largest n in 1..K whose share (flips included) is above 0.5 in every setting;
    none: n = 1 and the property does not hold."""
    ks = {s["num_proposals"] for s in results.values()}
    if len(ks) != 1:
        raise ValueError(f"the settings have different K: {sorted(ks)}")
    ok = [n for n in range(1, ks.pop() + 1)
          if all(next(r for r in s["rows"] if r["n"] == n)["share_moves_more"] > 0.5 for s in results.values())]
    return {"dp_proposals": max(ok), "holds": True} if ok else {"dp_proposals": 1, "holds": False}


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def strength_table(data: dict) -> list[str]:
    """The per-n table of every setting and the decision (``experiments.report``'s table of this file)."""
    lines = []
    for name, s in data["settings"].items():
        lines += [f"**{name}**: {s['about']}; recipe `{s['recipe']}` with `{' '.join(s['overrides'])}`, "
                  f"{s['rows'][0]['samples']} samples of {s['dataset_images']} images, seed {s['seed']}, "
                  f"data.prc_rule {s['prc_rule']}.", ""]
        header = ["n (dp_proposals)", "regions", "share ‖t‖ > x1→x2 (95 % CI)", "without flips",
                  "median ‖t‖ / side", "median x1→x2 / side", "without flips", "t = 0"]
        rows = []
        for r in s["rows"]:
            lo, hi = r["share_ci95"]
            lo2, hi2 = r["share_ci95_noflip"]
            rows.append([f"{r['n']} ({r['dp_proposals']})", str(r["regions"]),
                         f"{_pct(r['share_moves_more'])} ({_pct(lo)}-{_pct(hi)})",
                         f"{_pct(r['share_moves_more_noflip'])} ({_pct(lo2)}-{_pct(hi2)})",
                         f"{r['median_t']:.3f}", f"{r['median_x1_x2']:.3f}", f"{r['median_x1_x2_noflip']:.3f}",
                         _pct(r["share_t_zero"])])
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                  *("| " + " | ".join(row) + " |" for row in rows), ""]
    d = data["decision"]
    lines.append(f"**Rule of docs/design.md** (the largest n whose share is above 50 % in every setting above): "
                 f"n = {d['dp_proposals']}" + ("." if d["holds"] else
                                               "; the property holds for no n in every setting (n = 1 by the rule)."))
    return lines


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.depositioning_strength",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("experiments/results/depositioning_strength"),
                   help="result folder (default: %(default)s)")
    p.add_argument("--images", type=int, default=1000, help="samples per setting and n (default: %(default)s)")
    p.add_argument("--seed", type=int, default=None, help="dataset seed (default: each recipe's train.seed)")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default: %(default)s)")
    p.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=list(SETTINGS),
                   help="which settings (default: all)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    command = shlex.join(["python", "-m", "experiments.depositioning_strength",
                          *(sys.argv[1:] if argv is None else argv)])
    results = {}
    for name in args.settings:
        recipe, overrides, about = SETTINGS[name]
        start = time.perf_counter()
        raw = measure(recipe, overrides, args.images, args.seed)
        raw_noflip = measure(recipe, overrides, args.images, args.seed, flip=False)
        results[name] = {"about": about, "recipe": recipe, "overrides": overrides,
                         **{k: raw[k] for k in ("view_side", "num_proposals", "prc_rule", "seed", "source",
                                                "dataset_images")},
                         "rows": summarise(raw, raw_noflip, args.resamples)}
        print(f"[depositioning_strength] {name}: {time.perf_counter() - start:.0f} s", flush=True)
        for r in results[name]["rows"]:
            print(f"  n={r['n']}: share {r['share_moves_more']:.3f} {r['share_ci95']}, no flips "
                  f"{r['share_moves_more_noflip']:.3f}, median |t| {r['median_t']:.3f}, median x1->x2 "
                  f"{r['median_x1_x2']:.3f}, t=0 {r['share_t_zero']:.3f}", flush=True)
    data = {"question": QUESTION, "command": command, "settings": results, "decision": decide(results)}
    print(f"[depositioning_strength] decision: {data['decision']}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / FILE).write_text(json.dumps(data, indent=1) + "\n")
    index = {"title": "De-positioning's strength", "question": QUESTION, "command": command,
             "files": [{"file": FILE, "command": command,
                        "about": "Per setting and n, over the regions pasted into x3: the share that move more "
                                 "from x2 to x3 (|t|) than from x1 to x2 (box centres in the two views as fed), "
                                 "medians as fractions of the view side, and the share of samples with t = 0; "
                                 "then docs/design.md's rule for n."}]}
    (args.out / "results.json").write_text(json.dumps(index, indent=1) + "\n")
    from experiments import report  # the report reads this module's table: imported here, not at the top
    print(f"[depositioning_strength] {report.write_diagnostics_report(args.out)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
