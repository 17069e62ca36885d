"""``d3ssl-zoo`` subcommands of the data pipeline: ``proposals``, ``oimini``, ``sample``."""
from __future__ import annotations

import json


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

    p = subparsers.add_parser("proposals", help="selective-search proposals for pre-training (resumable)")
    proposal_arguments(p)
    p.set_defaults(func=_proposals)
    p = subparsers.add_parser("oimini", help="build OpenImage-MINI (Sec. 5.1) and print Tab. 2 statistics")
    oimini_arguments(p)
    p.set_defaults(func=_oimini)
    p = subparsers.add_parser("sample", help="build (first use) and locate the embedded sample dataset")
    p.add_argument("--cache-dir", help="folder to build it in (default $D3SSL_ZOO_CACHE/sample-v<version>)")
    p.set_defaults(func=_sample)
