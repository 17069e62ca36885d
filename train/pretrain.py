"""Pre-train a D3SSL or SoCo backbone with Accelerate.

    accelerate launch train/pretrain.py                       # the embedded demo (CPU, minutes)
    accelerate launch train/pretrain.py --recipe d3ssl_r50c4.coco_800ep \
        --data /data/coco/annotations/instances_train2017.json --proposals /data/coco/proposals_train2017.safetensors
    accelerate launch train/pretrain.py --recipe demo train.epochs=4 method.tau=0.1   # key=value overrides

``--recipe`` is a tag of the zoo, ``demo`` (both shipped in the package: ``d3ssl_zoo/recipes/<name>.yaml``,
``d3ssl-zoo info <model.tag>`` prints the installed file), or a YAML path.
Runs resume by default (``--resume auto``): relaunching the same command continues from the newest
checkpoint of ``--output-dir``. The backbone is exported with ``d3ssl_zoo.save_pretrained`` into
``<output-dir>/export``. On the built-in datasets (the demo's generated scenes, or the embedded sample) the
O-KNN (Sec. 5.3) of the trained backbone and of its random initialisation is printed at the end
(``--no-eval`` skips it). One run at a time writes to an output folder (a second one is refused); Ctrl-C
stops a run and says where its last checkpoint is (exit status 130). SIGTERM or SIGUSR1 (a scheduler's notice of
preemption) stops every process after the same step, writes a checkpoint there and exits with status 143;
relaunching resumes from it exactly (docs/training.md, "Preemption").
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import set_seed

import d3ssl_zoo
from d3ssl_zoo.checkpoint import PREEMPTED_EXIT, RunLockedError, interrupted_message, stop_on_first_signal
from d3ssl_zoo.disk import DiskFullError, UnwritableError
from d3ssl_zoo.engine import NonFiniteLossError, Recipe, UnknownRecipeKeyError, describe_recipe, load_recipe, train
from d3ssl_zoo.engine.trainer import Preempted
from d3ssl_zoo.tags import recipe_file


def report_oknn(recipe: Recipe, export_dir: Path, short_side: int) -> None:
    """O-KNN of the trained backbone vs. its random initialisation on the built-in set's labelled split."""
    from d3ssl_zoo.evaluation.oknn import run_oknn

    source = recipe.dataset.source
    if source == "sample":
        from d3ssl_zoo.data.sample import get_sample_dataset

        data = get_sample_dataset()
    else:
        from d3ssl_zoo.data.scenes import SceneConfig, get_scene_dataset

        data = get_scene_dataset(SceneConfig.from_source(source))
    set_seed(recipe.train.seed)  # the same draw as the start of training: the exact initial weights
    initial = d3ssl_zoo.create_model(recipe.model.name, pretrained=False, **recipe.model.kwargs())
    trained = d3ssl_zoo.load_backbone(str(export_dir))  # as a user loads the export (config.json's model_args too)
    splits = (data.train_ann, data.train_images, data.val_ann, data.val_images)
    rows, top1 = [], {}
    for name, model in (("random init", initial), ("trained", trained)):
        r = run_oknn(model, *splits, seed=recipe.train.seed, short_side=short_side, progress=False)
        top1[name] = r["top1"]
        rows.append(f"  {name:<12} top-1 {r['top1']:5.1f}%  top-5 {r['top5']:5.1f}%  "
                    f"({r['num_bank']} bank objects, {r['num_queries']} queries, {r['num_classes']} classes)")
    print(f"O-KNN (Sec. 5.3) on the labelled split of '{source}' ({short_side} px short side):\n" + "\n".join(rows)
          + f"\n  trained - random init: {top1['trained'] - top1['random init']:+.1f} points top-1")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="demo", help="demo, a zoo tag (e.g. d3ssl_r50c4.coco_800ep) or a YAML file")
    p.add_argument("--data", help="pre-training images: COCO annotation json, image folder, or 'sample' "
                                  "(sets dataset.source)")
    p.add_argument("--proposals", help="proposal file from `d3ssl-zoo proposals` (sets dataset.proposals)")
    p.add_argument("--output-dir", help="run folder (default: runs/<model.tag>)")
    p.add_argument("--resume", default="auto",
                   help="'auto' (default: newest checkpoint of --output-dir, if any), 'none', or a checkpoint folder")
    p.add_argument("--no-eval", action="store_true", help="skip the O-KNN report (built-in datasets only)")
    p.add_argument("--eval-short-side", type=int, default=256,
                   help="image scale of that O-KNN report (the built-in sets are 128-160 px images)")
    p.add_argument("--cpu-threads", type=int, default=None,
                   help="torch threads of a single-process CPU run (default: every core this process may use; "
                        "`accelerate launch` alone would leave it at OMP_NUM_THREADS=1)")
    p.add_argument("--print-recipe", action="store_true",
                   help="print the recipe fully resolved (base: chain and overrides), each value with the file "
                        "and source comment it came from, and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides, e.g. train.epochs=10")
    args = p.parse_intermixed_args(argv)  # key=value overrides may come before, between or after options

    if not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        torch.set_num_threads(args.cpu_threads or len(os.sched_getaffinity(0)))
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"dataset.source={args.data}")
    if args.proposals:
        overrides.append(f"dataset.proposals={args.proposals}")
    try:
        recipe = load_recipe(recipe_file(args.recipe), overrides)
        if args.print_recipe:
            print(describe_recipe(recipe_file(args.recipe), overrides), end="")
            return 0
    except (UnknownRecipeKeyError, FileNotFoundError, ValueError, TypeError) as e:
        print(f"pretrain.py: {e}", file=sys.stderr)
        return 2
    output_dir = Path(args.output_dir or Path("runs") / recipe.tag)
    resume = None if args.resume == "none" else args.resume
    with stop_on_first_signal(preemption=True):
        try:
            return _run(args, recipe, output_dir, resume)
        except KeyboardInterrupt as e:
            if int(os.environ.get("RANK", "0")) == 0:  # the main process speaks for every rank
                again = "the same command" if resume == "auto" else "the same command with --resume auto"
                print(f"\npretrain.py: {interrupted_message(output_dir, again)}", file=sys.stderr)
            return 128 + (e.args[0] if e.args and isinstance(e.args[0], int) else signal.SIGINT)


def _run(args: argparse.Namespace, recipe: Recipe, output_dir: Path, resume: str | None) -> int:
    try:
        result = train(recipe, output_dir, resume=resume)  # refuses to mix two runs in one output dir
    except (NonFiniteLossError, FileExistsError, FileNotFoundError, ValueError, DiskFullError, UnwritableError,
            RunLockedError) as e:
        print(f"pretrain.py: {e}", file=sys.stderr)
        return 1
    except Preempted as e:
        if PartialState().is_main_process:
            again = "the same command" if resume == "auto" else "the same command with --resume auto"
            print(f"pretrain.py: {e}; {again} continues from it (exit status {PREEMPTED_EXIT}: requeue the job)",
                  file=sys.stderr)
        return PREEMPTED_EXIT
    if not PartialState().is_main_process:
        return 0
    weights = result.export_dir / "model.safetensors"
    extra = f", padding_mode={recipe.model.padding_mode!r}" if recipe.model.padding_mode != "zeros" else ""
    print(f"\nTrained {result.step} steps; checkpoint {result.last_checkpoint}; "
          f"backbone exported to {result.export_dir}\n"
          f"Load it with:\n"
          f"  import timm, d3ssl_zoo\n"
          f"  model = timm.create_model('{recipe.model.name}', pretrained=True, "
          f"pretrained_cfg_overlay=dict(file='{weights}'){extra})\n")
    if (recipe.dataset.source == "sample" or recipe.dataset.source.partition(":")[0] == "scenes") and not args.no_eval:
        report_oknn(recipe, result.export_dir, args.eval_short_side)
    return 0


if __name__ == "__main__":
    sys.exit(main())
