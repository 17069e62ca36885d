"""``d3ssl-zoo``: the command line of the zoo.

``d3ssl-zoo list`` prints the tag table, ``d3ssl-zoo info <model.tag>`` one cfg as JSON. Other
parts of the package add their subcommands through ``SUBCOMMAND_MODULES``: each module there
defines ``register(subparsers)`` and gives every parser a ``func(args) -> int`` default.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import List, Optional

SUBCOMMAND_MODULES: tuple = (
    "d3ssl_zoo.evaluation.cli",
    "d3ssl_zoo.transfer.cli",
    "d3ssl_zoo.data.cli",
)


def _fmt_reported(reported: dict) -> str:
    short = {"voc07+12_ap_ap50_ap75": "VOC", "voc07+12_ap": "VOC AP", "coco_det_ap_ap50_ap75": "COCO det",
             "coco_seg_ap_ap50_ap75": "COCO seg", "oknn_top1_top5": "O-KNN", "disturbed_oknn_top1_top5": "dist. O-KNN",
             "coupling_rate": "CR", "mcs": "MCS"}
    parts = []
    for key, value in reported.items():
        if key not in short:
            continue
        text = "/".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
        parts.append(f"{short[key]} {text}")
    return "; ".join(parts)


def _cmd_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from .tags import TAGS

    table = Table(title="d3ssl_zoo pretrained tags (paper numbers)")
    for col in ("model.tag", "dataset", "epochs", "paper", "reported numbers", "published"):
        table.add_column(col, overflow="fold")
    for t in TAGS:
        table.add_row(t.name, t.dataset, str(t.epochs), t.source, _fmt_reported(t.reported),
                      "yes" if t.published else "no")
    Console(width=args.width).print(table)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from .factory import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(args.name)
    except (ValueError, RuntimeError) as e:
        print(f"d3ssl-zoo info: {e}", file=sys.stderr)
        return 2
    print(json.dumps(cfg, indent=2, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="d3ssl-zoo", description="d3ssl_zoo: dense self-supervised ResNet-C4 backbones — models, training data, evaluation and transfer.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="print the table of pretrained tags")
    p.add_argument("--width", type=int, default=None, help="table width in characters (default: terminal)")
    p.set_defaults(func=_cmd_list)
    p = sub.add_parser("info", help="print one pretrained cfg as JSON")
    p.add_argument("name", help="model.tag, e.g. d3ssl_r50c4.coco_800ep")
    p.set_defaults(func=_cmd_info)
    for module in SUBCOMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
