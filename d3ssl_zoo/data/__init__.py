"""Pre-training data: selective-search proposals, views, region augmentations (PRC, PRM, RBJ),
the de-positioning composite of Eq. 8, and the datasets (COCO, image folder, embedded sample,
OpenImage-MINI builder). See SPEC Sec. 3 and the paper's Sec. 4.

Engine contract: ``build_pretrain_dataset(cfg, source, proposals, seed)`` and
``PretrainCollator(cfg)``; all region augmentations run in the data workers, so the batch
already holds the final keys (no device-side step).
"""
from .composite import composite_depositioned
from .config import PretrainDataConfig
from .datasets import PretrainCollator, PretrainDataset, build_pretrain_dataset, load_rgb
from .proposals import ProposalStore
from .region_aug import box_jitter, prc, prm, rbj, soco_cutout
from .sample import get_sample_dataset

__all__ = ["PretrainDataConfig", "PretrainDataset", "PretrainCollator", "build_pretrain_dataset",
           "ProposalStore", "load_rgb", "prc", "prm", "rbj", "box_jitter", "soco_cutout",
           "composite_depositioned", "get_sample_dataset"]
