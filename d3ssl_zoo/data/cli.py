"""``d3ssl-zoo`` subcommands of the data pipeline: ``proposals``, ``oimini``, ``sample``.

These are the tools' one entry point (``docs/data.md``):

    d3ssl-zoo proposals --images DIR --out proposals.safetensors
    d3ssl-zoo proposals --coco annotations/instances_train2017.json --images train2017 --out coco.safetensors
    d3ssl-zoo oimini --boxes train-annotations-bbox.csv --classes class-descriptions-boxable.csv \\
        --images train/ --coco instances_train2017.json --out openimage_mini.json
    d3ssl-zoo sample
"""
from __future__ import annotations

import argparse
import json

PROPOSALS_DESCRIPTION = """\
Selective-search proposals for pre-training (paper Sec. 4.1).

Runs OpenCV selective search (modes fast/single/quality) on each image resized to 500 px on its
long side (boxes mapped back to original pixels), applies SoCo's filters with their fallbacks, in
parallel worker processes with a progress bar. Killed runs resume where they stopped (rerun the
same command). Prints a summary at the end. File format: d3ssl_zoo/data/proposal_store.py."""

OIMINI_DESCRIPTION = "Build OpenImage-MINI (D3SSL Sec. 5.1) as a COCO json and print the Tab. 2 statistics."


def _sample(args) -> int:
    import sys

    from .sample import get_sample_dataset

    try:
        ds = get_sample_dataset(args.cache_dir)
    except (ValueError, RuntimeError) as e:
        print(f"d3ssl-zoo sample: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: str(v) for k, v in ds.__dict__.items()}, indent=2))
    return 0


def _proposals(args) -> int:
    from .selective_search import run

    return run(args)


def _oimini(args) -> int:
    from .openimages_mini import run

    return run(args)


def register(subparsers) -> None:
    from .openimages_mini import add_arguments as oimini_arguments
    from .selective_search import add_arguments as proposal_arguments

    p = subparsers.add_parser("proposals", help="selective-search proposals for pre-training (resumable)",
                              description=PROPOSALS_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    proposal_arguments(p)
    p.set_defaults(func=_proposals)
    p = subparsers.add_parser("oimini", help="build OpenImage-MINI (Sec. 5.1) and print Tab. 2 statistics",
                              description=OIMINI_DESCRIPTION)
    oimini_arguments(p)
    p.set_defaults(func=_oimini)
    p = subparsers.add_parser("sample", help="build (first use) and locate the embedded sample dataset")
    p.add_argument("--cache-dir", help="folder to build it in (default $D3SSL_ZOO_CACHE/sample-v<version>)")
    p.set_defaults(func=_sample)
