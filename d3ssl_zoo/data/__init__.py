"""Pre-training data: selective-search proposals, views, region augmentations (PRC, PRM, RBJ),
the de-positioning composite of Eq. 8, and the datasets (COCO, image folder, embedded sample,
OpenImage-MINI builder). See SPEC Sec. 3 and the paper's Sec. 4.
"""
from .config import PretrainDataConfig

__all__ = ["PretrainDataConfig"]
