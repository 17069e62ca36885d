"""Detection fine-tuning without detectron2 (paper §5 "Setting"), on Accelerate.

One process, several GPUs (DDP with SyncBN) or several nodes; AMP through Accelerate's
``mixed_precision``. Checkpoints (model, optimizer, RNG states, step) are the package's checkpoint
folders (``d3ssl_zoo.checkpoint``), as in pre-training: atomic, verified and loaded without unpickling code, with the
same guard against mixing runs in one output folder as pre-training. A resumed run is bit-identical
to an uninterrupted one (docs/transfer.md): the learning rate and the position in the data are
functions of the step, each epoch's batches (:class:`~.sampler.GroupedShardedBatchSampler`: grouped by aspect
ratio, sharded across processes) of (seed, epoch) and each flip of (seed, epoch, index), and the checkpoint's RNG
states are those the detector's sampling draws from next. The annotations are read once, on the main process, and
sent to the others; the COCO ground truth stays on the main process, which scores. The loop never waits for the
device between log lines: the losses are summed on the device and read, with a non-finite check over all
processes, at each log line and checkpoint. Evaluation is separate from training:
``evaluate_detector`` runs the test split and hands the predictions to the VOC or COCO evaluator.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch
from safetensors import SafetensorError
from torch import nn
from torch.utils.data import DataLoader

from d3ssl_zoo.checkpoint import check_output_dir, decide_on_main, load_checkpoint, resolve_resume, save_checkpoint
from d3ssl_zoo.data.coco_json import format_read, no_skips
from d3ssl_zoo.disk import DiskFullError, is_disk_full, is_unwritable, unwritable

from .data import DetectionDataset, collate_detection, read_coco, read_voc_splits
from .evaluate import coco_results, evaluate_coco, evaluate_voc
from .model import build_c4_detector
from .recipe import DetRecipe, lr_factor
from .sampler import GroupedShardedBatchSampler, aspect_groups

__all__ = ["TaskData", "param_groups", "precise_bn", "evaluate_detector", "finetune",
           "RESUMABLE_CHANGES"]

# Recipe keys a resumed run may change: they do not alter the steps already taken.
RESUMABLE_CHANGES = ("max_iter", "checkpoint_period", "keep_last", "log_period", "num_workers", "eval_ims_per_batch")


class TaskData:
    """Train/test records of one task, plus what its evaluator needs; ``train_skips`` / ``test_skips``
    count what the readers left out (the keys of :data:`d3ssl_zoo.data.coco_json.SKIP_REASONS`)."""

    def __init__(self, recipe: DetRecipe, data_dir: Path):
        self.task = recipe.task
        data_dir = Path(data_dir)
        if recipe.task == "voc":
            self.train_skips, self.test_skips = no_skips(), no_skips()
            self.train = read_voc_splits(data_dir, [tuple(s) for s in recipe.voc_train], self.train_skips)
            self.test = read_voc_splits(data_dir, [tuple(recipe.voc_test)], self.test_skips)
            self.coco_gt, self.category_ids = None, None
        else:
            ann, images = recipe.coco_train
            train = read_coco(data_dir / ann, data_dir / images, train=True)
            ann, images = recipe.coco_test
            test = read_coco(data_dir / ann, data_dir / images, train=False)
            if train.category_ids != test.category_ids:
                raise ValueError("COCO train and test annotation files have different category ids")
            self.train, self.train_skips = train.images, train.skips
            self.test, self.test_skips = test.images, test.skips
            self.category_ids, self.coco_gt = test.category_ids, test.coco
        n_classes = 20 if recipe.task == "voc" else len(self.category_ids)
        if n_classes != recipe.num_classes:
            raise ValueError(f"recipe num_classes {recipe.num_classes} but the {recipe.task} data has {n_classes}")
        if not self.train:
            raise ValueError(f"no training images found under {data_dir}")

    @classmethod
    def read_on_main(cls, recipe: DetRecipe, data_dir: Path, accelerator) -> "TaskData":
        """Read once, on the main process, and sent to the others (an error stops every process); the COCO
        ground truth (``coco_gt``) is kept on the main process only, where the test split is scored."""
        kept = {}

        def read() -> TaskData:
            data = cls(recipe, data_dir)
            kept["coco_gt"], data.coco_gt = data.coco_gt, None
            return data

        data = decide_on_main(accelerator, read)
        data.coco_gt = kept.get("coco_gt")
        return data

    def summary(self, split: str) -> str:
        """What the reader of ``split`` ('train' or 'test') kept and skipped, in one line."""
        records, skips = (self.train, self.train_skips) if split == "train" else (self.test, self.test_skips)
        return format_read(len(records), sum(len(r.objects.labels) for r in records), skips)


def param_groups(model: nn.Module, weight_decay: float, weight_decay_norm: float) -> List[Dict[str, object]]:
    """SGD groups: norm-layer parameters get ``weight_decay_norm`` (detectron2: 0), the rest ``weight_decay``."""
    norm_types = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
    norm, other = [], []
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if p.requires_grad:
                (norm if isinstance(module, norm_types) else other).append(p)
    return [{"params": other, "weight_decay": weight_decay}, {"params": norm, "weight_decay": weight_decay_norm}]


@torch.no_grad()
def precise_bn(model: nn.Module, batches: Iterable, num_iter: int, run: Callable[[object], object]) -> int:
    """Replace BatchNorm running statistics by their true average over ``num_iter`` batches.

    detectron2's PreciseBN (``TEST.PRECISE_BN``, enabled in MoCo's detection configs): the
    EMA statistics of a still-moving network are recomputed before testing. ``run(batch)``
    makes one forward pass in training mode. Returns the number of batches used.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None        # cumulative average over the batches seen
    was_training = model.training
    model.train()
    n = 0
    for batch in batches:
        if n >= num_iter:
            break
        run(batch)
        n += 1
    for bn, m in zip(bns, momenta):
        bn.momentum = m
    model.train(was_training)
    return n


def _resume_point(recipe: Dict[str, object], output_dir: Path, resume: Optional[str]) -> Optional[Path]:
    """The checkpoint to resume from (``None``: fresh), after refusing to mix runs in ``output_dir``."""
    ckpt = resolve_resume(resume, output_dir)
    if resume is not None and ckpt is None:
        raise FileNotFoundError(f"--resume {resume}: no complete checkpoint under {output_dir / 'checkpoints'}")
    check_output_dir(output_dir, recipe, ckpt, may_change=RESUMABLE_CHANGES)
    return ckpt


@torch.no_grad()
def evaluate_detector(detector: nn.Module, data: TaskData, recipe: DetRecipe, accelerator) -> Dict[str, object]:
    """Predict the test split on every process, gather, and score on the main process."""
    from accelerate.utils import gather_object

    ds = DetectionDataset(data.test, train=False)
    loader = accelerator.prepare_data_loader(DataLoader(
        ds, batch_size=recipe.eval_ims_per_batch, collate_fn=collate_detection, num_workers=recipe.num_workers))
    detector.eval()
    payload: List[Tuple[int, object]] = []
    for images, targets in loader:
        for out, t in zip(detector(images), targets):
            idx = int(t["index"])
            pred = {"boxes": out["boxes"].float().cpu().numpy(), "scores": out["scores"].float().cpu().numpy(),
                    "labels": (out["labels"] - 1).cpu().numpy()}
            if data.task == "coco":
                if recipe.mask_on:   # binarise on the device: full-image masks are large
                    pred["masks"] = (out["masks"] >= 0.5).cpu().numpy()
                payload.append((idx, coco_results({data.test[idx].image_id: pred}, data.category_ids)))
            else:
                payload.append((idx, pred))
    gathered = dict(gather_object(payload))     # keyed by index: drops the padding duplicates
    if not accelerator.is_main_process:
        return {}
    if data.task == "voc":
        preds = {data.test[i].image_id: p for i, p in gathered.items()}
        return {"bbox": evaluate_voc(preds, data.test, use_07_metric=recipe.voc_07_metric)}
    results = [r for i in sorted(gathered) for r in gathered[i]]
    iou_types = ("bbox", "segm") if recipe.mask_on else ("bbox",)
    per_type = {}
    # bbox AP from the boxes; segm AP from the masks alone (areas from the masks, as detectron2).
    drop = {"bbox": "segmentation", "segm": "bbox"}
    for iou_type in iou_types:
        rs = [{k: v for k, v in r.items() if k != drop[iou_type]} for r in results]
        per_type.update(evaluate_coco(data.coco_gt, rs, (iou_type,), image_ids=[r.image_id for r in data.test]))
    return per_type


class _LossMeter:
    """The losses of the steps since the last log line, summed on the device: nothing waits for the device
    until :meth:`check` or :meth:`read`, called at log lines and checkpoints."""

    def __init__(self, device: torch.device, max_iter: int):
        self.none_bad = max_iter + 1
        self.sums: Dict[str, torch.Tensor] = {}
        self.steps = 0
        self.first_bad = torch.tensor(self.none_bad, device=device)   # first step with a non-finite loss

    def add(self, step: int, losses: Dict[str, torch.Tensor], loss: torch.Tensor) -> None:
        for k, v in losses.items():
            self.sums[k] = self.sums.get(k, 0) + v.detach().float()
        self.steps += 1
        bad = ~torch.isfinite(loss.detach())
        self.first_bad = torch.where(bad, torch.clamp(self.first_bad, max=step), self.first_bad)

    def check(self, accelerator) -> None:
        """Raise ``FloatingPointError`` on every process when the loss of any process was not finite."""
        first_bad = int(accelerator.gather(self.first_bad[None]).min())
        if first_bad < self.none_bad:
            raise FloatingPointError(
                f"the training loss was not finite (nan or inf) at step {first_bad} on at least one process; "
                f"the weights are no longer usable and no checkpoint was written after it. Check the annotations "
                f"of the training images, or start a new run with a lower base_lr or a longer warmup_iters")

    def read(self, accelerator) -> Dict[str, float]:
        """Each loss averaged over the steps since the last read and over the processes; then starts again."""
        names = list(self.sums)
        means = accelerator.reduce(torch.stack([self.sums[k] for k in names]) / self.steps, "mean").tolist()
        self.sums, self.steps = {}, 0
        reduced = dict(zip(names, means))
        return {"loss": sum(reduced.values()), **reduced}


def finetune(recipe: DetRecipe, model_spec: str, data_dir: Path, output_dir: Path, *, resume: Optional[str] = None,
             evaluate: bool = True, log: Optional[Callable[[str], None]] = None) -> Dict[str, object]:
    """Fine-tune a zoo/timm/torchvision backbone as an R50-C4 detector on ``recipe.task``.

    ``resume``: ``None`` (fresh: ``output_dir`` must hold no checkpoints), ``'auto'`` (the newest intact
    checkpoint of ``output_dir``) or a checkpoint folder. Returns ``{"step", "losses" (last logged),
    "metrics"}``; writes ``metrics.json``, ``model.safetensors`` (the whole detector) and
    ``checkpoints/step_*`` under ``output_dir``.
    """
    from accelerate import Accelerator

    # Several processes on a machine without GPUs must be told to use the CPU (gloo backend).
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    acc = Accelerator(cpu=world_size > 1 and not torch.cuda.is_available(), mixed_precision=recipe.mixed_precision)
    try:
        return _finetune(acc, recipe, model_spec, Path(data_dir), Path(output_dir), resume, evaluate,
                         log or acc.print)
    finally:
        # every process takes its process group down itself: one left to the interpreter's exit can abort
        # ("terminate called without an active exception") while another process is still writing
        acc.end_training()


def _finetune(acc, recipe: DetRecipe, model_spec: str, data_dir: Path, output_dir: Path, resume: Optional[str],
              evaluate: bool, log: Callable[[str], None]) -> Dict[str, object]:
    from accelerate.utils import set_seed

    import d3ssl_zoo

    set_seed(recipe.seed)
    output_dir = Path(output_dir)
    if recipe.ims_per_batch % acc.num_processes:
        raise ValueError(f"ims_per_batch {recipe.ims_per_batch} must be divisible by the {acc.num_processes} processes")
    run_recipe = json.loads(json.dumps({**asdict(recipe), "model": model_spec}))  # as recipe.yaml reads back
    ckpt = decide_on_main(acc, lambda: _resume_point(run_recipe, output_dir, resume))
    data = TaskData.read_on_main(recipe, data_dir, acc)
    log(f"[finetune_det] {recipe.task} train: {data.summary('train')}; test: {data.summary('test')}")

    trunk = d3ssl_zoo.load_backbone(model_spec)
    detector = build_c4_detector(trunk, recipe.detector_config())
    if recipe.sync_bn and acc.num_processes > 1:
        if acc.device.type == "cpu":   # torch's SyncBatchNorm runs on accelerators only
            log("[finetune_det] sync_bn: SyncBatchNorm needs GPUs; these CPU processes use per-process BatchNorm")
        else:
            detector = nn.SyncBatchNorm.convert_sync_batchnorm(detector)
    train_ds = DetectionDataset(data.train, train=True, mask_on=recipe.mask_on, seed=recipe.seed)
    sampler = GroupedShardedBatchSampler(
        aspect_groups([(r.width, r.height) for r in data.train]), recipe.ims_per_batch // acc.num_processes,
        num_replicas=acc.num_processes, rank=acc.process_index, seed=recipe.seed)
    # The loader draws from its own generator (its workers' seeds), never from the global RNG that the detector's
    # sampling (training size, RPN and RoI samples) draws from: a relaunched run restores that RNG from the
    # checkpoint, and opening the resumed epoch's iterator must not draw from it.
    loader = DataLoader(train_ds, batch_sampler=sampler, collate_fn=collate_detection, num_workers=recipe.num_workers,
                        pin_memory=acc.device.type == "cuda", generator=torch.Generator().manual_seed(recipe.seed))
    lr = recipe.lr()
    optimizer = torch.optim.SGD(param_groups(detector, recipe.weight_decay, recipe.weight_decay_norm),
                                lr=lr, momentum=recipe.momentum)
    detector, optimizer = acc.prepare(detector, optimizer)   # the loader is sharded by its own sampler
    step = 0
    if ckpt is not None:
        state = load_checkpoint(acc, ckpt)
        if state["steps_per_epoch"] != len(loader):
            raise ValueError(f"checkpoint {ckpt} was written with {state['steps_per_epoch']} steps per epoch, this run "
                             f"has {len(loader)}: resume with the same training data and ims_per_batch")
        if state["num_processes"] != acc.num_processes:   # each process restores its own RNG states
            raise ValueError(f"checkpoint {ckpt} was written by {state['num_processes']} process(es), this run has "
                             f"{acc.num_processes}: resume with the same number of processes")
        step = state["step"]
        log(f"[finetune_det] resumed from {ckpt} at step {step}")
    if acc.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "recipe.json").write_text(json.dumps({**run_recipe, "lr": lr}, indent=1))
    log(f"[finetune_det] {recipe.max_iter} iterations, {recipe.ims_per_batch} images/iter, lr {lr:g}, "
        f"{acc.num_processes} process(es), mixed precision {recipe.mixed_precision}")

    last: Dict[str, float] = {}
    last_ckpt = ckpt
    meter = _LossMeter(acc.device, recipe.max_iter)
    detector.train()
    while step < recipe.max_iter:
        epoch, offset = divmod(step, len(loader))
        sampler.set_epoch(epoch, start=offset)
        train_ds.set_epoch(epoch)
        for images, targets in loader:
            step_lr = lr * lr_factor(step, recipe)
            for group in optimizer.param_groups:
                group["lr"] = step_lr
            images = [im.to(acc.device, non_blocking=True) for im in images]
            targets = [{k: v.to(acc.device, non_blocking=True) for k, v in t.items() if k != "index"}
                       for t in targets]
            losses = detector(images, targets)
            loss = sum(losses.values())
            meter.add(step + 1, losses, loss)   # steps numbered as the log lines number them
            acc.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            to_log = step % recipe.log_period == 0 or step == recipe.max_iter
            to_save = step % recipe.checkpoint_period == 0 or step == recipe.max_iter
            if to_log or to_save:   # never a checkpoint of weights that a non-finite loss has touched
                meter.check(acc)
            if to_log:
                last = meter.read(acc)
                log(f"[finetune_det] step {step}/{recipe.max_iter} lr {step_lr:.5f} "
                    + " ".join(f"{k} {v:.4f}" for k, v in last.items()))
            if to_save:
                last_ckpt = save_checkpoint(acc, output_dir, {
                    "step": step, "epoch": step // len(loader), "steps_per_epoch": len(loader),
                    "num_processes": acc.num_processes}, run_recipe, recipe.keep_last)
            if step >= recipe.max_iter:
                break
    if recipe.precise_bn_iters > 0:
        # the first batches of the last epoch trained, whether this process trained it or resumed after it
        last_epoch = max(step - 1, 0) // len(loader)
        sampler.set_epoch(last_epoch)
        train_ds.set_epoch(last_epoch)
        core = acc.unwrap_model(detector)
        n = precise_bn(core, loader, recipe.precise_bn_iters,
                       lambda b: core([im.to(acc.device) for im in b[0]],
                                      [{k: v.to(acc.device) for k, v in t.items() if k != "index"} for t in b[1]]))
        log(f"[finetune_det] precise BN: BatchNorm statistics averaged over {n} training batches")
    acc.wait_for_everyone()
    try:
        acc.save_model(detector, str(output_dir), safe_serialization=True)
    except (OSError, SafetensorError) as e:
        kept = f"the trained state is in the checkpoint {last_ckpt}"
        fix = "--resume auto writes the detector from it without training again"
        if is_disk_full(e, output_dir):
            raise DiskFullError(output_dir / "model.safetensors", f"{kept}; {fix}") from e
        if is_unwritable(e):
            raise unwritable(e, output_dir / "model.safetensors", kept,
                             f"make {output_dir} writable again; {fix}") from e
        raise
    metrics = evaluate_detector(detector, data, recipe, acc) if evaluate else {}
    acc.wait_for_everyone()
    if acc.is_main_process and metrics:
        for t, m in metrics.items():  # printed before the file is written: a failed write loses no number
            log(f"[finetune_det] {t}: AP {m['AP']:.2f} AP50 {m['AP50']:.2f} AP75 {m['AP75']:.2f}")
        try:
            (output_dir / "metrics.json").write_text(json.dumps(
                {t: {k: v for k, v in m.items() if k != "summary"} for t, m in metrics.items()}, indent=1))
        except OSError as e:
            kept = f"the detector is in {output_dir / 'model.safetensors'} and its AP is printed above"
            if is_disk_full(e, output_dir):
                raise DiskFullError(output_dir / "metrics.json", kept) from e
            if is_unwritable(e):
                raise unwritable(e, output_dir / "metrics.json", kept,
                                 "make the folder writable to keep the file; nothing needs to run again") from e
            raise
    return {"step": step, "losses": last, "metrics": metrics}
