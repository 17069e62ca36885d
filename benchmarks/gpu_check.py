"""GPU check of the R50-C4 pre-training recipes before anyone pays for a run: it measures the run that will happen.

    python benchmarks/gpu_check.py                                # one GPU (or two); planned to take under 8 minutes
    python benchmarks/gpu_check.py --out $OUT/gpu_check.json      # where the JSON goes (default runs/gpu_check.json)
    python benchmarks/gpu_check.py train.batch_size=64            # another per-GPU micro-batch than the recipe's
    python benchmarks/gpu_check.py --device cpu --quick           # smoke test of this script on CPU, tiny sizes
    python benchmarks/gpu_check.py dataset.source=/data/coco/annotations/instances_train2017.json \
        dataset.proposals=/data/coco/proposals_train2017.safetensors       # key=value recipe overrides

Its GPU numbers are pending (docs/benchmarks.md). Without CUDA it stops with an error unless
``--device cpu`` is asked for explicitly.

What is measured is what training runs. The methods are built from the shipped recipes
``d3ssl_r50c4.coco_800ep`` and ``soco_r50c4.coco_800ep`` as the trainer builds them (the engine's recipe
loader, ``build_method``, LARS with the recipe's parameter groups, and the engine's
``apply_device_settings``: the recipe's ``train.memory_format`` for weights and images, cuDNN's algorithm
search), with the recipe's settings by default:

* per-GPU micro-batch: ``train.batch_size`` (128 in the zoo recipes: their ``train.global_batch`` of 1024 on
  ``--gpus`` 8 GPUs, SoCo's C4 setting), with the accumulation the trainer would derive;
* learning rate: the peak of the recipe's schedule, ``optim.base_lr x global batch / optim.base_batch``
  (4.0 for 1024), which the run reaches after its warm-up epochs; the steps here hold it from the first
  step, with the recipe's LARS momentum, trust coefficient and weight decay, and the teacher momentum of
  the schedule at that step (``lr_at`` / ``momentum_at`` of ``d3ssl_zoo.method``);
* precision: ``train.mixed_precision`` (bf16); data workers: ``train.num_workers`` capped by the CPU
  cores available.

The data are the generated scene set (``dataset.source=scenes``, offline, built on first use: about 2
minutes on a 2-core CPU) read through the training dataset, sampler and collator at the recipes' view
sizes (224 / 112 px, K = 4 proposals). For each method it measures

1. the SyncBN synchronisations of a micro-batch: the method converted as the trainer converts it on
   several GPUs (``nn.SyncBatchNorm.convert_sync_batchnorm``), its SyncBN layers counted, and their calls in
   one forward counted with hooks (D3SSL-R50-C4: 5 region-encoder passes of 54 BN layers = 270);
2. peak memory and compute throughput at the recipe's per-GPU batch on one batch kept on the device, in
   the recipe's memory format; on CUDA out of memory the batch is halved until it fits, and the largest
   batch that fits is reported with the accumulation the run would need (``train.batch_size=...``);
3. the same in the other memory format, and whether ``train.memory_format=channels_last`` should be set;
4. the real-data run: ``--steps`` steps (default 100) fed by DataLoader workers, in the recipe's format:
   the loss curve at the recipe's peak learning rate (every value must be finite), the share of the
   wall time spent waiting for the next batch (all steps, and in steady state: without the warm-up steps
   and the first batch of each epoch, where the sampler starts over), and the images/s with that data;
5. with two or more GPUs: the step time of 2 processes in DDP with SyncBN (NCCL, spawned by
   ``torch.multiprocessing``), as the trainer wraps the method (``broadcast_buffers=False``).

The GPU-hour bill of each shipped COCO recipe of the same method and views is epochs x 118,287
train2017 images / images/s per GPU / 3600, and the hours on ``--gpus`` GPUs that divided by them. Its
images/s come from the 2-process DDP + SyncBN measurement where two GPUs are present; otherwise from
the one-GPU compute measurement, labelled as a lower bound that ignores the SyncBN synchronisation (the
count of item 1) and the gradient all-reduce. Both are compute-bound: they hold only if the data
pipeline keeps up (see the data-wait share). The scene images are 160 px PNGs, cheaper to decode than
COCO's 640 px JPEGs, so the data-wait share here is a lower bound too (``benchmarks/bench_pipeline.py``
measures the per-sample cost on 640 px JPEGs). The numbers are printed and written as JSON to ``--out``.
The exit status is 1 if a loss was not finite.

The 8-minute plan on one H100 (``--warmup 5 --timed-steps 30 --steps 100``): the scene set is built once
(about 2 minutes on 2 cores, less on more, then cached); per method one SyncBN-count forward of 2
images, 2 x 35 steps of compute timing and 100 real-data steps at batch 128, so 340 steps at batch 128
in all (410 with the 2-process DDP timing). The budget left for them, about 5 minutes after the data
and model set-up, holds a step of up to about 0.9 s. A D3SSL step of 128 images is roughly 15 TFLOP: a
224 px view through the C4 backbone and the layer4 head of its 4 regions is about 6.5 GMAC, a 112 px view
about 1.6; the student's x1, x2-s and x3 forward and backward, the teacher's x1 and x2 forward. A batch
that does not fit costs one more set of warm-up steps per halving.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, TypeVar

import torch
from torch import nn

import d3ssl_zoo
from d3ssl_zoo.data import PretrainCollator, build_pretrain_dataset, pretrain_loader
from d3ssl_zoo.engine import EpochShuffleSampler, accumulation_steps, build_method, load_recipe
from d3ssl_zoo.engine.device import apply_device_settings
from d3ssl_zoo.method import LARS, lars_param_groups, lr_at, momentum_at, scaled_lr
from d3ssl_zoo.tags import recipe_file, recipes_dir

RECIPES = {"d3ssl": "d3ssl_r50c4.coco_800ep", "soco": "soco_r50c4.coco_800ep"}
COCO_TRAIN2017_IMAGES = 118_287
DATA_OVERRIDES = ("dataset.source=scenes", "dataset.proposals=null")
# --quick: a ResNet-18-C4 on 64 px views of a tiny scene set at a global batch of 16 (2 per GPU on 8 GPUs),
# seconds on a CPU (tests/test_gpu_check.py)
QUICK_OVERRIDES = ("model.name=d3ssl_r18c4", "data.image_size=64", "data.small_size=32", "method.roi_size=4",
                   "method.roi_size_small=2", "method.proj_hidden_dim=64", "method.pred_hidden_dim=64",
                   "method.queue_size=64", "train.global_batch=16", "train.batch_size=2")
QUICK_DATA_OVERRIDES = ("dataset.source=scenes:num_pretrain=8,num_train=24,num_val=6,image_size=96,"
                        "object_size=40-56,seed=2", "dataset.proposals=null")
CHANNELS_LAST_HELPS = 1.02  # speed-up above which a memory format counts as faster
MEMORY_FORMAT_NAMES = ("contiguous", "channels_last")
T = TypeVar("T")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu; cpu runs only when asked for")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes (ResNet-18-C4, 64 px views, 8-image scene set, global batch 16 = 2 per GPU, "
                        "2 steps, 1 timed step per format) to smoke-test the script")
    p.add_argument("--gpus", type=int, default=8,
                   help="GPUs of the planned run (default 8, SoCo's C4 setting the recipes' global batch is "
                        "written for): sets the accumulation reported and the hours of the bill")
    p.add_argument("--batch", type=int,
                   help="per-GPU micro-batch (default: the recipe's train.batch_size; the same as "
                        "train.batch_size=N)")
    p.add_argument("--steps", type=int, help="steps of the real-data run and its loss curve (default 100; 2 with "
                                             "--quick)")
    p.add_argument("--timed-steps", type=int, help="timed steps per memory format (default 30; 1 with --quick)")
    p.add_argument("--warmup", type=int, help="untimed steps before timing, and steps left out of the steady "
                                              "data-wait share (default 5; 0 with --quick)")
    p.add_argument("--workers", type=int,
                   help="DataLoader workers (default: the recipe's train.num_workers, at most the CPU cores available)")
    p.add_argument("--precision", choices=("bf16", "fp16", "no"),
                   help="autocast precision (default: the recipe's train.mixed_precision)")
    p.add_argument("--methods", nargs="+", choices=sorted(RECIPES), default=sorted(RECIPES))
    p.add_argument("--out", type=Path, default=Path("runs/gpu_check.json"), help="JSON file written with the numbers")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="recipe overrides for both methods (the data: dataset.source=..., dataset.proposals=...)")
    args = p.parse_args(argv)
    small = args.quick
    for name, full, quick in (("steps", 100, 2), ("timed_steps", 30, 1), ("warmup", 5, 0)):
        if getattr(args, name) is None:
            setattr(args, name, quick if small else full)
    for name, least in (("steps", 1), ("timed_steps", 1), ("warmup", 0), ("gpus", 1), ("batch", 1),
                        ("workers", 0)):
        value = getattr(args, name)
        if value is not None and value < least:
            p.error(f"--{name.replace('_', '-')} must be >= {least}, got {value}")
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


@dataclasses.dataclass
class Plan:
    """The run a recipe makes on ``gpus`` GPUs: its layout and the optimiser settings at the peak of its schedule."""

    batch: int  # per-GPU micro-batch
    gpus: int
    accumulation: int
    global_batch: int
    peak_lr: float
    teacher_momentum: float  # of the teacher-momentum schedule at the step where the warm-up ends
    warmup_steps: int  # of the recipe's COCO run
    total_steps: int

    def describe(self, recipe) -> str:
        o = recipe.optim
        return (f"the recipe's peak lr {self.peak_lr:.4g} (optim.base_lr {o.base_lr:g} x global batch "
                f"{self.global_batch} / {o.base_batch}, reached after {o.warmup_epochs:g} warm-up epochs; held "
                f"from the first step here), LARS momentum {o.momentum:g}, eta {o.eta:g}, weight decay "
                f"{o.weight_decay:g}, teacher momentum {self.teacher_momentum:.6f}")


def plan_of(recipe, gpus: int, batch: int | None = None) -> Plan:
    """The layout the trainer derives on ``gpus`` GPUs (``accumulation_steps``) and the learning rate and teacher
    momentum of the recipe's schedule where its warm-up ends, on COCO train2017 (``lr_at`` there is the peak)."""
    batch = recipe.train.batch_size if batch is None else batch
    accum = accumulation_steps(recipe.train.global_batch, batch, gpus)
    global_batch = batch * gpus * accum
    steps_per_epoch = max(1, COCO_TRAIN2017_IMAGES // global_batch)
    total = recipe.train.epochs * steps_per_epoch
    warmup = round(recipe.optim.warmup_epochs * steps_per_epoch)
    peak = scaled_lr(recipe.optim.base_lr, global_batch, recipe.optim.base_batch)
    at = min(warmup, total - 1)
    return Plan(batch=batch, gpus=gpus, accumulation=accum, global_batch=global_batch,
                peak_lr=lr_at(at, total, warmup, peak, recipe.optim.final_lr),
                teacher_momentum=momentum_at(at, total, recipe.method.momentum_base, recipe.method.momentum_final),
                warmup_steps=warmup, total_steps=total)


def with_memory_format(recipe, name: str):
    """``recipe`` with ``train.memory_format=name`` (validated as a recipe is)."""
    return dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, memory_format=name))


class Run:
    """One method built from its recipe as the trainer builds it, with its optimiser, at a fixed learning rate
    and teacher momentum (``plan``). ``distributed``: converted to SyncBN (on CUDA, with ``method.sync_bn``) and
    wrapped in DDP as the trainer's Accelerate does (``broadcast_buffers=False``)."""

    def __init__(self, recipe, device: torch.device, precision: str, plan: Plan, distributed: bool = False):
        torch.manual_seed(recipe.train.seed)
        backbone = d3ssl_zoo.create_model(recipe.model.name, pretrained=False, **recipe.model.kwargs())
        method = build_method(recipe, backbone)
        self.sync_bn = distributed and recipe.method.sync_bn and device.type == "cuda"
        if self.sync_bn:
            method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
        self.prepare = apply_device_settings(recipe, method, device)
        self.method = method.to(device).train()
        self.optimizer = LARS(lars_param_groups(self.method, recipe.optim.weight_decay), lr=plan.peak_lr,
                              momentum=recipe.optim.momentum, eta=recipe.optim.eta)
        self.model = self.method
        if distributed:
            self.model = nn.parallel.DistributedDataParallel(
                self.method, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)
        self.device, self.plan = device, plan
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def to_device(self, batch: dict) -> dict:
        """The collated batch moved as the engine moves it, then prepared there (normalised views, x3, memory
        format) by the engine's function."""
        return self.prepare({k: v.to(self.device, non_blocking=True) for k, v in batch.items()})

    def step(self, batch: dict) -> torch.Tensor:
        """One training step as the engine runs it; returns the detached loss (on the device)."""
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            out = self.model(batch)
        self.scaler.scale(out["loss"]).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.method.momentum_update(self.plan.teacher_momentum)
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


def first(batch: dict, n: int) -> dict:
    """The first ``n`` images of a collated batch (every entry is indexed by image along dim 0)."""
    return {k: v[:n] for k, v in batch.items()}


def largest_batch_that_fits(try_batch: Callable[[int], T], batch: int) -> tuple[int, T, list[int]]:
    """``try_batch(batch)``, halving the batch after each CUDA out-of-memory error until a batch fits.

    Returns ``(the batch that fit, what try_batch returned for it, the batches that did not fit)``. The memory
    of a failed try is released (the exception is dropped, then the garbage collector and the CUDA caching
    allocator) before the next. A batch of 1 that does not fit re-raises the error."""
    too_big: list[int] = []
    while True:
        try:
            return batch, try_batch(batch), too_big
        except torch.cuda.OutOfMemoryError:
            if batch == 1:
                raise
            too_big.append(batch)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        batch //= 2


def fit_note(recipe, plan: Plan, fit: int, too_big: list[int]) -> dict:
    """What the run needs if the recipe's per-GPU batch does not fit: the largest batch that fits and the
    accumulation that keeps the recipe's global batch on ``plan.gpus`` GPUs (the trainer's rule)."""
    note = {"asked": plan.batch, "fits": fit, "too_big": too_big, "accumulation": plan.accumulation, "advice": None}
    if not too_big:
        return note
    try:
        accum = accumulation_steps(recipe.train.global_batch or plan.global_batch, fit, plan.gpus)
        note["accumulation"] = accum
        note["advice"] = (f"batch {plan.batch} per GPU does not fit: set train.batch_size={fit}, the run then "
                          f"accumulates {accum} micro-batches per step on {plan.gpus} GPUs (global batch "
                          f"{fit * accum * plan.gpus})")
    except ValueError as e:
        note["accumulation"] = None
        note["advice"] = f"batch {plan.batch} per GPU does not fit; {fit} does, but {e}"
    return note


def measure_compute(recipe, batch: dict, device, precision: str, plan: Plan, warmup: int, timed: int) -> dict:
    """Steps/s and images/s on one batch kept on the device (no data loading), and peak memory."""
    n = len(batch["x1"])
    reset_peak_memory(device)
    run = Run(recipe, device, precision, plan)
    on_device = run.to_device(batch)
    for _ in range(warmup):
        run.step(on_device)
    synchronize(device)
    tic = time.perf_counter()
    losses = [run.step(on_device) for _ in range(timed)]
    synchronize(device)
    seconds = time.perf_counter() - tic
    result = {"batch": n, "memory_format": recipe.train.memory_format, "steps_per_s": timed / seconds,
              "images_per_s": timed * n / seconds, "step_ms": 1000 * seconds / timed,
              "peak_memory_gib": peak_memory_gib(device),
              "loss_finite": bool(torch.isfinite(torch.stack(losses)).all())}
    del run, on_device, losses
    return result


def count_sync_bn(recipe, batch: dict, device: torch.device) -> dict:
    """SyncBN in one micro-batch of ``recipe``'s method, converted as the trainer converts it on several GPUs.

    ``layers``: its SyncBatchNorm modules; ``forward``: their calls in one forward (each synchronises the batch
    statistics across processes), counted with forward hooks on a forward of a few images of ``batch`` (as many
    as ``method.bn_groups`` needs; the count does not depend on the batch size); ``backward``: the calls whose
    layer is trained (the student's), which synchronise again in the backward. Without a process group
    SyncBatchNorm computes plain BatchNorm, so this runs on one device."""
    torch.manual_seed(recipe.train.seed)
    backbone = d3ssl_zoo.create_model(recipe.model.name, pretrained=False, **recipe.model.kwargs())
    method = nn.SyncBatchNorm.convert_sync_batchnorm(build_method(recipe, backbone))
    layers = [m for m in method.modules() if isinstance(m, nn.SyncBatchNorm)]
    calls = {"forward": 0, "backward": 0}

    def hook(module, inputs, output):
        calls["forward"] += 1
        calls["backward"] += bool(module.weight is not None and module.weight.requires_grad)

    handles = [m.register_forward_hook(hook) for m in layers]
    prepare = apply_device_settings(recipe, method, device)
    method.to(device).train()
    small = first(batch, max(2, recipe.method.bn_groups))
    with torch.no_grad():
        method(prepare({k: v.to(device) for k, v in small.items()}))
    for h in handles:
        h.remove()
    del method
    return {"layers": len(layers), **calls}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, recipe, batch: dict, precision: str, plan: Plan,
                warmup: int, timed: int, device_type: str, out: str) -> None:
    """One process of :func:`measure_ddp` (spawned by ``torch.multiprocessing``)."""
    import torch.distributed as dist

    device = torch.device(device_type, rank) if device_type == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=rank, world_size=world_size)
    try:
        reset_peak_memory(device)
        run = Run(recipe, device, precision, plan, distributed=True)
        on_device = run.to_device(batch)
        for _ in range(warmup):
            run.step(on_device)
        synchronize(device)
        dist.barrier()
        tic = time.perf_counter()
        losses = [run.step(on_device) for _ in range(timed)]
        synchronize(device)
        seconds = time.perf_counter() - tic
        finite = bool(torch.isfinite(torch.stack(losses)).all())
        n = len(batch["x1"])
        if rank == 0:
            Path(out).write_text(json.dumps({
                "processes": world_size, "backend": dist.get_backend(), "sync_bn": run.sync_bn, "batch": n,
                "memory_format": recipe.train.memory_format, "step_ms": 1000 * seconds / timed,
                "images_per_s": world_size * n * timed / seconds, "images_per_s_per_gpu": n * timed / seconds,
                "peak_memory_gib": peak_memory_gib(device), "loss_finite": finite}))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def measure_ddp(recipe, batch: dict, precision: str, plan: Plan, warmup: int, timed: int,
                device_type: str = "cuda", world_size: int = 2) -> dict:
    """Step time of ``world_size`` processes in DDP (NCCL on CUDA, gloo on CPU), each on its own device with
    ``batch``, the method converted to SyncBN as the trainer converts it (on CUDA, with ``method.sync_bn``)."""
    import torch.multiprocessing as mp

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # this process's cached blocks on GPU 0 would be missing to rank 0
    with tempfile.TemporaryDirectory(prefix="gpu_check_ddp_") as tmp:
        out = Path(tmp) / "ddp.json"
        mp.spawn(_ddp_worker, args=(world_size, _free_port(), recipe, batch, precision, plan, warmup, timed,
                                    device_type, str(out)), nprocs=world_size, join=True)
        return json.loads(out.read_text())


def bill_basis(ddp: dict | None, sync: dict, sync_bn: bool) -> str:
    """What the bill's images/s stand for: the DDP measurement, or one GPU's as a labelled lower bound."""
    if ddp is not None:
        return f"{ddp['processes']}-process DDP" + (" + SyncBN" if ddp["sync_bn"] else " (no SyncBN)")
    if not sync_bn:
        return "one-GPU lower bound: ignores the gradient all-reduce (method.sync_bn is off)"
    return (f"one-GPU lower bound: ignores SyncBN synchronisation ({sync['forward']} SyncBN layer calls synchronised "
            f"per micro-batch in the forward, {sync['backward']} in the backward) and the gradient all-reduce")


def memory_format_advice(speedup: float, recipe_format: str) -> str:
    """``speedup``: channels_last images/s over contiguous; what to set ``train.memory_format`` to."""
    if speedup > CHANNELS_LAST_HELPS:
        verb = "keep" if recipe_format == "channels_last" else "set"
        return f"channels_last is {100 * (speedup - 1):.0f}% faster: {verb} train.memory_format=channels_last"
    if 1 / speedup > CHANNELS_LAST_HELPS:
        verb = "keep" if recipe_format == "contiguous" else "set"
        return (f"channels_last does not help (contiguous is {100 * (1 / speedup - 1):.0f}% faster): "
                f"{verb} train.memory_format=contiguous")
    return (f"channels_last does not help (x{speedup:.2f}, within {100 * (CHANNELS_LAST_HELPS - 1):.0f}%): "
            f"keep train.memory_format={recipe_format}")


def epochs_of_batches(loader, sampler: EpochShuffleSampler, dataset):
    """``(first_of_epoch, batch)`` forever, epoch after epoch, as the engine iterates its loader."""
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        for i, batch in enumerate(loader):
            yield i == 0, batch
        epoch += 1


def measure_real_data(recipe, dataset, device, precision: str, plan: Plan, batch_size: int, workers: int,
                      steps: int, warmup: int) -> dict:
    """The loss curve and data-wait share of ``steps`` steps fed by DataLoader workers."""
    sampler = EpochShuffleSampler(len(dataset), recipe.train.seed)
    loader = pretrain_loader(dataset, recipe.data, batch_size, sampler, workers, pin_memory=device.type == "cuda")
    if len(loader) == 0:
        raise SystemExit(f"gpu_check: the data source has {len(dataset)} images, fewer than one batch of "
                         f"{batch_size}; give a larger dataset.source=... or a smaller train.batch_size")
    reset_peak_memory(device)
    run = Run(recipe, device, precision, plan)
    batches = epochs_of_batches(loader, sampler, dataset)
    losses, waits, walls, restarts = [], [], [], []
    for _ in range(steps):
        tic = time.perf_counter()
        first_of_epoch, batch = next(batches)
        waited = time.perf_counter() - tic
        losses.append(run.step(run.to_device(batch)).item())  # .item() waits for the step, as a sync
        walls.append(time.perf_counter() - tic)
        waits.append(waited)
        restarts.append(first_of_epoch)
    del batches, loader  # stops the (persistent) workers
    steady = [i for i in range(warmup, steps) if not restarts[i]]
    share = lambda idx: sum(waits[i] for i in idx) / max(sum(walls[i] for i in idx), 1e-12)  # noqa: E731
    finite = all(math.isfinite(v) for v in losses)
    head = losses[:max(1, len(losses) // 10)]
    tail = losses[-max(1, len(losses) // 10):]
    result = {"steps": steps, "batch": batch_size, "num_workers": workers, "memory_format": recipe.train.memory_format,
              "lr": plan.peak_lr, "teacher_momentum": plan.teacher_momentum,
              "data_wait_share": share(range(steps)),
              "data_wait_share_steady": share(steady) if steady else None,
              "data_wait_ms_per_step": 1000 * sum(waits) / steps,
              "step_ms": 1000 * sum(walls) / steps,
              "images_per_s": batch_size * steps / sum(walls),
              "epoch_restarts": sum(restarts), "peak_memory_gib": peak_memory_gib(device),
              "loss_finite": finite, "loss_first_tenth_mean": sum(head) / len(head),
              "loss_last_tenth_mean": sum(tail) / len(tail), "loss": losses}
    del run
    return result


def gpu_hour_bill(measured: dict, images_per_s: dict[str, float], basis: dict[str, str], gpus: int) -> dict:
    """GPU-hours of each shipped COCO recipe whose method and views were measured, at the measured images/s per
    GPU, and the hours on ``gpus`` GPUs; ``basis`` says per method what the images/s stand for."""
    bill = {}
    for path in sorted(recipes_dir().glob("*_r50c4.coco_*.yaml")):
        r = load_recipe(path)
        m = measured.get(r.method.name)
        if m is None or r.data.depositioning != m.data.depositioning or r.data.views != m.data.views:
            continue
        ips = images_per_s[r.method.name]
        hours = r.train.epochs * COCO_TRAIN2017_IMAGES / ips / 3600
        bill[r.tag] = {"epochs": r.train.epochs, "images_per_s_per_gpu": ips, "gpu_hours": hours, "gpus": gpus,
                       "hours": hours / gpus, "basis": basis[r.method.name]}
    return bill


def _gib(value: float | None) -> str:
    return "n/a (cpu)" if value is None else f"{value:.1f} GiB"


def check_method(name: str, recipe, dataset, device, args, distributed: bool) -> dict:
    """Every measurement of one method (items 1-5 of the module docstring)."""
    plan = plan_of(recipe, args.gpus)
    precision = args.precision or recipe.train.mixed_precision
    workers = args.workers if args.workers is not None else min(recipe.train.num_workers,
                                                                len(os.sched_getaffinity(0)))
    collate = PretrainCollator(recipe.data)
    full = collate([dataset[i % len(dataset)] for i in range(plan.batch)])
    fmt = recipe.train.memory_format
    print(f"{name:6s} plan: {plan.batch} images per GPU x {plan.accumulation} accumulated x {plan.gpus} GPUs = global "
          f"batch {plan.global_batch}; {precision}, train.memory_format={fmt}, {workers} data workers")

    sync = count_sync_bn(recipe, full, device)
    print(f"{name:6s} SyncBN on several GPUs: {sync['layers']} layers, {sync['forward']} synchronised calls per "
          f"micro-batch in the forward, {sync['backward']} more in the backward")

    def try_batch(b: int) -> dict:
        return measure_compute(recipe, first(full, b), device, precision, plan, args.warmup, args.timed_steps)

    fit, measured, too_big = largest_batch_that_fits(try_batch, plan.batch)
    fits = fit_note(recipe, plan, fit, too_big)
    if fits["advice"]:
        print(f"{name:6s} {fits['advice']}")
    other = "channels_last" if fmt == "contiguous" else "contiguous"
    formats = {fmt: measured}
    try:
        formats[other] = measure_compute(with_memory_format(recipe, other), first(full, fit), device, precision,
                                         plan, args.warmup, args.timed_steps)
    except torch.cuda.OutOfMemoryError:
        formats[other] = None
        gc.collect()
        torch.cuda.empty_cache()
    for f_name in MEMORY_FORMAT_NAMES:
        r = formats[f_name]
        if r is None:
            print(f"{name:6s} {f_name:13s} out of memory at batch {fit}")
            continue
        print(f"{name:6s} {f_name:13s} batch {r['batch']}: {r['steps_per_s']:7.2f} steps/s {r['images_per_s']:8.1f} "
              f"images/s {r['step_ms']:8.1f} ms/step  peak {_gib(r['peak_memory_gib'])}"
              + ("  (the recipe's format)" if f_name == fmt else ""))
    if formats[other] is None:
        speedup, advice = None, f"{other} ran out of memory at batch {fit}: keep train.memory_format={fmt}"
    else:
        speedup = formats["channels_last"]["images_per_s"] / formats["contiguous"]["images_per_s"]
        advice = memory_format_advice(speedup, fmt)
    print(f"{name:6s} {advice}")

    ddp = None
    if distributed:
        ddp = measure_ddp(recipe, first(full, fit), precision, plan, args.warmup, args.timed_steps)
        print(f"{name:6s} {ddp['processes']}-process DDP{' + SyncBN' if ddp['sync_bn'] else ''} ({ddp['backend']}): "
              f"{ddp['step_ms']:.1f} ms/step, {ddp['images_per_s_per_gpu']:.1f} images/s per GPU, peak "
              f"{_gib(ddp['peak_memory_gib'])}")

    print(f"{name:6s} real-data loss curve at {plan.describe(recipe)}")
    real = measure_real_data(recipe, dataset, device, precision, plan, fit, workers, args.steps, args.warmup)
    steady = real["data_wait_share_steady"]
    print(f"{name:6s} real data ({real['memory_format']}, batch {fit}, {workers} workers, {real['steps']} steps): "
          f"{real['images_per_s']:.1f} images/s, data wait {100 * real['data_wait_share']:.1f}% of the step "
          f"(steady {'n/a' if steady is None else f'{100 * steady:.1f}%'}, {real['epoch_restarts']} epoch "
          f"restart(s)); loss {real['loss_first_tenth_mean']:.3f} -> {real['loss_last_tenth_mean']:.3f}, "
          f"{'all finite' if real['loss_finite'] else 'NOT FINITE'}")
    basis = bill_basis(ddp, sync, recipe.method.sync_bn)
    return {"recipe": RECIPES[name], "plan": dataclasses.asdict(plan), "precision": precision,
            "memory_format": fmt, "num_workers": workers, "fits": fits, "sync_bn": sync, "compute": formats,
            "channels_last_speedup": speedup, "memory_format_advice": advice, "ddp": ddp, "real_data": real,
            "bill_images_per_s_per_gpu": ddp["images_per_s_per_gpu"] if ddp else measured["images_per_s"],
            "bill_basis": basis}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = check_device(args.device)
    start = time.perf_counter()
    overrides = (list(QUICK_OVERRIDES + QUICK_DATA_OVERRIDES if args.quick else DATA_OVERRIDES) + list(args.overrides)
                 + ([f"train.batch_size={args.batch}"] if args.batch else []))
    recipes = {name: load_recipe(recipe_file(RECIPES[name]), overrides) for name in args.methods}
    distributed = device.type == "cuda" and torch.cuda.device_count() >= 2

    tic = time.perf_counter()
    datasets = {name: build_pretrain_dataset(r.data, r.dataset.source, r.dataset.proposals, seed=r.train.seed)
                for name, r in recipes.items()}
    data_ready_s = time.perf_counter() - tic
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "devices": torch.cuda.device_count() if device.type == "cuda" else 1,
              "torch": torch.__version__, "quick": args.quick, "gpus": args.gpus,
              "source": next(iter(recipes.values())).dataset.source, "overrides": overrides,
              "data_ready_s": data_ready_s, "methods": {}}
    print(f"gpu_check on {report['device']} ({report['devices']} device(s)); data ready in {data_ready_s:.0f} s")
    for name, recipe in recipes.items():
        report["methods"][name] = check_method(name, recipe, datasets[name], device, args, distributed)
    # after apply_device_settings: the settings training runs with
    report["cudnn"] = {"benchmark": torch.backends.cudnn.benchmark, "allow_tf32": torch.backends.cudnn.allow_tf32,
                       "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32}

    m = report["methods"]
    report["bill"] = gpu_hour_bill(recipes, {n: c["bill_images_per_s_per_gpu"] for n, c in m.items()},
                                   {n: c["bill_basis"] for n, c in m.items()}, args.gpus)
    for tag, b in report["bill"].items():
        print(f"bill {tag}: {b['epochs']} epochs x {COCO_TRAIN2017_IMAGES} images at {b['images_per_s_per_gpu']:.0f} "
              f"images/s per GPU = {b['gpu_hours']:.0f} GPU-hours ({b['hours']:.1f} h on {b['gpus']} GPUs, "
              f"compute-bound; {b['basis']})")
    report["all_losses_finite"] = all(
        c["real_data"]["loss_finite"] and all(f["loss_finite"] for f in c["compute"].values() if f is not None)
        and (c["ddp"] is None or c["ddp"]["loss_finite"]) for c in m.values())
    report["elapsed_s"] = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"elapsed {report['elapsed_s']:.0f} s; numbers written to {args.out}")
    return report


if __name__ == "__main__":
    if not main()["all_losses_finite"]:
        sys.exit("gpu_check: a loss was not finite (see the loss values above and in the JSON)")
