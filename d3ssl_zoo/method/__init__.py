"""Pre-training methods (Sec. 4.2): D3SSL's de-coupling / de-positioning modules and the SoCo baseline.

Region-level augmentations (PRC, PRM, RBJ, the composite of Eq. 8) live in ``d3ssl_zoo.data``;
this package holds the networks, the memory bank, the losses and the optimiser of the method.
"""
from .d3ssl import D3SSL
from .lars import LARS, lars_param_groups
from .losses import byol_loss, match_top1, nce, nce_from_logits, nce_logits, nce_top1
from .queue import RegionQueue, gather_from_all_processes
from .region_encoder import MLPHead, RegionEncoder
from .schedule import lr_at, momentum_at, scaled_lr
from .soco import SoCo
from .teacher import make_teacher, momentum_update

__all__ = [
    "D3SSL", "SoCo", "RegionEncoder", "MLPHead", "RegionQueue", "gather_from_all_processes",
    "nce", "nce_logits", "nce_from_logits", "nce_top1", "byol_loss", "match_top1",
    "LARS", "lars_param_groups", "lr_at", "momentum_at", "scaled_lr",
    "make_teacher", "momentum_update",
]
