"""Speed of the zoo's forward paths, measured side by side in one run (ratios, not seconds).

    python benchmarks/bench_models.py [--reps 5] [--boxes 64] [--threads N]

1. ``d3ssl_r50c4`` forward vs timm ``resnet50`` forward (same weights, same input)   target <= 1.02
2. ``forward_regions`` (64 boxes, one 224 image) vs a naive per-box crop -> resize 224 ->
   C4 -> res5 -> pool (~4.7x the FLOPs)                                                  target >= 4x faster
3. ``forward_regions`` vs its floor: one C4 pass + res5 on one batch of 64 14x14 maps     target <= 1.1x
4. ``forward_regions_c5`` (64 boxes) vs one plain ``forward_features``                   target <= 1.1x

Timings alternate between the compared paths inside every repetition so machine load hits
both alike; each number is the median over repetitions.
"""
from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch
import torch.nn.functional as F

import d3ssl_zoo


def median_times(fns, reps):
    times = [[] for _ in fns]
    for fn in fns:
        fn()  # warm-up
    for _ in range(reps):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def random_boxes(n, size, gen):
    xy = torch.rand(n, 2, generator=gen) * size * 0.7
    wh = (torch.rand(n, 2, generator=gen) * 0.6 + 0.1) * size
    return torch.cat([xy, (xy + wh).clamp(max=size)], 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--boxes", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4, help="batch for the plain-forward comparison")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)

    ours = d3ssl_zoo.create_model("d3ssl_r50c4").eval()
    ref = timm.create_model("resnet50", num_classes=0).eval()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(args.batch, 3, 224, 224, generator=gen)
    img = x[:1]
    boxes = random_boxes(args.boxes, 224, gen)
    rows = []
    with torch.inference_mode():
        t_ours, t_ref = median_times([lambda: ours(x), lambda: ref(x)], args.reps)
        rows.append(("d3ssl_r50c4 / timm resnet50 forward", t_ours, t_ref, t_ours / t_ref, "<= 1.02"))

        def naive():
            outs = []
            for b in boxes.round().long().tolist():
                x1, y1, x2, y2 = b
                crop = img[:, :, y1:max(y2, y1 + 1), x1:max(x2, x1 + 1)]
                crop = F.interpolate(crop, size=(224, 224), mode="bilinear", align_corners=False)
                outs.append(ours.forward_region_head(ours.forward_c4(crop)))
            return torch.cat(outs)

        rois = d3ssl_zoo.boxes_to_rois([boxes], 1)
        roi_maps = d3ssl_zoo.region_align(ours.forward_c4(img), rois, 14, ours.c4_stride)

        def floor():
            ours.forward_c4(img)
            return ours.forward_region_head(roi_maps)

        t_reg, t_naive, t_floor = median_times(
            [lambda: ours.forward_regions(img, [boxes]), naive, floor], args.reps)
        rows.append((f"naive per-box / forward_regions ({args.boxes} boxes)", t_naive, t_reg, t_naive / t_reg, ">= 4"))
        rows.append(("forward_regions / floor (C4 + res5 on 64 maps)", t_reg, t_floor, t_reg / t_floor, "<= 1.1"))

        t_c5, t_plain = median_times([lambda: ours.forward_regions_c5(img, [boxes]),
                                      lambda: ours.forward_features(img)], args.reps)
        rows.append((f"forward_regions_c5 ({args.boxes} boxes) / forward_features", t_c5, t_plain, t_c5 / t_plain,
                     "<= 1.1"))

    print(f"torch {torch.__version__}, {args.threads} threads, median of {args.reps} reps")
    print(f"{'comparison':55s} {'A (s)':>8s} {'B (s)':>8s} {'A/B':>7s}  target")
    for name, a, b, r, target in rows:
        print(f"{name:55s} {a:8.4f} {b:8.4f} {r:7.3f}  {target}")


if __name__ == "__main__":
    main()
