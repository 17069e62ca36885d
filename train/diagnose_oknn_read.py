"""Does O-KNN's read hide what the mini ladder's D3SSL backbone learned? (issue 9 diagnostic)

O-KNN reads RoIAlign 7x7 on the full-image C5 map at 256 px short side (the paper's protocol);
pre-training optimises RoIAlign on C4 -> res5 (the region head) on 128 px views. This evaluates a
ladder run's final checkpoint and the exact random initialisation of the same seed through both
reads, at both scales, and prints trained - random init for each:

    python train/diagnose_oknn_read.py --runs-dir runs/mini --seed 0

The scenes and the random init are the run's own (its checkpoint's recipe). Results are stored in
``--out`` as they finish (a rerun skips what is there).
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reproduce_mini as ladder  # noqa: E402  (the ladder's checkpoint and random-init loaders)
from d3ssl_zoo.data.scenes import SceneConfig, get_scene_dataset  # noqa: E402
from d3ssl_zoo.evaluation.oknn import run_oknn  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs-dir", required=True, help="the ladder's --runs-dir (holds <rung>_s<seed>)")
    p.add_argument("--rung", default="d3ssl", choices=sorted(ladder.RUNGS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--roi-size", type=int, default=7, help="the recipe's method.roi_size (mini: 7)")
    p.add_argument("--sides", type=int, nargs="+", default=[128, 256], help="O-KNN short sides")
    p.add_argument("--out", default="oknn_read.json")
    args = p.parse_args(argv)

    run = Path(args.runs_dir) / f"{args.rung}_s{args.seed}"
    final, recipe = ladder.final_checkpoint(run, f"; run train/reproduce_mini.py --runs-dir {args.runs_dir} first")
    # The run's own recipe: its scene set (the coloured one or the cue-free twin) and its model's init.
    scenes = get_scene_dataset(SceneConfig.from_source(recipe["dataset"]["source"]))
    models = {"random init": ladder.initial_backbone(recipe, args.seed),
              "trained": ladder.backbone_from_checkpoint(final)}
    out = Path(args.out)
    res = json.loads(out.read_text()) if out.is_file() else {}
    for features in ("c5", f"c4_head:{args.roi_size}"):
        for side in args.sides:
            row = []
            for name, model in models.items():
                # keyed by the run folder, so one --out can hold many runs' reads
                key = f"{run.as_posix()}/{final.name}/{name}/{features}/{side}"
                if key not in res:
                    res[key] = run_oknn(model, scenes.train_ann, scenes.train_images, scenes.val_ann,
                                        scenes.val_images, short_side=side, seed=args.seed, progress=False,
                                        features=features)["top1"]
                    out.write_text(json.dumps(res, indent=1, sort_keys=True))
                row.append(res[key])
            print(f"{features:>10} at {side:4d} px: random init {row[0]:5.1f} %  trained {row[1]:5.1f} %  "
                  f"trained - random {row[1] - row[0]:+5.1f} points", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
