"""Selective-search proposals for pre-training (Sec. 4.1, SPEC Sec. 3).

    python train/make_proposals.py --images DIR --out proposals.safetensors
    python train/make_proposals.py --coco annotations/instances_train2017.json --images train2017 --out coco.safetensors

Runs OpenCV selective search (modes fast/single/quality) on each image resized to 500 px on its
long side (boxes mapped back to original pixels), applies SoCo's filters with their fallbacks, in
parallel worker processes with a progress bar. Killed runs resume where they stopped (rerun the
same command). Prints a summary at the end. File format: d3ssl_zoo/data/proposal_store.py.
Same as ``d3ssl-zoo proposals``.
"""
import argparse
import sys

from d3ssl_zoo.data.selective_search import add_arguments, run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
