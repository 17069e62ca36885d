"""The SoCo baseline (Wei et al. 2021) in its C4 form, for the ``soco_*`` tags (paper Tab. 1, 3, 4 and 6).

Same backbone and region encoder as D3SSL; two views (x1: whole image, x2: random resized crop),
a BYOL predictor on the student, and the symmetric loss ``2 - 2 cos`` between the student's
prediction of a box in one view and the teacher's embedding of the same box in the other view.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .losses import byol_loss, match_top1
from .region_encoder import MLPHead, RegionEncoder
from .teacher import StudentTeacher

__all__ = ["SoCo"]


class SoCo(StudentTeacher):
    """Student (encoder + projector + predictor), momentum teacher (encoder + projector), BYOL loss."""

    def __init__(self, backbone: nn.Module, *, proj_hidden_dim: int, proj_dim: int,
                 pred_hidden_dim: int, roi_size: int = 14) -> None:
        super().__init__(RegionEncoder(backbone, proj_hidden_dim, proj_dim))
        self.predictor = MLPHead(proj_dim, pred_hidden_dim, proj_dim)
        self.roi_size = roi_size

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Return ``loss``: the symmetric BYOL loss averaged over boxes, and ``top1_match``, the shortcut
        signal: the fraction of predictions whose own teacher region is the closest (cosine) among the
        batch's teacher regions of the other view (:func:`match_top1`; no host sync; docs/training.md)."""
        x1, x2, b1, b2 = batch["x1"], batch["x2"], batch["boxes1"], batch["boxes2"]
        p1 = self.predictor(self.student(x1, b1, self.roi_size))
        p2 = self.predictor(self.student(x2, b2, self.roi_size))
        with torch.no_grad():
            z1 = self.teacher(x1, b1, self.roi_size)
            z2 = self.teacher(x2, b2, self.roi_size)
        return {"loss": (byol_loss(p1, z2) + byol_loss(p2, z1)).mean(),
                "top1_match": torch.cat([match_top1(p1, z2), match_top1(p2, z1)]).mean()}
