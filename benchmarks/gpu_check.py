"""One-GPU check of the R50-C4 pre-training recipes before anyone pays for a run.

    python benchmarks/gpu_check.py                                # one GPU; planned to take under 8 minutes
    python benchmarks/gpu_check.py --out $OUT/gpu_check.json      # where the JSON goes (default runs/gpu_check.json)
    python benchmarks/gpu_check.py --batch 128                    # SoCo's per-GPU batch (C4 setting): does it fit?
    python benchmarks/gpu_check.py --device cpu --quick           # smoke test of this script on CPU, tiny sizes
    python benchmarks/gpu_check.py dataset.source=/data/coco/annotations/instances_train2017.json \
        dataset.proposals=/data/coco/proposals_train2017.safetensors       # key=value recipe overrides

Its GPU numbers are pending (docs/benchmarks.md). Without CUDA it stops with an error unless
``--device cpu`` is asked for explicitly.

The methods are built as training builds them: the shipped recipes ``d3ssl_r50c4.coco_800ep`` and
``soco_r50c4.coco_800ep`` read with the engine's recipe loader, ``build_method``, LARS with the
recipe's parameter groups, one step = forward under autocast, backward, LARS step, teacher EMA,
with the recipe's learning-rate and momentum schedules squeezed into the steps run here (one
optimiser step per batch, learning rate scaled to that batch). The data are the generated scene
set (``dataset.source=scenes``, offline, built on first use: about 2 minutes on a 2-core CPU) read through
the training dataset, sampler and collator at the recipes' view sizes (224 / 112 px, K = 4
proposals). For each method it measures

1. compute throughput: steps/s and images/s at per-GPU batch 64 in bf16 on one real batch kept on
   the device, in the default (NCHW) and in channels_last memory format, and the peak memory;
2. the real-data run: ``--steps`` steps (default 100) fed by a DataLoader with real workers (one
   per CPU core but one), in the faster format: the loss curve (every value must be finite), the
   share of the wall time spent waiting for the next batch (all steps, and in steady state:
   without the warm-up steps and the first batch of each epoch, where the sampler starts over), and
   the images/s the step reaches with that data;

and, from the compute throughput, the GPU-hour bill of each shipped COCO recipe of the same method
and views (epochs x 118,287 train2017 images / images/s; a lower bound that holds only if the data
pipeline keeps up, see the data-wait share). The scene images are 160 px PNGs, cheaper to decode
than COCO's 640 px JPEGs, so the data-wait share here is a lower bound too
(``benchmarks/bench_pipeline.py`` measures the per-sample cost on 640 px JPEGs). The numbers are
printed and written as JSON to ``--out``. The exit status is 1 if a loss was not finite.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

import d3ssl_zoo
from d3ssl_zoo.data import PretrainCollator, build_pretrain_dataset, prepare_batch, pretrain_loader
from d3ssl_zoo.engine import EpochShuffleSampler, build_method, load_recipe
from d3ssl_zoo.method import LARS, lars_param_groups, lr_at, momentum_at, scaled_lr
from d3ssl_zoo.tags import recipe_file, recipes_dir

RECIPES = {"d3ssl": "d3ssl_r50c4.coco_800ep", "soco": "soco_r50c4.coco_800ep"}
COCO_TRAIN2017_IMAGES = 118_287
DATA_OVERRIDES = ("dataset.source=scenes", "dataset.proposals=null")
# --quick: a ResNet-18-C4 on 64 px views of a tiny scene set, seconds on a CPU (tests/test_gpu_check.py)
QUICK_OVERRIDES = ("model.name=d3ssl_r18c4", "data.image_size=64", "data.small_size=32", "method.roi_size=4",
                   "method.roi_size_small=2", "method.proj_hidden_dim=64", "method.pred_hidden_dim=64",
                   "method.queue_size=64")
QUICK_DATA_OVERRIDES = ("dataset.source=scenes:num_pretrain=8,num_train=24,num_val=6,image_size=96,"
                        "object_size=40-56,seed=2", "dataset.proposals=null")
CHANNELS_LAST_HELPS = 1.02  # speed-up above which channels_last counts as helping


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu; cpu runs only when asked for")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes (ResNet-18-C4, 64 px views, 8-image scene set, batch 2, 2 steps, 1 timed step "
                        "per format) to smoke-test the script")
    p.add_argument("--batch", type=int, help="per-device batch (default 64; 2 with --quick)")
    p.add_argument("--steps", type=int, help="steps of the real-data run and its loss curve (default 100; 2 with "
                                             "--quick)")
    p.add_argument("--timed-steps", type=int, help="timed steps per memory format (default 30; 1 with --quick)")
    p.add_argument("--warmup", type=int, help="untimed steps before timing, and steps left out of the steady "
                                              "data-wait share (default 5; 0 with --quick)")
    p.add_argument("--workers", type=int, help="DataLoader workers (default: CPU cores available - 1, at least 1)")
    p.add_argument("--precision", choices=("bf16", "no"), default="bf16")
    p.add_argument("--methods", nargs="+", choices=sorted(RECIPES), default=sorted(RECIPES))
    p.add_argument("--out", type=Path, default=Path("runs/gpu_check.json"), help="JSON file written with the numbers")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="recipe overrides for both methods (the data: dataset.source=..., dataset.proposals=...)")
    args = p.parse_args(argv)
    small = args.quick
    for name, full, quick in (("batch", 64, 2), ("steps", 100, 2), ("timed_steps", 30, 1), ("warmup", 5, 0)):
        if getattr(args, name) is None:
            setattr(args, name, quick if small else full)
        if getattr(args, name) < (0 if name == "warmup" else 1):
            p.error(f"--{name.replace('_', '-')} must be >= {0 if name == 'warmup' else 1}, got {getattr(args, name)}")
    if args.workers is None:
        args.workers = max(1, len(os.sched_getaffinity(0)) - 1)
    return args


def check_device(name: str) -> torch.device:
    """The device to run on; no CUDA when CUDA is asked for is an error that says what to do."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device is available (torch.cuda.is_available() is False). Run it on a "
                         "machine with a GPU; to smoke-test the script on CPU with tiny sizes, run "
                         "`python benchmarks/gpu_check.py --device cpu --quick`")
    if device.type not in ("cuda", "cpu"):
        raise SystemExit(f"gpu_check: --device must be cuda, cuda:N or cpu, got {name!r}")
    return device


class Run:
    """One method built from its recipe as the trainer builds it, with its optimiser and schedules."""

    def __init__(self, recipe, device: torch.device, memory_format: torch.memory_format, precision: str,
                 total_steps: int, batch: int):
        torch.manual_seed(recipe.train.seed)
        backbone = d3ssl_zoo.create_model(recipe.model.name, pretrained=False, **recipe.model.kwargs())
        self.method = build_method(recipe, backbone).to(device=device, memory_format=memory_format).train()
        self.optimizer = LARS(lars_param_groups(self.method, recipe.optim.weight_decay), lr=0.0,
                              momentum=recipe.optim.momentum, eta=recipe.optim.eta)
        self.recipe, self.device, self.memory_format = recipe, device, memory_format
        self.dtype = torch.bfloat16 if precision == "bf16" else None
        self.total_steps = total_steps
        self.warmup_steps = max(1, round(total_steps * recipe.optim.warmup_epochs / recipe.train.epochs))
        self.peak_lr = scaled_lr(recipe.optim.base_lr, batch, recipe.optim.base_batch)
        self.step_index = 0

    def to_device(self, batch: dict) -> dict:
        """The collated batch moved as the engine moves it, then prepared (normalised views, x3) there."""
        batch = prepare_batch({k: v.to(self.device, non_blocking=True) for k, v in batch.items()},
                              self.recipe.data.mean, self.recipe.data.std)
        return {k: v.contiguous(memory_format=self.memory_format) if v.dim() == 4 else v for k, v in batch.items()}

    def step(self, batch: dict) -> torch.Tensor:
        """One training step as the engine runs it; returns the detached loss (on the device)."""
        r, s = self.recipe, min(self.step_index, self.total_steps - 1)
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(s, self.total_steps, self.warmup_steps, self.peak_lr, r.optim.final_lr)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            out = self.method(batch)
        out["loss"].backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.method.momentum_update(momentum_at(s, self.total_steps, r.method.momentum_base,
                                                r.method.momentum_final))
        self.step_index += 1
        return out["loss"].detach()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def measure_compute(recipe, batch: dict, device, memory_format, args) -> dict:
    """Steps/s and images/s on one batch kept on the device (no data loading), and peak memory."""
    reset_peak_memory(device)
    run = Run(recipe, device, memory_format, args.precision, args.warmup + args.timed_steps, args.batch)
    on_device = run.to_device(batch)
    for _ in range(args.warmup):
        run.step(on_device)
    synchronize(device)
    tic = time.perf_counter()
    losses = [run.step(on_device) for _ in range(args.timed_steps)]
    synchronize(device)
    seconds = time.perf_counter() - tic
    result = {"steps_per_s": args.timed_steps / seconds, "images_per_s": args.timed_steps * args.batch / seconds,
              "step_ms": 1000 * seconds / args.timed_steps, "peak_memory_gib": peak_memory_gib(device),
              "loss_finite": bool(torch.isfinite(torch.stack(losses)).all())}
    del run, on_device
    return result


def epochs_of_batches(loader, sampler: EpochShuffleSampler, dataset):
    """``(first_of_epoch, batch)`` forever, epoch after epoch, as the engine iterates its loader."""
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        for i, batch in enumerate(loader):
            yield i == 0, batch
        epoch += 1


def measure_real_data(recipe, dataset, device, memory_format, args) -> dict:
    """The loss curve and data-wait share of ``args.steps`` steps fed by DataLoader workers."""
    sampler = EpochShuffleSampler(len(dataset), recipe.train.seed)
    loader = pretrain_loader(dataset, recipe.data, args.batch, sampler, args.workers, pin_memory=device.type == "cuda")
    if len(loader) == 0:
        raise SystemExit(f"gpu_check: the data source has {len(dataset)} images, fewer than one batch of "
                         f"{args.batch}; give a larger dataset.source=... or a smaller --batch")
    reset_peak_memory(device)
    run = Run(recipe, device, memory_format, args.precision, args.steps, args.batch)
    batches = epochs_of_batches(loader, sampler, dataset)
    losses, waits, walls, restarts = [], [], [], []
    for _ in range(args.steps):
        tic = time.perf_counter()
        first_of_epoch, batch = next(batches)
        waited = time.perf_counter() - tic
        losses.append(run.step(run.to_device(batch)).item())  # .item() waits for the step, as a sync
        walls.append(time.perf_counter() - tic)
        waits.append(waited)
        restarts.append(first_of_epoch)
    del batches, loader  # stops the (persistent) workers
    steady = [i for i in range(args.warmup, args.steps) if not restarts[i]]
    share = lambda idx: sum(waits[i] for i in idx) / max(sum(walls[i] for i in idx), 1e-12)  # noqa: E731
    finite = all(math.isfinite(v) for v in losses)
    head = losses[:max(1, len(losses) // 10)]
    tail = losses[-max(1, len(losses) // 10):]
    result = {"steps": args.steps, "memory_format": _format_name(memory_format),
              "data_wait_share": share(range(args.steps)),
              "data_wait_share_steady": share(steady) if steady else None,
              "data_wait_ms_per_step": 1000 * sum(waits) / args.steps,
              "step_ms": 1000 * sum(walls) / args.steps,
              "images_per_s": args.batch * args.steps / sum(walls),
              "epoch_restarts": sum(restarts), "peak_memory_gib": peak_memory_gib(device),
              "loss_finite": finite, "loss_first_tenth_mean": sum(head) / len(head),
              "loss_last_tenth_mean": sum(tail) / len(tail), "loss": losses}
    del run
    return result


def _format_name(memory_format: torch.memory_format) -> str:
    return "channels_last" if memory_format == torch.channels_last else "contiguous"


def gpu_hour_bill(measured, images_per_s: dict[str, float]) -> dict[str, dict]:
    """Compute-bound GPU-hours of each shipped COCO recipe whose method and views were measured."""
    bill = {}
    for path in sorted(recipes_dir().glob("*_r50c4.coco_*.yaml")):
        r = load_recipe(path)
        m = measured.get(r.method.name)
        if m is None or r.data.depositioning != m.data.depositioning or r.data.views != m.data.views:
            continue
        ips = images_per_s[r.method.name]
        hours = r.train.epochs * COCO_TRAIN2017_IMAGES / ips / 3600
        bill[r.tag] = {"epochs": r.train.epochs, "images_per_s": ips, "gpu_hours": hours,
                       "hours_on_8_gpus": hours / 8}
    return bill


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = check_device(args.device)
    start = time.perf_counter()
    overrides = (list(QUICK_OVERRIDES + QUICK_DATA_OVERRIDES if args.quick else DATA_OVERRIDES) + list(args.overrides)
                 + [f"train.batch_size={args.batch}", f"train.mixed_precision={args.precision}"])
    recipes = {name: load_recipe(recipe_file(RECIPES[name]), overrides) for name in args.methods}

    tic = time.perf_counter()
    datasets = {name: build_pretrain_dataset(r.data, r.dataset.source, r.dataset.proposals, seed=r.train.seed)
                for name, r in recipes.items()}
    data_ready_s = time.perf_counter() - tic
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "precision": args.precision, "batch_per_device": args.batch,
              "quick": args.quick, "source": next(iter(recipes.values())).dataset.source,
              "num_workers": args.workers,
              "recipes": {name: RECIPES[name] for name in recipes}, "overrides": overrides,
              "data_ready_s": data_ready_s, "compute": {}, "real_data": {}}
    print(f"gpu_check on {report['device']}, {args.precision}, batch {args.batch}, {args.workers} data workers; "
          f"data ready in {data_ready_s:.0f} s")

    for name, recipe in recipes.items():
        dataset = datasets[name]
        collate = PretrainCollator(recipe.data)
        batch = collate([dataset[i % len(dataset)] for i in range(args.batch)])
        formats = {}
        for memory_format in (torch.contiguous_format, torch.channels_last):
            formats[_format_name(memory_format)] = r = measure_compute(recipe, batch, device, memory_format, args)
            print(f"{name:6s} {_format_name(memory_format):13s} {r['steps_per_s']:7.2f} steps/s "
                  f"{r['images_per_s']:8.1f} images/s  {r['step_ms']:8.1f} ms/step  peak "
                  + (f"{r['peak_memory_gib']:.1f} GiB" if r["peak_memory_gib"] is not None else "n/a (cpu)"))
        speedup = formats["channels_last"]["images_per_s"] / formats["contiguous"]["images_per_s"]
        best = torch.channels_last if speedup > CHANNELS_LAST_HELPS else torch.contiguous_format
        report["compute"][name] = {**formats, "channels_last_speedup": speedup,
                                   "channels_last_helps": speedup > CHANNELS_LAST_HELPS,
                                   "best_images_per_s": max(f["images_per_s"] for f in formats.values())}
        print(f"{name:6s} channels_last speed-up x{speedup:.2f}: "
              f"{'helps' if speedup > CHANNELS_LAST_HELPS else 'does not help'}")

        real = measure_real_data(recipe, dataset, device, best, args)
        report["real_data"][name] = real
        steady = real["data_wait_share_steady"]
        print(f"{name:6s} real data ({real['memory_format']}, {args.workers} workers, {real['steps']} steps): "
              f"{real['images_per_s']:.1f} images/s, data wait {100 * real['data_wait_share']:.1f}% of the step "
              f"(steady {'n/a' if steady is None else f'{100 * steady:.1f}%'}, {real['epoch_restarts']} epoch "
              f"restart(s)); loss {real['loss_first_tenth_mean']:.3f} -> {real['loss_last_tenth_mean']:.3f}, "
              f"{'all finite' if real['loss_finite'] else 'NOT FINITE'}")

    report["bill"] = gpu_hour_bill(recipes, {n: c["best_images_per_s"] for n, c in report["compute"].items()})
    for tag, b in report["bill"].items():
        print(f"bill {tag}: {b['epochs']} epochs x {COCO_TRAIN2017_IMAGES} images at {b['images_per_s']:.0f} "
              f"images/s = {b['gpu_hours']:.0f} GPU-hours ({b['hours_on_8_gpus']:.1f} h on 8 GPUs, compute-bound)")
    report["all_losses_finite"] = all(r["loss_finite"] for r in report["real_data"].values()) and all(
        f["loss_finite"] for c in report["compute"].values() for f in (c["contiguous"], c["channels_last"]))
    report["elapsed_s"] = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"elapsed {report['elapsed_s']:.0f} s; numbers written to {args.out}")
    return report


if __name__ == "__main__":
    if not main()["all_losses_finite"]:
        sys.exit("gpu_check: a loss was not finite (see the loss values above and in the JSON)")
