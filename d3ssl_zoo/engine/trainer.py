"""The pre-training loop on Accelerate (single process, multi-GPU DDP, multi-node; bf16/fp16).

Plain PyTorch around ``accelerator.prepare`` / ``backward`` / ``save_state`` / ``load_state``:
the method module (``d3ssl_zoo.method``) knows nothing about the engine. One step: move the batch,
forward (Eq. 10), NaN guard, backward, LARS step, teacher EMA, log, maybe checkpoint.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from accelerate import Accelerator
from accelerate.utils import (
    DataLoaderConfiguration,
    DistributedDataParallelKwargs,
    ProjectConfiguration,
    is_wandb_available,
    set_seed,
)
from torch import nn
from torch.utils.data import Sampler
from tqdm.auto import tqdm

import d3ssl_zoo
from d3ssl_zoo.checkpoint import (
    STATE_FILE,
    WorkersIgnorePreemption,
    check_output_dir,
    check_shared_folder,
    claim_run_folder,
    decide_on_main,
    load_checkpoint,
    preemption_requested,
    resolve_resume,
    save_checkpoint,
)
from d3ssl_zoo.data import build_pretrain_dataset, pretrain_loader, source_records
from d3ssl_zoo.disk import DiskFullError, is_disk_full, is_unwritable, unwritable
from d3ssl_zoo.method import D3SSL, LARS, SoCo, lars_param_groups, lr_at, momentum_at, scaled_lr

from .config import ADDED_KEYS, REPLACED_KEYS, Recipe, recipe_to_dict, resumable_keys
from .device import apply_device_settings

__all__ = ["DATA_BOUND", "EpochShuffleSampler", "NonFiniteLossError", "Preempted", "TrainResult",
           "accumulation_steps", "build_method", "check_shared_memory", "sample_bytes", "train"]

logger = logging.getLogger(__name__)

EXPORT_DIR = "export"
SHM = Path("/dev/shm")
#: waiting for batches above this fraction of the step time makes a run data-bound
DATA_BOUND = 0.2


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped before the weights were touched."""


class Preempted(Exception):
    """SIGTERM or SIGUSR1 reached a process (:func:`~d3ssl_zoo.checkpoint.stop_on_first_signal` with
    ``preemption=True``): every rank stopped after the same step and ``checkpoint`` holds it."""

    def __init__(self, checkpoint: Path, step: int, total_steps: int) -> None:
        super().__init__(f"preempted: stopped after step {step}/{total_steps}, checkpoint {checkpoint}")
        self.checkpoint, self.step, self.total_steps = checkpoint, step, total_steps


def _preemption_agreed(accelerator: Accelerator) -> bool:
    """Whether any rank received a preemption signal; every rank gets the same answer, so all stop at the same
    step. One process reads its own flag without a device sync."""
    asked = preemption_requested() is not None
    if accelerator.num_processes == 1:
        return asked
    flag = torch.tensor([int(asked)], device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="sum").item())


class EpochShuffleSampler(Sampler[tuple[int, int]]):
    """A random permutation per epoch, a pure function of ``(seed, epoch)``, yielding ``(epoch, index)``.

    The epoch travels with every index, so a sample's random views are a function of (seed, epoch,
    index) even in data workers that outlive an epoch (persistent workers never see a
    ``dataset.set_epoch`` made in the main process). Accelerate shards the batches across processes;
    resuming at (epoch, batch) replays the same order, so a resumed run sees exactly the samples an
    uninterrupted run would have seen.
    """

    def __init__(self, num_samples: int, seed: int) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter([(self.epoch, i) for i in torch.randperm(self.num_samples, generator=g).tolist()])


@dataclass
class TrainResult:
    output_dir: Path
    export_dir: Path
    last_checkpoint: Path
    step: int
    total_steps: int
    method: nn.Module  # the trained method module (student, teacher, queue), unwrapped


def accumulation_steps(global_batch: int | None, micro_batch: int, num_processes: int) -> int:
    """Micro-batches each process accumulates per optimiser step to reach the recipe's global batch.

    ``global_batch=None``: no accumulation (the global batch is ``micro_batch x num_processes``).
    A global batch the launch cannot reach exactly is an error that names the fixes.
    """
    if global_batch is None:
        return 1
    per_step = micro_batch * num_processes
    if global_batch % per_step:
        fits = [b for b in range(micro_batch, 0, -1) if global_batch % (b * num_processes) == 0]
        hint = (f"set train.batch_size={fits[0]} (the largest micro-batch that divides it)" if fits else
                "launch on a number of processes that divides it")
        raise ValueError(
            f"train.global_batch={global_batch} (the recipe's) cannot be reached with {num_processes} process(es) "
            f"x micro-batches of train.batch_size={micro_batch}: it is not a multiple of {per_step}. "
            f"{hint.capitalize()}, "
            f"or override train.global_batch (that changes the recipe's optimisation)")
    return global_batch // per_step


def sample_bytes(cfg: Any) -> int:
    """Bytes of one collated pre-training sample of the data config ``cfg`` (a recipe's ``data``), as the
    :class:`~d3ssl_zoo.data.PretrainCollator` ships it through shared memory: uint8 views x1, x2 (and x2-s),
    float32 boxes, with ``depositioning`` the bool masks ``m``, ``m_hat``, the int64 shift ``t`` (Eq. 6-7) and the
    boxes of the ``dp_proposals`` proposals in x3, and with SoCo's pairing by id the int64 proposal ids of each view."""
    big, small, k = cfg.image_size ** 2, cfg.small_size ** 2, cfg.num_proposals
    d3ssl = cfg.views == "d3ssl"
    total = 3 * (2 * big + (small if d3ssl else 0)) + 16 * k * (3 if d3ssl else 2) + 8  # + image_id
    if cfg.depositioning:
        n = cfg.dp_proposals if 0 < cfg.dp_proposals < k else k
        total += 2 * big + 16 + 16 * n  # m, m_hat, t, boxes3
    if not d3ssl and cfg.soco_pairing == "id":
        total += 2 * 8 * k  # proposal_ids1, proposal_ids2
    return total


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def check_shared_memory(cfg: Any, micro_batch: int, num_workers: int, prefetch_factor: int,
                        processes_here: int, shm: Path = SHM) -> None:
    """Data workers hand their batches to the training process through ``/dev/shm``; a container's default
    (Docker: 64 MiB) is far below what ``num_workers x prefetch_factor`` batches in flight per process take, and
    running out kills a worker mid-epoch with a bus error. Checked at start-up against the free space there;
    nothing to check without workers or without ``/dev/shm``."""
    if num_workers == 0 or not shm.is_dir():
        return
    batch = sample_bytes(cfg) * micro_batch
    need = batch * num_workers * prefetch_factor * processes_here
    free = shutil.disk_usage(shm).free
    if need > free:
        raise ValueError(
            f"the data loader needs {_size(need)} of shared memory ({processes_here} process(es) on this machine x "
            f"train.num_workers={num_workers} x {prefetch_factor} prefetched batches x {_size(batch)} per batch of "
            f"{micro_batch} images) but {shm} has {_size(free)} free. Give the container more (docker run "
            f"--shm-size={-(-need * 5 // 4 // 2 ** 30)}g; Kubernetes: an emptyDir volume with medium: Memory mounted "
            f"at {shm}), or lower train.num_workers or train.batch_size (docs/training.md, \"Containers\")")


def _data_bound_line(fraction: float, per_step: float, step: int, num_workers: int) -> str:
    """The verdict on the data pipeline printed once, early in the run (:data:`DATA_BOUND`)."""
    head = (f"step {step}: waiting for batches took {fraction:.0%} of the step time "
            f"({per_step * 1000:.0f} ms per step, logged as data_wait)")
    if fraction > DATA_BOUND:
        return (f"{head}: the run is data-bound. Raise train.num_workers (now {num_workers}) if the CPUs allow, "
                f"or move the images to faster storage (docs/training.md, \"Data-bound runs\")")
    return f"{head}: not data-bound"


def build_method(recipe: Recipe, backbone: nn.Module) -> nn.Module:
    """The method module of ``recipe.method.name`` around ``backbone``."""
    m = recipe.method
    if m.name == "d3ssl":
        return D3SSL(backbone, proj_hidden_dim=m.proj_hidden_dim, proj_dim=m.proj_dim, tau=m.tau,
                     queue_size=m.queue_size, depositioning=recipe.data.depositioning,
                     roi_size=m.roi_size, roi_size_small=m.roi_size_small, queue_seed=recipe.train.seed,
                     bn_groups=m.bn_groups)
    return SoCo(backbone, proj_hidden_dim=m.proj_hidden_dim, proj_dim=m.proj_dim,
                pred_hidden_dim=m.pred_hidden_dim, roi_size=m.roi_size)


def data_fingerprint(dataset: Any) -> str:
    """What identifies a run's data whatever its path: a SHA-256 over ``(file_name, width, height)`` of every
    image, in the order the sampler indexes them (so the same images in another order differ too), the sizes
    those of the proposal file."""
    rows = [(r.file_name, *dataset.proposals.image_size(r.image_id)) for r in dataset.records]
    return f"{len(rows)} images, sha256 " + hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def _tracker_config(recipe: Recipe) -> dict[str, Any]:
    """Flat scalar config for the trackers (TensorBoard's hparams take scalars and strings only)."""
    flat: dict[str, Any] = {}

    def walk(d: dict, prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                flat[prefix + k] = v if isinstance(v, (int, float, str, bool)) else str(v)
    walk(recipe_to_dict(recipe), "")
    return flat


def _accelerator(recipe: Recipe, output_dir: Path) -> Accelerator:
    tracker = recipe.train.tracker
    if tracker == "wandb" and not is_wandb_available():
        raise ValueError("train.tracker=wandb needs the wandb package (pip install wandb); "
                         "or use train.tracker=tensorboard")
    # Launched as several processes on a machine without GPUs, Accelerate must be told to use CPU (gloo);
    # otherwise every process silently trains alone.
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    accelerator = Accelerator(
        cpu=world_size > 1 and not torch.cuda.is_available(),
        # the queue is identical on every process by construction and SyncBN keeps BN statistics in step:
        # broadcasting all buffers (a 64 MB queue) before every forward would only cost time
        kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
        # batches come from pinned memory (pin_memory on CUDA): the copy overlaps the step
        dataloader_config=DataLoaderConfiguration(non_blocking=True),
        mixed_precision=recipe.train.mixed_precision,
        log_with=None if tracker == "none" else tracker,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
    )
    if accelerator.num_processes != world_size:
        raise RuntimeError(f"launched as {world_size} processes but Accelerate runs {accelerator.num_processes}: "
                           f"an Accelerate state was created before train() without cpu=True; create none, "
                           f"or create it with PartialState(cpu=True) on machines without GPUs")
    return accelerator


def _export(accelerator: Accelerator, method: nn.Module, recipe: Recipe, output_dir: Path, step: int,
            total_steps: int, steps_per_epoch: int, last_ckpt: Path | None) -> Path:
    export_dir = output_dir / EXPORT_DIR
    if accelerator.is_main_process:
        backbone = accelerator.unwrap_model(method).backbone
        try:
            d3ssl_zoo.save_pretrained(backbone, export_dir, model_name=recipe.model.name, card_extra={
                "recipe": recipe.tag, "data": recipe.dataset.source, "steps": step,
                "epochs": round(step / steps_per_epoch, 3), "planned_steps": total_steps})
        except OSError as e:
            kept = (f"the trained state is in the checkpoint {last_ckpt}; the same command run again resumes "
                    f"there and only writes the export")
            if is_disk_full(e, output_dir):
                raise DiskFullError(export_dir, kept) from e
            if is_unwritable(e):
                raise unwritable(e, export_dir, kept, f"Make {export_dir} writable and run it") from e
            raise
    accelerator.wait_for_everyone()
    return export_dir


def train(recipe: Recipe, output_dir: str | Path, resume: str | None = None) -> TrainResult:
    """Pre-train ``recipe`` into ``output_dir`` (checkpoints, logs, and the exported backbone).

    ``resume``: ``None`` (fresh), ``'auto'`` (the newest checkpoint of ``output_dir`` if any) or a
    checkpoint folder. Raises :class:`NonFiniteLossError` if the loss stops being finite.

    Before anything else the main process checks that ``output_dir`` can be written and locks it for this
    run (:func:`~d3ssl_zoo.checkpoint.claim_run_folder`): a second run into it is refused. A destination that
    fills up or stops taking writes later raises :class:`~d3ssl_zoo.disk.DiskFullError` or
    :class:`~d3ssl_zoo.disk.UnwritableError`, saying which checkpoint is intact.
    """
    output_dir = Path(output_dir)
    accelerator = _accelerator(recipe, output_dir)
    with claim_run_folder(accelerator, output_dir, subfolders=("checkpoints", "logs", EXPORT_DIR)):
        check_shared_folder(accelerator, output_dir)  # several nodes: checkpoints need one folder seen by all
        return _train(accelerator, recipe, output_dir, resume)


def _train(accelerator: Accelerator, recipe: Recipe, output_dir: Path, resume: str | None) -> TrainResult:
    set_seed(recipe.train.seed)
    recipe_dict = recipe_to_dict(recipe)

    def resume_point() -> tuple[Path | None, dict[str, Any], list[str]]:
        found = resolve_resume(resume, output_dir)
        saved = json.loads((found / STATE_FILE).read_text()) if found is not None else {}
        may_change = resumable_keys()
        if "data_fingerprint" not in saved:  # written before data was recognised by content: by path then
            may_change = [k for k in may_change if not k.startswith("dataset.")]
        # never mix two runs in one folder; settings that do not change the result may differ
        changes = check_output_dir(output_dir, recipe_dict, found, may_change=may_change, added=ADDED_KEYS,
                                   replaced=REPLACED_KEYS)
        return found, saved, changes

    # one process decides which checkpoint to resume from, so ranks can never pick different ones
    ckpt, saved_state, changes = decide_on_main(accelerator, resume_point)
    for change in changes:
        accelerator.print(f"resuming with a changed setting that does not change the result: {change}")

    # one process reads the image list (COCO train2017's json is 450 MB) and builds any cache (sample dataset)
    records = decide_on_main(accelerator, lambda: source_records(recipe.data, recipe.dataset.source))
    with accelerator.main_process_first():
        dataset = build_pretrain_dataset(recipe.data, recipe.dataset.source, recipe.dataset.proposals,
                                         seed=recipe.train.seed, records=records)
    fingerprint = data_fingerprint(dataset)
    if saved_state.get("data_fingerprint", fingerprint) != fingerprint:
        raise ValueError(
            f"the data of {recipe.dataset.source} (proposals {recipe.dataset.proposals}) is not the data of the "
            f"checkpoint {ckpt}: {fingerprint}, the checkpoint's {saved_state['data_fingerprint']} (image names "
            f"and sizes, in order). A moved copy of the same data resumes; point dataset.source and "
            f"dataset.proposals at it, or start a new run in another --output-dir")
    nproc = accelerator.num_processes
    micro_batch = recipe.train.batch_size
    accum = accumulation_steps(recipe.train.global_batch, micro_batch, nproc)
    global_batch = micro_batch * nproc * accum
    sampler = EpochShuffleSampler(len(dataset), recipe.train.seed)
    loader = pretrain_loader(dataset, recipe.data, micro_batch, sampler, recipe.train.num_workers,
                             pin_memory=accelerator.device.type == "cuda")
    check_shared_memory(recipe.data, micro_batch, loader.num_workers, loader.prefetch_factor or 0,
                        int(os.environ.get("LOCAL_WORLD_SIZE", nproc)))
    if loader.num_workers > 0:  # a preempted run needs its workers until it reaches the step boundary
        loader.worker_init_fn = WorkersIgnorePreemption(loader.worker_init_fn)

    method = build_method(recipe, d3ssl_zoo.create_model(recipe.model.name, pretrained=False, **recipe.model.kwargs()))
    if nproc > 1 and recipe.method.sync_bn:
        if accelerator.device.type == "cpu":
            logger.warning("method.sync_bn: SyncBatchNorm needs GPUs; on CPU each process keeps its own "
                           "batch statistics")
        else:
            method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
    # memory format and cuDNN settings, shared with benchmarks/gpu_check.py; the batches follow the model's format
    prepare = apply_device_settings(recipe, method, accelerator.device)
    optimizer = LARS(lars_param_groups(method, recipe.optim.weight_decay), lr=0.0,
                     momentum=recipe.optim.momentum, eta=recipe.optim.eta)
    method, optimizer, loader = accelerator.prepare(method, optimizer, loader)

    # one optimiser step = `accum` micro-batches on each process; an epoch's last micro-batches that
    # cannot fill a global batch are dropped, as drop_last drops a partial batch
    steps_per_epoch = len(loader) // accum
    if steps_per_epoch == 0:
        raise ValueError(f"{len(dataset)} images give no full global batch of {global_batch} "
                         f"({nproc} process(es) x {accum} micro-batch(es) of {micro_batch}); "
                         f"lower train.global_batch and train.batch_size")
    total_steps = recipe.train.epochs * steps_per_epoch
    warmup_steps = round(recipe.optim.warmup_epochs * steps_per_epoch)
    peak_lr = scaled_lr(recipe.optim.base_lr, global_batch, recipe.optim.base_batch)
    layout = {"global_batch": global_batch, "num_processes": nproc, "accumulation": accum,
              "steps_per_epoch": steps_per_epoch}
    accelerator.print(f"global batch {global_batch} = {nproc} process(es) x {accum} accumulated micro-batch(es) "
                      f"x {micro_batch} images; {steps_per_epoch} steps per epoch, peak lr {peak_lr:.4g}")

    step = 0
    if ckpt is not None:
        # Another number of processes continues the run: its global batch and steps per epoch are the
        # recipe's, each step takes the same images (the sampler's order is a function of the seed and the
        # epoch), and nothing in a step draws from the per-process RNG states (views, BN shuffling and the
        # queue use their own seeded generators), so a rank without a saved state loses nothing.
        saved = {k: saved_state.get(k, 1 if k == "accumulation" else None) for k in layout}
        fixed = ("global_batch", "steps_per_epoch")
        if any(saved[k] != layout[k] for k in fixed):
            raise ValueError(
                f"checkpoint {ckpt} was written with {saved}; this run has {layout}. Resume with the same "
                f"train.batch_size and train.global_batch (the number of processes may change)")
        if saved != layout:
            accelerator.print(
                f"checkpoint {ckpt} was written by {saved['num_processes']} process(es) x {saved['accumulation']} "
                f"accumulated micro-batch(es); continuing with {nproc} x {accum}, the same global batch of "
                f"{global_batch}")
        state = load_checkpoint(accelerator, ckpt)
        step = state["step"]
        accelerator.print(f"resumed from {ckpt} at step {step}/{total_steps}")

    accelerator.init_trackers(recipe.tag.replace(".", "_"), config=_tracker_config(recipe))
    raw = accelerator.unwrap_model(method)
    last_ckpt = ckpt

    def checkpoint() -> Path:
        return save_checkpoint(accelerator, output_dir, {
            "step": step, "epoch": step // steps_per_epoch, "batch_in_epoch": step % steps_per_epoch,
            "total_steps": total_steps, **layout, "tag": recipe.tag, "data_fingerprint": fingerprint},
            recipe_dict, recipe.train.keep_last)

    # Loss values stay on the device between log intervals: no host sync inside a step. Finiteness is
    # checked at every log and before every checkpoint, so the last checkpoint is always a good one.
    names: list[str] = []
    sums = first_bad = None

    def check_and_reset() -> dict[str, float]:
        nonlocal sums
        totals = accelerator.reduce(sums, reduction="sum")
        means = dict(zip(names, (totals / max((step - tic_step) * nproc, 1)).tolist()))
        bad = [int(v) for v in accelerator.gather(first_bad.view(1)).tolist() if v >= 0]
        if bad:
            raise NonFiniteLossError(
                f"non-finite loss at step {min(bad)} (epoch {min(bad) // steps_per_epoch}); mean over steps "
                f"{tic_step}-{step - 1}: {means}. The updates from that step on are not saved; last good "
                f"checkpoint: {last_ckpt or 'none written yet'}. Lower optim.base_lr, use "
                f"train.mixed_precision=bf16 instead of fp16, or check the data; resume with --resume auto")
        sums = torch.zeros_like(sums)
        return means

    bar = tqdm(total=total_steps, initial=step, disable=not accelerator.is_local_main_process,
               desc=recipe.tag, dynamic_ncols=True)
    method.train()
    tic, tic_step, wait = time.perf_counter(), step, 0.0
    start_step, judged = step, False
    # No barrier on the way out of a failure: a process that raised must exit at once (the launcher
    # then stops the others), instead of waiting for processes that sit in the next collective.
    try:
        while step < total_steps:
            epoch = step // steps_per_epoch
            # The prepared loader re-sets its sampler's epoch from its own iteration counter on every
            # pass, and that counter restarts at 0 in a relaunched process: set it from the step.
            loader.set_epoch(epoch)
            skip = (step % steps_per_epoch) * accum
            batches = iter(accelerator.skip_first_batches(loader, skip) if skip else loader)
            for _ in range(step % steps_per_epoch, steps_per_epoch):
                lr = lr_at(step, total_steps, warmup_steps, peak_lr, recipe.optim.final_lr)
                momentum = momentum_at(step, total_steps, recipe.method.momentum_base, recipe.method.momentum_final)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                for i in range(accum):
                    # gradients are all-reduced once per step, on the last micro-batch
                    with accelerator.no_sync(method) if i < accum - 1 else contextlib.nullcontext():
                        # uint8 views and masks -> normalised views and x3 (Eq. 8), on the device
                        waited = time.perf_counter()  # host time only: no device sync
                        batch = next(batches)
                        wait += time.perf_counter() - waited
                        out = method(prepare(batch))
                        accelerator.backward(out["loss"] / accum)
                    values = torch.stack([out[k].detach().float() for k in sorted(out)]) / accum
                    if sums is None:
                        names = sorted(out)
                        sums = torch.zeros_like(values)
                        first_bad = torch.full((), -1, dtype=torch.long, device=values.device)
                    sums += values
                    newly_bad = ~torch.isfinite(values).all() & (first_bad < 0)
                    first_bad = torch.where(newly_bad, torch.full_like(first_bad, step), first_bad)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if not accelerator.optimizer_step_was_skipped:  # fp16: the scaler skipped an overflowing step
                    raw.momentum_update(momentum)  # teacher EMA after the student's update
                step += 1
                bar.update(1)
                due_ckpt = step % recipe.train.checkpoint_every == 0 or step == total_steps
                if step % recipe.train.log_every == 0 or due_ckpt:
                    elapsed = time.perf_counter() - tic
                    metrics = check_and_reset()
                    metrics.update(lr=lr, momentum=momentum,
                                   images_per_s=global_batch * (step - tic_step) / max(elapsed, 1e-9),
                                   data_wait=wait / max(elapsed, 1e-9))
                    # the first interval waits for the data workers to start: judge the next one
                    if not judged and (tic_step > start_step or step == total_steps):
                        accelerator.print(_data_bound_line(metrics["data_wait"], wait / (step - tic_step), step,
                                                           recipe.train.num_workers))
                        judged = True
                    if hasattr(raw, "queue"):
                        metrics["queue_fill"] = raw.queue.fill()
                    accelerator.log(metrics, step=step)
                    # the method's shortcut signal (top1_*, docs/training.md) beside the loss
                    bar.set_postfix(loss=f"{metrics['loss']:.3f}", lr=f"{lr:.3g}",
                                    **{k: f"{100 * v:.0f}%" for k, v in metrics.items() if k.startswith("top1_")})
                    tic, tic_step, wait = time.perf_counter(), step, 0.0
                if due_ckpt:
                    last_ckpt = checkpoint()
                if step < total_steps and _preemption_agreed(accelerator):
                    if not due_ckpt:
                        check_and_reset()  # the checkpoint written on the way out must be a good one
                        last_ckpt = checkpoint()
                    raise Preempted(last_ckpt, step, total_steps)
        export_dir = _export(accelerator, method, recipe, output_dir, step, total_steps, steps_per_epoch, last_ckpt)
        accelerator.wait_for_everyone()
    finally:
        bar.close()
        accelerator.end_training()
    return TrainResult(output_dir=output_dir, export_dir=export_dir, last_checkpoint=last_ckpt,
                       step=step, total_steps=total_steps, method=raw)
