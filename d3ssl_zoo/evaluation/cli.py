"""``d3ssl-zoo eval oknn|coupling|mcs``: the paper's diagnostics from the command line.

Each command evaluates every ``--model`` (repeatable, to compare models in one run and one
figure), writes ``results.json`` (and a PNG per metric) under ``--out`` and prints a table.
``--sample`` runs on the embedded sample dataset's labelled split instead of given files.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Dict, List, Optional, Tuple

import torch

from d3ssl_zoo.disk import DiskFullError, UnwritableError, check_writable, is_disk_full, is_unwritable, unwritable
from d3ssl_zoo.evaluation.plots import oknn_table, plot_per_stage, stage_table

__all__ = ["register"]


def register(subparsers) -> None:
    """Add ``eval`` with its subcommands ``oknn``, ``coupling`` and ``mcs``."""
    ev = subparsers.add_parser("eval", help="the paper's diagnostics: O-KNN, coupling rate, positional MCS")
    sub = ev.add_subparsers(dest="eval_command", required=True)

    p = sub.add_parser("oknn", help="object-level kNN and disturbed O-KNN (paper Sec. 5.3, Tab. 4)")
    _common(p)
    p.add_argument("--train-ann", help="COCO json of the bank split (e.g. instances_train2017.json)")
    p.add_argument("--train-images", help="image folder of the bank split")
    p.add_argument("--val-ann", help="COCO json of the query split (e.g. instances_val2017.json)")
    p.add_argument("--val-images", help="image folder of the query split")
    p.add_argument("--disturbed", action="store_true",
                   help="also run disturbed O-KNN (backgrounds replaced by another random image)")
    p.add_argument("--objects-per-image", type=_at_least(0), default=1,
                   help="bank objects per training image, balanced over classes; 0 = all (default 1)")
    p.add_argument("--short-side", type=_at_least(1), default=512,
                   help="resize images to this shorter side (default 512)")
    p.add_argument("--k", type=_at_least(1), default=20, help="neighbours of the weighted vote (default 20)")
    p.add_argument("--temperature", type=_positive_float, default=0.07, help="temperature of the vote (default 0.07)")
    p.add_argument("--num-workers", type=_at_least(0), default=0, help="image-loading worker processes (default 0)")
    p.add_argument("--features", default="c5",
                   help="object features: c5 (the paper's read: RoIAlign 7x7 on C5, default) or c4_head:<roi size> "
                        "(the pre-training path: RoIAlign on C4 -> res5, a diagnostic; SoCo's head uses 14)")
    p.set_defaults(func=_cmd_oknn)

    p = sub.add_parser("coupling", help="coupling rate per stage (paper Sec. 3.1, Fig. 3b)")
    _common(p)
    _objects_source(p)
    p.add_argument("--num-pairs", type=_at_least(1), default=100, help="object pairs A, B (default 100)")
    p.add_argument("--object-size", type=_at_least(32), default=224,
                   help="side of each object crop, multiple of 32 (default 224)")
    p.add_argument("--gap", type=_at_least(0), default=0,
                   help="black pixels between A and B, multiple of 32 (default 0)")
    p.set_defaults(func=_cmd_coupling)

    p = sub.add_parser("mcs", help="positional mean cosine similarity per stage (paper Sec. 3.2, Fig. 4b)")
    _common(p)
    _objects_source(p)
    p.add_argument("--num-crops", type=_at_least(1), default=100, help="object crops tiled 3x3 (default 100)")
    p.add_argument("--tile-size", type=_at_least(32), default=224,
                   help="side of each tile, multiple of 32 (default 224)")
    p.set_defaults(func=_cmd_mcs)


def _at_least(minimum: int):
    """argparse type: an integer >= ``minimum``; anything else is a usage error naming the value."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is too small: give an integer >= {minimum}")
        return value
    parse.__name__ = f"integer >= {minimum}"
    return parse


def _positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number > 0")
    return value


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", action="append", required=True,
                   help="zoo name/tag, timm name, torchvision:resnet50 or save_pretrained folder; repeatable")
    p.add_argument("--checkpoint", action="append", default=[],
                   help="state-dict file (safetensors/pth) for the model given at the same position; "
                        "give none or one per --model")
    p.add_argument("--out", required=True, help="output folder (results.json, plots, feature cache)")
    p.add_argument("--sample", action="store_true", help="use the embedded sample dataset's labelled split")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of every random choice, random weights included (default 0)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--batch-size", type=_at_least(1), default=8, help="images per forward pass (default 8)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _objects_source(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ann", help="COCO json whose ground-truth boxes give the objects")
    p.add_argument("--images", help="image folder of --ann")
    p.add_argument("--min-object-size", type=_positive_float, default=32,
                   help="use objects whose shorter box side is at least this many pixels (default 32)")


def _models(args) -> List[Tuple[str, str, Optional[str]]]:
    if args.checkpoint and len(args.checkpoint) != len(args.model):
        raise ValueError(f"got {len(args.model)} --model and {len(args.checkpoint)} --checkpoint; "
                         f"give no --checkpoint or one per --model, in the same order")
    ckpts = args.checkpoint or [None] * len(args.model)
    out, seen = [], set()
    for spec, ckpt in zip(args.model, ckpts):
        label = spec if ckpt is None else f"{spec}@{os.path.basename(ckpt)}"
        n = 2
        while label in seen:
            label, n = f"{label}#{n}", n + 1
        seen.add(label)
        out.append((label, spec, ckpt))
    return out


def _split_files(args, names: Dict[str, str]) -> Dict[str, str]:
    """Paths of the dataset options ``names`` (dest -> sample attribute), from --sample or the flags."""
    given = {d: getattr(args, d) for d in names if getattr(args, d)}
    if args.sample:
        if given:
            flags = ", ".join("--" + d.replace("_", "-") for d in given)
            raise ValueError(f"--sample replaces {flags}; give one or the other")
        from d3ssl_zoo.data.sample import get_sample_dataset

        ds = get_sample_dataset()
        return {d: os.fspath(getattr(ds, a)) for d, a in names.items()}
    missing = [d for d in names if d not in given]
    if missing:
        raise ValueError(f"missing {', '.join('--' + d.replace('_', '-') for d in missing)} (or use --sample)")
    return given


def _device(args) -> str:
    return args.device or ("cuda" if torch.cuda.is_available() else "cpu")


def _write(out: str, payload: dict) -> str:
    """Write ``results.json``; the caller has printed the table already, so a failure here loses no number."""
    path = os.path.join(out, "results.json")
    try:
        os.makedirs(out, exist_ok=True)
        with open(path, "w") as f:
            json.dump(payload, f, indent=2)
    except OSError as e:
        kept = "the table above holds this run's numbers"
        if is_disk_full(e, out):
            raise DiskFullError(path, kept) from e
        if is_unwritable(e):
            raise unwritable(e, path, kept, f"Make {out} writable (or give --out another folder) and run the "
                                            f"same command again to write the file") from e
        raise
    return path


def _run(args, fn) -> int:
    from d3ssl_zoo.hub import PretrainedWeightsError

    try:
        check_writable(args.out, "--out")  # before any model is loaded or feature computed
        return fn(args)
    except (ValueError, FileNotFoundError, PretrainedWeightsError, DiskFullError, UnwritableError) as e:
        print(f"d3ssl-zoo eval {args.eval_command}: {e}", file=sys.stderr)
        return 2


def _cmd_oknn(args) -> int:
    return _run(args, _oknn)


def _cmd_coupling(args) -> int:
    return _run(args, lambda a: _per_stage(a, "coupling_rate"))


def _cmd_mcs(args) -> int:
    return _run(args, lambda a: _per_stage(a, "positional_mcs"))


def _oknn(args) -> int:
    from d3ssl_zoo.evaluation.features import load_model
    from d3ssl_zoo.evaluation.oknn import run_oknn

    files = _split_files(args, {"train_ann": "train_ann", "train_images": "train_images",
                                "val_ann": "val_ann", "val_images": "val_images"})
    models = _models(args)
    results: Dict[str, dict] = {}
    for label, spec, ckpt in models:
        torch.manual_seed(args.seed)  # randomly initialised models (no weights given) are reproducible
        model = load_model(spec, ckpt, _device(args))
        results[label] = {}
        for disturbed in ([False, True] if args.disturbed else [False]):
            t0 = time.perf_counter()
            r = run_oknn(model, files["train_ann"], files["train_images"], files["val_ann"], files["val_images"],
                         objects_per_image=args.objects_per_image, short_side=args.short_side, k=args.k,
                         temperature=args.temperature, disturbed=disturbed, seed=args.seed,
                         batch_size=args.batch_size, cache_dir=os.path.join(args.out, "feature_cache"),
                         device=_device(args), progress=not args.no_progress, num_workers=args.num_workers,
                         features=args.features)
            r["wall_s"] = time.perf_counter() - t0
            results[label][r["metric"]] = r
    table = oknn_table(results)
    payload = {"command": "oknn", "files": files, "models": results, "table": table}
    print(table)
    _print_notes(results)
    path = _write(args.out, payload)
    print(f"results: {path}")
    return 0


def _print_notes(results: Dict[str, dict]) -> None:
    r = next(iter(next(iter(results.values())).values()))
    print(f"bank {r['num_bank']} objects, {r['num_queries']} queries, {r['num_classes']} classes; "
          f"skipped train {_nonzero(r['skips']['train'])}, val {_nonzero(r['skips']['val'])}")
    if r["classes_with_fewer_than_k_bank_objects"]:
        print(f"note: {len(r['classes_with_fewer_than_k_bank_objects'])} classes have fewer than k={r['k']} "
              f"bank objects (see results.json); --objects-per-image 0 puts every object in the bank")
    if r["queries_of_classes_absent_from_bank"]:
        print(f"note: {r['queries_of_classes_absent_from_bank']} queries belong to classes absent from the "
              f"bank and count as errors")


def _nonzero(counts: Dict[str, int]) -> Dict[str, int]:
    return {k: v for k, v in counts.items() if v}


def _per_stage(args, metric: str) -> int:
    from d3ssl_zoo.evaluation.coupling import run_coupling
    from d3ssl_zoo.evaluation.features import load_model
    from d3ssl_zoo.evaluation.mcs import run_mcs

    files = _split_files(args, {"ann": "val_ann", "images": "val_images"})
    results: Dict[str, dict] = {}
    for label, spec, ckpt in _models(args):
        torch.manual_seed(args.seed)  # randomly initialised models (no weights given) are reproducible
        model = load_model(spec, ckpt, _device(args))
        t0 = time.perf_counter()
        common = dict(min_object_size=args.min_object_size, seed=args.seed, batch_size=args.batch_size,
                      device=_device(args), progress=not args.no_progress)
        if metric == "coupling_rate":
            r = run_coupling(model, files["ann"], files["images"], num_pairs=args.num_pairs,
                             object_size=args.object_size, gap=args.gap, **common)
        else:
            r = run_mcs(model, files["ann"], files["images"], num_crops=args.num_crops,
                        tile_size=args.tile_size, **common)
        r["wall_s"] = time.perf_counter() - t0
        results[label] = r
    per_stage = {label: r["per_stage"] for label, r in results.items()}
    table = stage_table(per_stage, metric)
    print(table)
    png = os.path.join(args.out, f"{metric}.png")
    path = _write(args.out, {"command": metric, "files": files, "models": results, "table": table, "plot": png})
    plot_per_stage(per_stage, metric, png)
    print(f"results: {path}\nplot: {png}")
    return 0
