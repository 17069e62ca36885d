"""The SoCo baseline (Wei et al. 2021) in its C4 form, for the ``soco_*`` tags (paper Tab. 1, 3, 4 and 6).

Same backbone and region encoder as D3SSL; two views (x1: whole image, x2: random resized crop),
a BYOL predictor on the student, and the symmetric loss ``2 - 2 cos`` between the student's
prediction of a box in one view and the teacher's embedding of the same box in the other view.
Boxes are paired by proposal id when the batch carries ``proposal_ids1`` / ``proposal_ids2``
(SoCo's correspondence matrix, :func:`matched_byol_loss`), else by position.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .losses import _float32, byol_loss, match_top1
from .region_encoder import MLPHead, RegionEncoder
from .teacher import StudentTeacher

__all__ = ["SoCo", "matched_byol_loss"]


class SoCo(StudentTeacher):
    """Student (encoder + projector + predictor), momentum teacher (encoder + projector), BYOL loss."""

    def __init__(self, backbone: nn.Module, *, proj_hidden_dim: int, proj_dim: int,
                 pred_hidden_dim: int, roi_size: int = 14) -> None:
        super().__init__(RegionEncoder(backbone, proj_hidden_dim, proj_dim))
        self.predictor = MLPHead(proj_dim, pred_hidden_dim, proj_dim)
        self.roi_size = roi_size

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Return ``loss``: the symmetric BYOL loss averaged over boxes (over the pairs of equal proposal
        ids, :func:`matched_byol_loss`, when the batch has ``proposal_ids1`` / ``proposal_ids2``), and
        ``top1_match``, the shortcut signal (by position): the fraction of predictions whose own teacher
        region is the closest (cosine) among the batch's teacher regions of the other view
        (:func:`match_top1`; no host sync; docs/training.md)."""
        x1, x2, b1, b2 = batch["x1"], batch["x2"], batch["boxes1"], batch["boxes2"]
        p1 = self.predictor(self.student(x1, b1, self.roi_size))
        p2 = self.predictor(self.student(x2, b2, self.roi_size))
        with torch.no_grad():
            z1 = self.teacher(x1, b1, self.roi_size)
            z2 = self.teacher(x2, b2, self.roi_size)
        if "proposal_ids1" in batch:
            corr = batch["proposal_ids1"][:, :, None] == batch["proposal_ids2"][:, None, :]
            loss = matched_byol_loss(p1, z2, corr) + matched_byol_loss(p2, z1, corr.transpose(1, 2))
        else:
            loss = (byol_loss(p1, z2) + byol_loss(p2, z1)).mean()
        return {"loss": loss, "top1_match": torch.cat([match_top1(p1, z2), match_top1(p2, z1)]).mean()}


def matched_byol_loss(p: Tensor, z: Tensor, corr: Tensor) -> Tensor:
    """``2 - 2 cos`` over the matched pairs, as SoCo's C4 loss weighs them (``regression_loss_bboxs``
    in ``contrast/models/SoCo_C4.py``, hologerry/SoCo): per image, the mean over every pair (i, j)
    with ``corr[b, i, j]`` (box i of ``p``'s view and box j of ``z``'s view are the same proposal),
    then the mean over images. ``p``, ``z``: ``(B * K, d)``, image-major; ``corr``: bool ``(B, K, K)``.

    A proposal repeated c1 times in one view and c2 times in the other enters c1 * c2 times. With K
    distinct proposals in the same order in both views (``corr`` the identity) this is
    ``byol_loss(p, z).mean()``. SoCo's ``-2 sum / (count + 1e-6)`` differs by the constant 2; an image
    without a matched pair (not produced by the SoCo views) adds 0, as in SoCo's.
    """
    b, k, _ = corr.shape
    with _float32(p.device.type):
        pn = F.normalize(p.float(), dim=1).view(b, k, -1)
        zn = F.normalize(z.float(), dim=1).view(b, k, -1)
        w = corr.float()
        per_image = ((2.0 - 2.0 * torch.bmm(pn, zn.transpose(1, 2))) * w).sum((1, 2)) / w.sum((1, 2)).clamp_min(1.0)
        return per_image.mean()
