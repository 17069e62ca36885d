"""Pre-training data: selective-search proposals, views, region augmentations (PRC, PRM, RBJ),
the de-positioning composite of Eq. 8, and the datasets (COCO, image folder, embedded sample,
OpenImage-MINI builder). See SPEC Sec. 3 and the paper's Sec. 4.

Engine contract: ``build_pretrain_dataset(cfg, source, proposals, seed)``, ``PretrainCollator(cfg)``
(or ``pretrain_loader``) and ``prepare_batch(batch, cfg.mean, cfg.std)`` on the device. All
region augmentations run in the data workers; the collator ships uint8 images and the Eq. 6-7
masks, and ``prepare_batch`` normalises and composites x3 (Eq. 8) where the batch is.
"""
from .composite import composite_depositioned
from .config import PretrainDataConfig
from .datasets import (PretrainCollator, PretrainDataset, build_pretrain_dataset, load_rgb, prepare_batch,
                       pretrain_loader, source_records)
from .proposals import ProposalStore
from .region_aug import box_jitter, prc, prm, rbj, soco_cutout
from .sample import get_sample_dataset

__all__ = ["PretrainDataConfig", "PretrainDataset", "PretrainCollator", "prepare_batch", "pretrain_loader",
           "build_pretrain_dataset", "source_records",
           "ProposalStore", "load_rgb", "prc", "prm", "rbj", "box_jitter", "soco_cutout",
           "composite_depositioned", "get_sample_dataset"]
