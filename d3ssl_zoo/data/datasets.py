"""Pre-training datasets (the images of a COCO json, an image folder, the embedded sample or the
generated scene set, as :class:`~d3ssl_zoo.data.coco_json.ImageRecord`), the collator that turns
samples into a uint8 batch, and :func:`prepare_batch`, which finishes the batch the engine
expects on the device: normalisation and the Eq. 8 composite.
The collator ships 1 byte per pixel (4x less than fp32 through /dev/shm, pinned memory and the
host-to-device copy) and the composite runs where the batch is.

Per-sample randomness comes from ``numpy.random.default_rng([seed, epoch, index])``, so a
resumed run sees the same samples. The engine's sampler yields ``(epoch, index)`` keys, so data
workers (persistent ones too) need no epoch state; a plain integer index uses the epoch last given
to ``set_epoch``.
"""
from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .coco_json import ImageRecord, coco_records
from .composite import composite_depositioned
from .config import PretrainDataConfig
from .images import decode_rgb, folder_records
from .proposal_store import ProposalStore
from .sample import get_sample_dataset
from .scenes import SceneConfig, get_scene_dataset
from .views import chw_batch, crop_reduction, make_views, plan_crop, reduce_crop

__all__ = ["source_records", "PretrainDataset", "PretrainCollator", "prepare_batch", "data_worker_init",
           "pretrain_loader", "build_pretrain_dataset"]


def source_records(cfg: PretrainDataConfig, source: str | os.PathLike) -> list[ImageRecord]:
    """The images of a pre-training ``source`` (see :func:`build_pretrain_dataset`); builds the
    embedded sample or scene set on first use."""
    return _records(cfg, source, _builtin(source))


def _records(cfg: PretrainDataConfig, source: str | os.PathLike, builtin) -> list[ImageRecord]:
    if builtin is not None:
        return coco_records(builtin.pretrain_ann, builtin.images_dir)
    src = Path(source)
    if src.is_dir():
        return folder_records(src)
    if src.suffix == ".json":
        return coco_records(src, cfg.images_dir)
    raise ValueError(f"pre-training source {source!r} is neither a COCO annotation .json, an "
                     f"image folder, 'sample' nor 'scenes'")


def _builtin(source: str | os.PathLike):
    """The embedded sample / generated scene set named by ``source``, or ``None``."""
    if str(source) == "sample":
        return get_sample_dataset()
    if str(source).partition(":")[0] == "scenes":
        return get_scene_dataset(SceneConfig.from_source(str(source)))
    return None


class PretrainDataset(Dataset):
    """Images + their proposals -> one view sample (:func:`d3ssl_zoo.data.views.make_views`).

    A sample's x2 crop is drawn before its image is decoded (:func:`~d3ssl_zoo.data.views.plan_crop`),
    and a JPEG is decoded at the reduced size that crop and the whole-image x1 allow
    (:func:`~d3ssl_zoo.data.views.crop_reduction`: every view still a shrink), the proposals and the
    crop scaled with it, so small views and large crops do not pay for full decodes.
    Images the proposal file recorded as skipped (unreadable, too small) and images with a side
    below ``cfg.min_image_side`` are left out with a warning and listed in ``self.skipped``;
    images the file lacks are an error.
    """

    def __init__(self, cfg: PretrainDataConfig, records: list[ImageRecord], proposals: ProposalStore, seed: int = 0):
        self.cfg = cfg
        self.proposals = proposals
        self.seed = int(seed)
        self.epoch = 0
        usable, self.skipped = proposals.check_images((r.image_id, r.file_name) for r in records)
        names = {r.image_id: r.file_name for r in records}
        keep = set()
        for image_id in usable:
            if min(proposals.image_size(image_id)) < cfg.min_image_side:
                self.skipped.append({"image_id": image_id, "file_name": names[image_id], "reason": "too_small"})
            else:
                keep.add(image_id)
        self.records = [r for r in records if r.image_id in keep]
        if self.skipped:
            reasons = {}
            for s in self.skipped:
                reasons[s["reason"]] = reasons.get(s["reason"], 0) + 1
            warnings.warn(f"pre-training dataset: skipped {len(self.skipped)} of {len(records)} images "
                          f"(proposal file {proposals.path}): {reasons}", stacklevel=1)
        if not self.records:
            raise ValueError(f"pre-training dataset is empty: all {len(records)} images were skipped")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """``index`` (views of the epoch last set with :meth:`set_epoch`) or ``(epoch, index)`` (what the
        engine's sampler yields, so that data workers need no epoch state)."""
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        rng, image, _, proposals, plan = self.decode(epoch, index)
        sample = make_views(image, proposals, self.cfg, rng, plan)
        sample["image_id"] = self.records[index].image_id
        return sample

    def decode(self, epoch: int, index: int):
        """The decode half of a sample: ``(rng, image, reduce, proposals, plan)``. The sample's x2 crop is
        drawn first (``rng`` continues after it), the image decoded at the reduction ``reduce`` that crop
        allows, ``proposals`` and the crop (``plan``, for :func:`make_views`) in decoded pixels."""
        rec = self.records[index]
        w, h = self.proposals.image_size(rec.image_id)
        rng = np.random.default_rng([self.seed, epoch, index])
        proposals = self.proposals[rec.image_id]
        crop, qualifying = plan_crop(proposals, h, w, self.cfg, rng)
        image, reduce, stored = decode_rgb(rec.path, crop_reduction(w, h, crop, self.cfg))
        if stored != (w, h):
            raise ValueError(f"image {rec.path} is {stored[0]}x{stored[1]} but proposal file "
                             f"{self.proposals.path} was made for a {w}x{h} image; remake the proposals")
        plan = (reduce_crop(crop, reduce, *image.shape[:2]), qualifying)  # stored pixels -> decoded pixels
        return rng, image, reduce, proposals / np.float32(reduce), plan


def _check_view_boxes(boxes: np.ndarray, key: str, image_ids: torch.Tensor) -> None:
    """The box checks of :func:`d3ssl_zoo.validate_boxes`, made once here on the CPU so that the
    training step builds its RoIs without a host sync."""
    bad = ~np.isfinite(boxes).all(-1) | (boxes[..., 2] < boxes[..., 0]) | (boxes[..., 3] < boxes[..., 1])
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(f"{key} of image id {int(image_ids[i])} has a non-finite or negative-size box "
                         f"{boxes[i, j].tolist()} (xyxy pixels of the view); check that image's proposals")


class PretrainCollator:
    """List of samples -> the collated batch: uint8 images, float boxes, the Eq. 6-7 masks.

    Keys: ``x1``, ``x2``, ``boxes1``, ``boxes2``, ``image_id``; d3ssl views add ``x2s``,
    ``boxes2s``; with ``depositioning`` also ``m``, ``m_hat`` (bool ``(B, H, W)``), ``t``
    (int64 ``(B, 2)``) and ``boxes3``; soco views paired by id (``soco_pairing: id``) add
    ``proposal_ids1``, ``proposal_ids2`` (int64 ``(B, K)``: the proposal of each box). Images are
    uint8 ``(B, 3, H, W)``: move the batch to the device, then :func:`prepare_batch` gives the
    contract's batch (normalised views and ``x3``).
    """

    def __init__(self, cfg: PretrainDataConfig):
        self.cfg = cfg

    @staticmethod
    def _images(arrays) -> torch.Tensor:
        return torch.from_numpy(chw_batch(arrays))

    def __call__(self, samples: list[dict]) -> dict:
        batch = {"image_id": torch.tensor([s["image_id"] for s in samples], dtype=torch.int64)}
        for key in ("x1", "x2", "x2s"):
            if key in samples[0]:
                batch[key] = self._images([s[key] for s in samples])
        for key in ("boxes1", "boxes2", "boxes2s", "boxes3"):
            if key in samples[0]:
                boxes = np.stack([s[key] for s in samples]).astype(np.float32)
                _check_view_boxes(boxes, key, batch["image_id"])
                batch[key] = torch.from_numpy(boxes)
        if "m_hat" in samples[0]:
            for key in ("m", "m_hat", "t"):
                batch[key] = torch.from_numpy(np.stack([s[key] for s in samples]))
        for key in ("proposal_ids1", "proposal_ids2"):  # SoCo's pairing by proposal id (views='soco')
            if key in samples[0]:
                batch[key] = torch.from_numpy(np.stack([s[key] for s in samples]).astype(np.int64))
        return batch


@functools.lru_cache(maxsize=8)
def _normaliser(mean: tuple, std: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``x * scale + shift = (x / 255 - mean) / std`` in fp32, made once per device (no copy per step)."""
    std255 = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255
    scale = 1.0 / std255
    shift = -torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255 / std255
    return scale.to(device), shift.to(device)


def prepare_batch(batch: dict, mean, std) -> dict:
    """A collated batch (already on its device) -> the batch of the engine contract.

    Images become float32 ``(x / 255 - mean) / std``; with the Eq. 6-7 masks, ``x3`` of Eq. 8 is
    composited from the uint8 ``x2`` (so the composite's empty pixels are black, as on the CPU)
    with background ``x_b`` = x2 of the next image in the batch, so every image gets another one
    (a batch of one uses its own x2 upside down); ``m``, ``m_hat`` and ``t`` are consumed.
    Pure tensor ops, no host sync: call it in the training step, after the copy to the device.
    """
    for key in ("x1", "x2"):
        if key not in batch or batch[key].dtype != torch.uint8:
            raise ValueError(f"prepare_batch: {key} must be a uint8 (B, 3, H, W) image batch from PretrainCollator, "
                             f"got {type(batch.get(key)).__name__} "
                             f"{getattr(batch.get(key), 'dtype', '')}; call prepare_batch once per batch")
    x2 = batch["x2"]
    scale, shift = _normaliser(tuple(mean), tuple(std), x2.device)
    out = {k: v for k, v in batch.items() if k not in ("m", "m_hat", "t")}
    for key in ("x1", "x2", "x2s"):
        if key in batch:
            out[key] = batch[key].float().mul_(scale).add_(shift)
    if "m_hat" in batch:
        x_b = torch.roll(x2, shifts=-1, dims=0) if x2.shape[0] > 1 else x2.flip(2)
        x3 = composite_depositioned(x2, batch["m"], x_b, batch["m_hat"], batch["t"])
        out["x3"] = x3.float().mul_(scale).add_(shift)
    return out


def data_worker_init(worker_id: int) -> None:
    """``worker_init_fn`` of pre-training loaders: one OpenCV thread per worker. OpenCV ignores
    ``OMP_NUM_THREADS`` and would start a pool of all cores in every worker.

    A forked worker already has one thread (:func:`pretrain_loader` sets it before the fork) and is
    left alone: resizing a thread pool inherited through ``fork`` hangs, joining threads that did
    not survive it."""
    if cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)


def pretrain_loader(dataset: Dataset, cfg: PretrainDataConfig, batch_size: int, sampler: Sampler | None,
                    num_workers: int, *, pin_memory: bool = False, drop_last: bool = True) -> DataLoader:
    """The pre-training ``DataLoader``: :class:`PretrainCollator`, one OpenCV thread per worker, and
    persistent workers (the engine's sampler yields ``(epoch, index)`` keys, so workers that
    outlive an epoch need no epoch state). Batches still need :func:`prepare_batch` on the device.
    With workers, this process is set to one OpenCV thread too, so that forked workers start with
    one (see :func:`data_worker_init`); the main process does no image work while they run."""
    if num_workers > 0:
        cv2.setNumThreads(1)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=PretrainCollator(cfg),
                      num_workers=num_workers, drop_last=drop_last, pin_memory=pin_memory,
                      worker_init_fn=data_worker_init if num_workers > 0 else None,
                      persistent_workers=num_workers > 0)


def build_pretrain_dataset(cfg: PretrainDataConfig, source: str | os.PathLike, proposals: str | os.PathLike | None,
                           seed: int = 0, records: list[ImageRecord] | None = None) -> PretrainDataset:
    """Dataset of the contract: ``source`` is a COCO annotation json, an image folder, ``"sample"``
    (the embedded sample) or ``"scenes"`` / ``"scenes:key=value,..."`` (the generated scene set,
    :mod:`d3ssl_zoo.data.scenes`).

    ``proposals`` is the file written by ``d3ssl-zoo proposals`` (for ``"sample"`` and
    ``"scenes"`` it may be ``None``: they bring their own). ``records``: the images of ``source``
    when the caller has them (:func:`source_records`; the engine reads them on one process and
    broadcasts them, so a 450 MB COCO json is parsed once, not by every rank).
    """
    builtin = _builtin(source)
    if builtin is not None:
        proposals = proposals or builtin.proposals
    if records is None:
        records = _records(cfg, source, builtin)
    if proposals is None:
        raise ValueError(f"no proposal file given for {source}; make one with `d3ssl-zoo proposals "
                         f"{'--coco' if str(source).endswith('.json') else '--images'} {source} --out FILE` "
                         f"and pass it")
    return PretrainDataset(cfg, records, ProposalStore(proposals), seed)
