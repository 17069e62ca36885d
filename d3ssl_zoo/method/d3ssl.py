"""D3SSL's learning modules (Sec. 4.2, Eq. 3-10): de-coupling and de-positioning.

The forward maps onto the paper equation by equation. The batch holds the views already built by
the data pipeline (``d3ssl_zoo.data``): x1 = PRM o PRC(x1) and x2s = PRM o PRC(x2-s) of Eq. 2,
the teacher view x2, the composite x3 of Eq. 8, and the boxes of each view (RBJ applied there).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .region_encoder import RegionEncoder
from .losses import nce
from .queue import RegionQueue
from .teacher import StudentTeacher

__all__ = ["D3SSL"]


class D3SSL(StudentTeacher):
    """Student f_q, momentum teacher f_k, memory bank {z-}, and the loss of Eq. 10.

    Args:
        backbone: a zoo ResNet-C4 (``forward_c4``, ``forward_region_head``, ``num_features``).
        proj_hidden_dim, proj_dim: MLP projector of the head f^H (Eq. 1).
        tau: temperature of Eq. 5.
        queue_size: number of negatives {z-} in the memory bank.
        depositioning: add L_dp (Eq. 9); off = "w/o L_dp" of Tab. 5 / Tab. 7.
        roi_size, roi_size_small: RoIAlign output for the 224 views and for x2-s.
        queue_seed: seed of the memory bank's random initialisation.
    """

    def __init__(self, backbone: nn.Module, *, proj_hidden_dim: int, proj_dim: int, tau: float,
                 queue_size: int, depositioning: bool, roi_size: int = 14, roi_size_small: int = 7,
                 queue_seed: int = 0) -> None:
        super().__init__(RegionEncoder(backbone, proj_hidden_dim, proj_dim))  # f_q and its EMA f_k
        self.queue = RegionQueue(queue_size, proj_dim, seed=queue_seed)  # {z-}
        self.tau = tau
        self.depositioning = depositioning
        self.roi_size = roi_size
        self.roi_size_small = roi_size_small

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Return ``loss`` (Eq. 10) and its parts ``l_dc`` (Eq. 4) and, if on, ``l_dp`` (Eq. 9)."""
        x1, x2s, x2 = batch["x1"], batch["x2s"], batch["x2"]
        b1, b2s, b2 = batch["boxes1"], batch["boxes2s"], batch["boxes2"]
        z_s1 = self.student(x1, b1, self.roi_size)  # Eq. 3
        z_s2 = self.student(x2s, b2s, self.roi_size_small)  # Eq. 3
        with torch.no_grad():
            z_t1 = self.teacher(x1, b1, self.roi_size)  # Eq. 3
            z_t2 = self.teacher(x2, b2, self.roi_size)  # Eq. 3
        negatives = self.queue.keys.clone().detach()
        l_dc = nce(z_s1, z_t2, negatives, self.tau) + nce(z_s2, z_t1, negatives, self.tau)  # Eq. 4
        out = {"l_dc": l_dc.mean()}
        per_region = l_dc
        if self.depositioning:
            b3 = batch["boxes3"]  # the first n <= K proposals of each image (data.dp_proposals)
            z_s3 = self.student(batch["x3"], b3, self.roi_size)  # Eq. 8
            n, k = b3.shape[1], b1.shape[1]
            z_t1_dp, z_t2_dp = (z.view(-1, k, z.shape[1])[:, :n].reshape(-1, z.shape[1]) for z in (z_t1, z_t2))
            l_dp = nce(z_s3, z_t2_dp, negatives, self.tau) + nce(z_s3, z_t1_dp, negatives, self.tau)  # Eq. 9
            out["l_dp"] = l_dp.mean()
            # Eq. 10 per region: a region outside the composite has no L_dp term
            per_region = per_region.view(-1, k).clone()
            per_region[:, :n] += l_dp.view(-1, n)
            per_region = per_region.reshape(-1)
        out["loss"] = per_region.mean()  # Eq. 10: 1/K sum_i, averaged over the images too
        # negatives for the next batches: the teacher embeddings of both views (SPEC Sec. 3)
        self.queue.enqueue(torch.cat([z_t1, z_t2]))
        return out
