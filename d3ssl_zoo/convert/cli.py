"""``d3ssl-zoo convert`` and ``d3ssl-zoo export``: checkpoints in and out of the zoo (docs/transfer.md)."""
from __future__ import annotations

import argparse
import sys

from .export import EXPORT_TARGETS, export_backbone
from .layouts import FORMATS, LAYOUTS, convert_checkpoint

__all__ = ["register"]


def register(subparsers) -> None:
    """Add ``convert`` and ``export``."""
    p = subparsers.add_parser(
        "convert", help="official SoCo/MoCo/DenseCL/PixPro/torchvision/timm checkpoint -> zoo folder",
        description="Cut the ResNet backbone out of an official checkpoint and write a zoo folder "
                    "(model.safetensors + config.json + README.md). Layouts: "
                    + "; ".join(f"{n}: {lay.source}" for n, lay in LAYOUTS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help=".pth/.pt/.tar (read with torch.load(weights_only=True)) or .safetensors")
    p.add_argument("--out", required=True, help="output folder (new, or a zoo folder to write again)")
    p.add_argument("--format", default="auto", choices=FORMATS, help="checkpoint layout (default: detect)")
    p.add_argument("--model-name", default=None,
                   help="zoo architecture to load into (default: from the layout and the ResNet depth)")
    p.add_argument("--tag", default=None, help="pretrained tag recorded in config.json")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a config.json / README.md of your own in --out; without it they are kept and "
                        "the conversion refused")
    p.set_defaults(func=_cmd_convert)

    p = subparsers.add_parser(
        "export", help="zoo model or folder -> detectron2 C4 pickle (+ configs), torchvision or mmdet weights")
    p.add_argument("model", help="zoo name/tag, save_pretrained folder, torchvision:resnet50 or a timm name")
    p.add_argument("--to", required=True, choices=EXPORT_TARGETS, help="target codebase")
    p.add_argument("--out", required=True, help="output file (.pkl for detectron2)")
    p.add_argument("--no-configs", action="store_true",
                   help="detectron2: do not write the VOC / COCO R50-C4 config files next to the pickle")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the output file (and detectron2 configs) if they exist; without it they are kept "
                        "and the export refused")
    p.set_defaults(func=_cmd_export)


def _cmd_convert(args: argparse.Namespace) -> int:
    try:
        report = convert_checkpoint(args.src, args.out, args.format, model_name=args.model_name, tag=args.tag,
                                    overwrite=args.overwrite)
    except (ValueError, FileNotFoundError) as e:
        print(f"d3ssl-zoo convert: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the output folder stopped being writable, or the checkpoint cannot be opened
        print(f"d3ssl-zoo convert: {_os_error(e)}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    try:
        report = export_backbone(args.model, args.to, args.out, configs=not args.no_configs,
                                 overwrite=args.overwrite)
    except (ValueError, FileNotFoundError) as e:
        print(f"d3ssl-zoo export: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the output folder stopped being writable
        print(f"d3ssl-zoo export: {_os_error(e)}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0


def _os_error(e: OSError) -> str:
    where = f" {e.filename}" if e.filename else ""
    return (f"cannot access{where}: {e.strerror or e}; no file is left half-written. Fix the permissions "
            f"(or choose another --out) and run the command again")
