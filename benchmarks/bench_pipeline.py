"""Data pipeline speed, measured side by side on the same images (targets in brackets).

1. Per-sample CPU cost, one thread (as a data worker runs), of a full sample of the R50 recipes'
   views (d3ssl_r50c4.coco_800ep: x1, x2 224 px, x2-s 112 px) through the dataset's own path
   (``PretrainDataset[(epoch, index)]``: the x2 crop drawn first, the JPEG decoded at the reduction
   that crop allows, views, colour, PRC/PRM/RBJ, Eq. 6-7 masks, then its share of the uint8 collator)
   vs. the floor measured in the same run: a full decode + the three resizes with OpenCV's area
   filter, the plain library way [<= 1.3x]. Also timed: the lower floor of a 1/2 decode, and the
   package's own decode + resizes (the reduction each crop allows, :func:`resize_view`'s two-step
   area filter), so that what the augmentations themselves cost is visible. The normalisation and
   the Eq. 8 composite run on the GPU (``prepare_batch``) and are not in this cost. All are timed
   in interleaved rounds, best of ``--rounds``, as CPU time of this process: on an idle core that
   is the wall time; on a loaded machine it leaves out the time other processes hold the core
   (they still slow it through shared caches: ratios are then approximate).
2. samples/s of the pre-training DataLoader with 1 and 2 workers [2 workers >= 1.8x one, on idle
   cores], and how many cores one GPU needs at an assumed R50-C4 step rate (no GPU measured yet).
3. Proposals: images/s of the bare OpenCV call (decode, resize to 500 px, selective search) vs.
   the proposal tool with 1 worker [overhead <= 5%] and with 2 workers [>= 1.7x one worker]. The
   tool's workers are spawned processes that import torch and the package before their first
   image (seconds, and far more on a loaded machine), which a run of a few images cannot amortise:
   the tool's rate is therefore its steady rate, start-up excluded, from the times it reports each
   finished image (its progress bar, recorded): images after the first round of results (each
   worker's first chunk) / time from the end of that round to the last result. It runs on
   ``max(3N, 12 x workers)`` images (N = ``--proposal-images``; copies of the photos under new
   names, same pixels, same search cost). The rate of the whole run, start-up included, and the
   start-up it implies are printed too.

    OMP_NUM_THREADS=1 python benchmarks/bench_pipeline.py [--images DIR] [--samples 200] [--proposal-images 8]

Default images: scikit-image's bundled photos at COCO's common sizes (640x480, 640x427, portrait too), as JPEG.
Ratios need idle cores: the load average is printed; on a shared machine the worker speed-ups are
lower bounds. Proposal timings are interleaved and repeated (best of ``--repeats``).
"""
import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import skimage.data
import torch
from PIL import Image

from d3ssl_zoo.data import PretrainCollator, build_pretrain_dataset, pretrain_loader
from d3ssl_zoo.data.images import decode_rgb, folder_records, load_rgb
from d3ssl_zoo.data.selective_search import make_proposals
from d3ssl_zoo.data.views import random_resized_crop_params, resize_view
from d3ssl_zoo.engine import load_recipe
from d3ssl_zoo.tags import recipe_file

RECIPE = "d3ssl_r50c4.coco_800ep"
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "colorwheel",
          "retina")
# Assumed R50-C4 D3SSL rate of one GPU (bf16, batch 64): not measured (no GPU was lent; gpu_check.py will
# measure it). Five backbone passes per image (student x1, x3, x2-s with backward, teacher x1, x2) put an
# A100/H100 at a few hundred to about a thousand images/s.
ASSUMED_GPU_IMAGES_PER_S = (400, 1000)


COCO_SHAPES = ((640, 480), (640, 427), (480, 640), (427, 640))  # COCO's most common image sizes (w, h)


def coco_like_images(folder: Path) -> Path:
    """The photos at COCO's common sizes (640x480, 640x427 and their portrait forms, in turn): resized to
    cover, centre-cropped, saved as JPEG at quality 90."""
    for i, name in enumerate(PHOTOS):
        a = getattr(skimage.data, name)()
        a = np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a[..., :3]
        w, h = COCO_SHAPES[i % len(COCO_SHAPES)]
        s = max(w / a.shape[1], h / a.shape[0])
        a = cv2.resize(a, (max(w, round(a.shape[1] * s)), max(h, round(a.shape[0] * s))),
                       interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC)
        y, x = (a.shape[0] - h) // 2, (a.shape[1] - w) // 2
        Image.fromarray(np.ascontiguousarray(a[y:y + h, x:x + w])).save(folder / f"{name}.jpg", quality=90)
    return folder


def floor_sample(path, cfg, rng, reduce=1):
    """The library floor: decode, then x1, x2 and x2-s with ``cv2.resize(..., INTER_AREA)``."""
    image = decode_rgb(path, reduce).image
    h, w = image.shape[:2]
    x0, y0, cw, ch = random_resized_crop_params(h, w, cfg.crop_scale, cfg.crop_ratio, rng)
    size = (cfg.image_size, cfg.image_size)
    cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    x2 = cv2.resize(image[y0:y0 + ch, x0:x0 + cw], size, interpolation=cv2.INTER_AREA)
    cv2.resize(x2, (cfg.small_size, cfg.small_size), interpolation=cv2.INTER_AREA)


def own_floor_sample(dataset, key):
    """The package's decode + resizes for the sample ``key``: the reduction its crop allows, ``resize_view``."""
    cfg = dataset.cfg
    _, image, reduce, _, (crop, _) = dataset.decode(*key)
    resize_view(image, (0, 0, image.shape[1], image.shape[0]), cfg.image_size, False)
    x2 = resize_view(image, crop, cfg.image_size, False)
    cv2.resize(x2, (cfg.small_size, cfg.small_size), interpolation=cv2.INTER_AREA)
    return reduce


def timed_per_sample(fns: dict, keys, rounds: int) -> dict:
    """CPU seconds per call of each ``fn(i, key)``, best of ``rounds`` interleaved passes (load only slows)."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.process_time()
            for i, k in enumerate(keys):
                fn(i, k)
            best[name] = min(best[name], (time.process_time() - t0) / len(keys))
    return best


def bench_samples(dataset, cfg, n, batch, rounds):
    """CPU seconds per sample: library floor, its 1/2-decode version, the package's own decode + resizes,
    the full sample; and how often each decode reduction was picked."""
    collate = PretrainCollator(cfg)
    keys = [(0, i % len(dataset)) for i in range(n)]
    path = {k: dataset.records[k[1]].path for k in keys}
    for k in keys[:4]:  # warm caches (file system, OpenCV)
        floor_sample(path[k], cfg, np.random.default_rng(0))
    reductions = np.bincount([own_floor_sample(dataset, k) for k in keys], minlength=9)
    pending = []

    def full(i, key):
        pending.append(dataset[key])
        if len(pending) == batch:
            collate(pending)
            pending.clear()

    t = timed_per_sample({"floor": lambda i, k: floor_sample(path[k], cfg, np.random.default_rng(i)),
                          "reduced": lambda i, k: floor_sample(path[k], cfg, np.random.default_rng(i), 2),
                          "own": lambda i, k: own_floor_sample(dataset, k),
                          "full": full}, keys, rounds)
    picked = {f: int(c) for f, c in enumerate(reductions) if c}
    return t["floor"], t["reduced"], t["own"], t["full"], picked


def loader_rate(dataset, cfg, n, batch, workers) -> float:
    """samples/s of the pre-training DataLoader, from its first batch on (worker start-up excluded)."""
    keys = [(0, i % len(dataset)) for i in range(n + batch)]
    loader = pretrain_loader(dataset, cfg, batch, keys, workers)
    it = iter(loader)
    next(it)
    t0 = time.perf_counter()
    count = sum(len(b["image_id"]) for b in it)
    rate = count / (time.perf_counter() - t0)
    del it, loader
    return rate


def bare_opencv(paths):
    """Decode + resize to 500 px + selective search, nothing else (same decoder and pixels as the tool,
    since the search's run time depends on the exact pixels)."""
    t0 = time.perf_counter()
    for p in paths:
        img = load_rgb(p)
        s = 500 / max(img.shape[:2])
        img = cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)),
                         interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
        ss.setBaseImage(cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        ss.switchToSelectiveSearchFast()
        ss.process()
    return len(paths) / (time.perf_counter() - t0)


def copies(records, folder: Path, n: int):
    """``n`` records: the images of ``records`` copied under new names (same pixels, so the same search
    cost), for runs long enough to time the tool's rate at the margin."""
    folder.mkdir()
    for i in range(n):
        src = Path(records[i % len(records)].path)
        shutil.copyfile(src, folder / f"{i:04d}_{src.name}")
    return folder_records(folder)


class _Arrivals:
    """A stand-in for the tool's tqdm progress bar that records when each finished image is reported."""
    times: list = []

    def __init__(self, *args, **kwargs):
        type(self).times = []

    def update(self, n=1):
        self.times.extend([time.perf_counter()] * n)

    def __getattr__(self, name):  # close(), set_postfix(), ...: nothing to draw
        return lambda *args, **kwargs: None


def tool_rates(records, out: Path, workers: int):
    """(steady images/s, start-up excluded; images/s of the whole run; start-up seconds) of the proposal tool.

    The steady window starts when every worker has delivered its first chunk (results of one chunk
    arrive together; the first burst's size is the chunk) and ends with the last result.
    """
    import tqdm.auto

    saved, tqdm.auto.tqdm = tqdm.auto.tqdm, _Arrivals
    try:
        t0 = time.perf_counter()
        res = make_proposals(records, out, workers=workers, progress=True)
    finally:
        tqdm.auto.tqdm = saved
    t = np.array(_Arrivals.times)
    if len(t) != len(records):
        raise RuntimeError(f"recorded {len(t)} of {len(records)} results: the proposal tool no longer reports "
                           f"progress through tqdm.auto.tqdm; update tool_rates")
    chunk = int(np.sum(t - t[0] < 0.05))
    k = min(workers * chunk, len(t) - 1)
    steady = (len(t) - k) / max(t[-1] - t[k - 1], 1e-9)
    startup = max(t[0] - t0 - chunk * workers / steady, 0.0)
    return steady, res["images_per_s"], startup


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", help="image folder (default: scikit-image photos at COCO sizes, JPEG)")
    p.add_argument("--samples", type=int, default=200, help="samples timed for the per-sample cost")
    p.add_argument("--batch", type=int, default=32, help="collator batch size")
    p.add_argument("--proposal-images", type=int, default=8,
                   help="N: images of the bare OpenCV timing; the tool runs on max(3N, 12 x workers) copies")
    p.add_argument("--workers", type=int, default=2, help="workers of the parallel runs")
    p.add_argument("--repeats", type=int, default=2, help="interleaved repeats of the proposal timings (best kept)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the per-sample timings (best kept)")
    args = p.parse_args()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    cfg = load_recipe(recipe_file(RECIPE)).data
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.images:
            folder = Path(args.images)
        else:
            (tmp / "imgs").mkdir()
            folder = coco_like_images(tmp / "imgs")
        records = folder_records(folder)[: max(args.proposal_images, 1)]
        paths = [r.path for r in records]
        tool_images = copies(records, tmp / "copies", max(3 * len(records), 12 * args.workers))
        make_proposals(records, tmp / "props.safetensors", workers=1, progress=False)  # for the views
        bare, one, many = 0.0, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0)
        for r in range(args.repeats):  # interleaved, best of each: load from other processes only slows
            bare = max(bare, bare_opencv(paths))
            one = max(one, tool_rates(tool_images, tmp / f"one{r}.safetensors", 1))
            many = max(many, tool_rates(tool_images, tmp / f"many{r}.safetensors", args.workers))
        dataset = build_pretrain_dataset(cfg, folder, tmp / "props.safetensors", seed=0, records=records)
        floor, reduced, own, full, picked = bench_samples(dataset, cfg, args.samples, args.batch, args.rounds)
        rate1 = loader_rate(dataset, cfg, args.samples, args.batch, 1)
        rate_n = loader_rate(dataset, cfg, args.samples, args.batch, args.workers)
    load_after = os.getloadavg()
    per_core = 1 / full
    lo, hi = ASSUMED_GPU_IMAGES_PER_S
    where = folder if args.images else "scikit-image photos at COCO sizes 640x480 / 640x427 (JPEG)"
    print(f"images: {len(records)} from {where}; "
          f"views of {RECIPE}: {cfg.image_size}/{cfg.image_size}/{cfg.small_size} px")
    print(f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after, on {os.cpu_count()} cores: "
          f"{'NOT idle, ratios below are lower bounds' if max(load_before[0], load_after[0]) > 0.5 else 'idle'}")
    share = ", ".join(f"1/{f}: {c / args.samples:.0%}" for f, c in picked.items())
    print(f"per-sample floor (decode + 3 INTER_AREA resizes): {floor * 1e3:7.2f} ms CPU "
          f"(best of {args.rounds} interleaved rounds)")
    print(f"per-sample floor, 1/2 decode:           {reduced * 1e3:7.2f} ms   ({reduced / floor:4.2f}x the floor; "
          f"a 1/2 decode would enlarge x1 or x2 below {2 * cfg.image_size} px in most samples)")
    print(f"package's decode + resizes:             {own * 1e3:7.2f} ms   ({own / floor:4.2f}x the floor; decodes "
          f"picked per crop: {share}; two-step area resize)")
    print(f"per-sample full sample + uint8 collate:  {full * 1e3:7.2f} ms   ratio {full / floor:5.2f}x  "
          f"[target <= 1.3x]; the augmentations, masks and collate cost {(full - own) * 1e3:.2f} ms over the "
          f"package's own decode + resizes ({full / own:.2f}x)")
    print(f"samples/s per core (one thread):         {per_core:7.1f}")
    print(f"cores per GPU at an assumed {lo}-{hi} images/s (R50-C4 D3SSL, bf16; not measured, no GPU): "
          f"{lo / per_core:.0f}-{hi / per_core:.0f}")
    print(f"DataLoader 1 worker:                     {rate1:7.1f} samples/s")
    print(f"DataLoader {args.workers} workers:                    {rate_n:7.1f} samples/s   speed-up "
          f"{rate_n / rate1:5.2f}x  [target >= 1.8x on idle cores]")
    n, m = len(records), len(tool_images)
    print(f"proposals bare OpenCV (1 process):       {bare:7.2f} img/s   ({n} images)")
    print(f"proposals tool, 1 worker:                {one[0]:7.2f} img/s   overhead "
          f"{(bare / one[0] - 1) * 100:+5.1f}%  [target <= 5%]   (steady rate over {m} images)")
    print(f"proposals tool, {args.workers} workers:               {many[0]:7.2f} img/s   speed-up "
          f"{many[0] / one[0]:5.2f}x  [target >= 1.7x]   (steady rate, worker start-up excluded)")
    print(f"  whole runs of {m} images, start-up included: 1 worker {one[1]:.2f} img/s, {args.workers} workers "
          f"{many[1]:.2f} img/s ({many[1] / one[1]:.2f}x): starting {args.workers} spawned workers (each imports "
          f"torch and the package) took ~{many[2]:.1f} s")


if __name__ == "__main__":
    main()
