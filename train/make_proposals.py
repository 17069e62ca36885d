"""Selective-search proposals for pre-training (Sec. 4.1, SPEC Sec. 3).

    python train/make_proposals.py --images DIR --out proposals.safetensors
    python train/make_proposals.py --coco annotations/instances_train2017.json --images train2017 --out coco.safetensors

Runs OpenCV selective search (modes fast/single/quality) on each image resized to 500 px on its
long side (boxes mapped back to original pixels), applies SoCo's filters with their fallbacks, in
parallel worker processes with a progress bar. Killed runs resume where they stopped (rerun the
same command). Prints a summary at the end. File format: d3ssl_zoo/data/proposals.py.
"""
import argparse
import os
import sys

from d3ssl_zoo.data.datasets import coco_records, folder_records
from d3ssl_zoo.data.proposal_tool import format_summary, make_proposals


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", help="image folder (with --coco: the folder the json's file_names refer to)")
    p.add_argument("--coco", help="COCO annotation json; its image ids key the proposal file")
    p.add_argument("--out", required=True, help="output proposal file (.safetensors)")
    p.add_argument("--mode", choices=("fast", "single", "quality"), default="fast", help="selective search mode")
    p.add_argument("--resize-long", type=int, default=500, help="long side the search runs at (0: original size)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes (1: in process)")
    p.add_argument("--min-side", type=int, default=32, help="images with a shorter side are skipped and reported")
    p.add_argument("--flush-every", type=int, default=256, help="images per resumable part file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if not args.images and not args.coco:
        p.error("give --images DIR, or --coco ANN.json (with --images DIR if the images are not next to it)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    records = coco_records(args.coco, args.images) if args.coco else folder_records(args.images)
    summary = make_proposals(records, args.out, mode=args.mode, resize_long=args.resize_long or None,
                             workers=args.workers, min_side=args.min_side, flush_every=args.flush_every,
                             progress=not args.no_progress)
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
