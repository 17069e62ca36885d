"""Data: the one image record and COCO reader (``coco_json``: :class:`ImageRecord`,
:class:`ImageObjects`, ``read_coco_objects``), the one decoder (``images``: :func:`load_rgb`), and
pre-training's data: selective-search proposals (``selective_search``, the file read by
``proposal_store``), views, region augmentations (PRC, PRM, RBJ), the de-positioning composite of
Eq. 8, and the datasets (COCO, image folder, embedded sample, generated scenes, OpenImage-MINI
builder). See the paper's Sec. 4 and ``docs/data.md``.

What the pre-training loop uses: ``build_pretrain_dataset(cfg, source, proposals, seed)``,
``PretrainCollator(cfg)`` (or ``pretrain_loader``) and ``prepare_batch(batch, cfg.mean, cfg.std)`` on
the device. All region augmentations run in the data workers; the collator ships uint8 images and
the Eq. 6-7 masks, and ``prepare_batch`` normalises and composites x3 (Eq. 8) where the batch is.
"""
from .coco_json import ImageObjects, ImageRecord
from .composite import composite_depositioned
from .config import PretrainDataConfig
from .datasets import (
                       PretrainCollator,
                       PretrainDataset,
                       build_pretrain_dataset,
                       prepare_batch,
                       pretrain_loader,
                       source_records,
)
from .images import load_rgb
from .proposal_store import ProposalStore
from .region_aug import box_jitter, prc, prm, rbj, soco_cutout
from .sample import get_sample_dataset

__all__ = ["PretrainDataConfig", "PretrainDataset", "PretrainCollator", "prepare_batch", "pretrain_loader",
           "build_pretrain_dataset", "source_records", "ImageRecord", "ImageObjects",
           "ProposalStore", "load_rgb", "prc", "prm", "rbj", "box_jitter", "soco_cutout",
           "composite_depositioned", "get_sample_dataset"]
