"""Fine-tune a backbone for detection without detectron2 (paper §5 "Setting"; docs/transfer.md).

    accelerate launch train/finetune_det.py --task voc --model d3ssl_r50c4.coco_800ep --data /data/VOCdevkit
    accelerate launch train/finetune_det.py --task coco --model ./my_export --data /data/coco --mixed-precision bf16
    python train/finetune_det.py --task voc --model ./my_export --data /data/VOCdevkit --resume

VOC: Faster R-CNN R50-C4, VOC07+12 trainval, 24k iterations, VOC07 test AP/AP50/AP75.
COCO: Mask R-CNN R50-C4, 1x (90k iterations), val2017 bbox/segm AP. Recipes:
``d3ssl_zoo/recipes/det_voc.yaml`` / ``det_coco.yaml`` (package data; ``det_coco`` has ``base: det_voc``);
``--set key=value`` overrides any field, ``--print-recipe`` shows the resolved recipe and where each value comes from.
``--model`` is anything ``d3ssl_zoo.load_backbone`` takes: a zoo name/tag, a save_pretrained
folder (e.g. from ``d3ssl-zoo convert``), ``torchvision:resnet50`` or a timm name.
``--output-dir`` is checked writable and locked for the run before any work (a second run into it is
refused); Ctrl-C stops a run and says where its last checkpoint is (exit status 130).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import torch
from accelerate import PartialState

from d3ssl_zoo.checkpoint import RunLockedError, claim_run_folder, interrupted_message, stop_on_first_signal
from d3ssl_zoo.detection.finetune import finetune
from d3ssl_zoo.detection.recipe import describe_det_recipe, load_det_recipe
from d3ssl_zoo.disk import DiskFullError, UnwritableError
from d3ssl_zoo.tags import recipe_file


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--task", required=True, choices=("voc", "coco"))
    p.add_argument("--model", required=True,
                   help="zoo name/tag, save_pretrained folder, torchvision:resnet50, timm name")
    p.add_argument("--data", required=True, type=Path, help="VOCdevkit folder (voc) or COCO root (coco)")
    p.add_argument("--recipe", type=Path, default=None, help="recipe YAML (default: d3ssl_zoo/recipes/det_<task>.yaml)")
    p.add_argument("--output-dir", type=Path, default=None, help="default: runs/det_<task>")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                   help="continue the run of --output-dir: alone or 'auto', from its newest intact checkpoint; "
                        "or from the given checkpoint folder")
    p.add_argument("--max-iter", type=int, default=None, help="override the schedule length")
    p.add_argument("--ims-per-batch", type=int, default=None, help="total images per iteration (lr scales linearly)")
    p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default=None)
    p.add_argument("--no-eval", action="store_true", help="skip the test-set evaluation at the end")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE",
                   help="override recipe fields, e.g. num_workers=2 (key=value may also follow later options)")
    p.add_argument("--print-recipe", action="store_true",
                   help="print the recipe fully resolved (base: chain and overrides), each value with the file "
                        "and source comment it came from, and exit")
    args, rest = p.parse_known_args(argv)
    stray = [a for a in rest if a.startswith("-") or "=" not in a]
    if stray:
        p.error(f"unrecognized arguments: {' '.join(stray)}")

    overrides = (args.set or []) + rest  # key=value, typed by the recipe loader
    for key, value in (("max_iter", args.max_iter), ("ims_per_batch", args.ims_per_batch),
                       ("mixed_precision", args.mixed_precision)):
        if value is not None:
            overrides.append(f"{key}={value}")
    try:
        path = args.recipe or recipe_file(f"det_{args.task}")
        recipe = load_det_recipe(path, overrides)
        if recipe.task != args.task:
            raise ValueError(f"--task {args.task} but the recipe is for {recipe.task}")
        if args.print_recipe:
            print(describe_det_recipe(path, overrides), end="")
            return 0
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"finetune_det: {e}", file=sys.stderr)
        return 2
    output_dir = args.output_dir or Path("runs") / f"det_{args.task}"
    # the same process layout as finetune()'s Accelerator: several CPU processes use gloo
    state = PartialState(cpu=int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available())
    with stop_on_first_signal():
        try:
            with claim_run_folder(state, output_dir, subfolders=("checkpoints",)):  # before the data is read
                finetune(recipe, args.model, args.data, output_dir, resume=args.resume, evaluate=not args.no_eval)
        except (ValueError, TypeError, FileNotFoundError, FileExistsError, DiskFullError, UnwritableError,
                RunLockedError, FloatingPointError) as e:  # FloatingPointError: a non-finite loss
            print(f"finetune_det: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as e:
            if state.is_main_process:
                print(f"\nfinetune_det: {interrupted_message(output_dir, 'the same command with --resume')}",
                      file=sys.stderr)
            return 128 + (e.args[0] if e.args and isinstance(e.args[0], int) else signal.SIGINT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
