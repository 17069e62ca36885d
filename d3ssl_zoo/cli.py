"""``d3ssl-zoo``: the command line of the zoo.

``d3ssl-zoo list`` prints the tag table (``--format table|plain|json``), ``d3ssl-zoo info
<model.tag>`` one cfg as JSON. Other parts of the package add their subcommands through
``SUBCOMMAND_MODULES``: each module there defines ``register(subparsers)`` and gives every
parser a ``func(args) -> int`` default.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Iterable, List, Optional

SUBCOMMAND_MODULES: tuple = (
    "d3ssl_zoo.evaluation.cli",
    "d3ssl_zoo.convert.cli",
    "d3ssl_zoo.data.cli",
)

#: Commands defined here; they read only the tag table, so ``main`` skips importing the others.
BUILTIN_COMMANDS = ("list", "info")

LIST_FORMATS = ("table", "plain", "json")

#: The narrowest a non-tag column of ``list --format table`` gets before the table grows past
#: the terminal instead (the tag column itself never wraps).
_MIN_COLUMN_WIDTH = 4


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


def _list_rows() -> List[List[str]]:
    from .tags import TAGS

    return [[t.name, t.dataset, str(t.epochs), t.source, _fmt_reported(t.reported), "yes" if t.published else "no"]
            for t in TAGS]


def _print_table(rows: List[List[str]], width: Optional[int]) -> None:
    from rich.console import Console
    from rich.table import Table

    columns = ("model.tag", "dataset", "epochs", "paper", "reported numbers", "published")
    table = Table(title="d3ssl_zoo pretrained tags (paper numbers)")
    table.add_column(columns[0], no_wrap=True)
    for col in columns[1:]:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*row)
    console = Console(width=width)
    # Rich shrinks every column, tags included, once the others are down to nothing; keep room
    # for whole tags plus _MIN_COLUMN_WIDTH per other column (+ 2 padding, 1 border each).
    tag_width = max(len(text) for text in (columns[0], *(row[0] for row in rows)))
    needed = tag_width + (len(columns) - 1) * _MIN_COLUMN_WIDTH + 3 * len(columns) + 1
    console.width = max(console.width, needed)
    console.print(table)


def _cmd_list(args: argparse.Namespace) -> int:
    from .tags import TAGS

    fmt = args.format or ("table" if sys.stdout.isatty() else "plain")
    if fmt == "json":
        print(json.dumps([t.to_dict() for t in TAGS], indent=2))
    elif fmt == "plain":
        for row in _list_rows():
            print("\t".join(row))
    else:
        _print_table(_list_rows(), args.width)
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


def build_parser(subcommand_modules: Iterable[str] = SUBCOMMAND_MODULES) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="d3ssl-zoo", description="d3ssl_zoo: dense self-supervised ResNet-C4 "
                                     "backbones — models, training data, evaluation and transfer.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="print the table of pretrained tags")
    p.add_argument("--format", choices=LIST_FORMATS, default=None,
                   help="table: for reading; plain: one tag per line, tab-separated columns tag, dataset, "
                        "epochs, paper source, reported numbers, published; json: a list of the tags' metadata "
                        "(default: table on a terminal, plain otherwise)")
    p.add_argument("--width", type=int, default=None, help="table width in characters (default: terminal)")
    p.set_defaults(func=_cmd_list)
    p = sub.add_parser("info", help="print one pretrained cfg as JSON")
    p.add_argument("name", help="model.tag, e.g. d3ssl_r50c4.coco_800ep")
    p.set_defaults(func=_cmd_info)
    for module in subcommand_modules:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    builtin = bool(argv) and argv[0] in BUILTIN_COMMANDS
    args = build_parser(() if builtin else SUBCOMMAND_MODULES).parse_args(argv)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not as a traceback at interpreter exit
    except BrokenPipeError:
        # The reader left early (`d3ssl-zoo list | head -1`). Python flushes stdout again at
        # exit, so point it at devnull first (Python docs, signal module, "Note on SIGPIPE").
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a reader that went away
    return code


if __name__ == "__main__":
    sys.exit(main())
