"""D3SSL's learning modules (Sec. 4.2, Eq. 3-10): de-coupling and de-positioning.

The forward maps onto the paper equation by equation. The batch holds the views already built by
the data pipeline (``d3ssl_zoo.data``): x1 = PRM o PRC(x1) and x2s = PRM o PRC(x2-s) of Eq. 2,
the teacher view x2, the composite x3 of Eq. 8, and the boxes of each view (RBJ applied there).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .losses import nce_from_logits, nce_logits, nce_top1
from .queue import RegionQueue
from .region_encoder import RegionEncoder
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
        queue_seed: seed of the memory bank's random initialisation (and of the BN shuffles).
        bn_groups: MoCo's shuffling BN. With G > 1 every forward computes BatchNorm statistics
            over G groups of the micro-batch's images instead of all of them: the student's groups
            are contiguous, the teacher's are a fresh random permutation, so a region's query and
            its positive key are normalised with statistics of different images. With G = 1 (one
            BN batch for query, key and every other region of the batch) the positive shares its
            batch statistics with the query while every negative in the memory bank comes from an
            earlier batch: the loss can fall by recognising the batch instead of the region (MoCo,
            Sec. 3.3, "Shuffling BN").
    """

    def __init__(self, backbone: nn.Module, *, proj_hidden_dim: int, proj_dim: int, tau: float,
                 queue_size: int, depositioning: bool, roi_size: int = 14, roi_size_small: int = 7,
                 queue_seed: int = 0, bn_groups: int = 1) -> None:
        super().__init__(RegionEncoder(backbone, proj_hidden_dim, proj_dim))  # f_q and its EMA f_k
        self.queue = RegionQueue(queue_size, proj_dim, seed=queue_seed)  # {z-}
        self.tau = tau
        self.depositioning = depositioning
        self.roi_size = roi_size
        self.roi_size_small = roi_size_small
        if bn_groups < 1:
            raise ValueError(f"bn_groups must be >= 1 (1 = one BN batch, MoCo's shuffling BN needs > 1), "
                             f"got {bn_groups}")
        self.bn_groups = bn_groups
        self.shuffle_seed = queue_seed
        # forward calls so far: the BN shuffle of each call is a pure function of (seed, call), and
        # the counter is a buffer, so it is checkpointed with the model and a resumed run continues it
        # (only when shuffling: with one BN batch the state dict stays as it was, and old checkpoints load)
        self.register_buffer("bn_shuffle_calls", torch.zeros((), dtype=torch.long), persistent=bn_groups > 1)

    def _encode(self, encoder: nn.Module, images: Tensor, boxes: Tensor, roi_size: int,
                order: Tensor | None) -> Tensor:
        """``encoder(images, boxes)`` with BN statistics per group of images (``order`` split in
        ``bn_groups`` parts; ``None``: one BN batch). Rows come back in the input order."""
        if order is None:
            return encoder(images, boxes, roi_size)
        b, k = boxes.shape[:2]
        parts = [(idx, encoder(images[idx], boxes[idx], roi_size)) for idx in order.tensor_split(self.bn_groups)]
        out = parts[0][1].new_empty(b, k, parts[0][1].shape[1])
        for idx, z in parts:
            out[idx.to(out.device)] = z.view(len(idx), k, -1)
        return out.view(b * k, -1)

    def _bn_orders(self, batch_size: int) -> tuple[Tensor | None, Tensor | None]:
        """(student order, teacher order) of the images for :meth:`_encode`."""
        if self.bn_groups == 1:
            return None, None
        if batch_size < self.bn_groups:
            raise ValueError(f"a micro-batch of {batch_size} images cannot be split into method.bn_groups="
                             f"{self.bn_groups} BN groups; lower method.bn_groups or raise train.batch_size")
        g = torch.Generator().manual_seed(int(self.shuffle_seed) * 1_000_003 + int(self.bn_shuffle_calls))
        self.bn_shuffle_calls += 1
        return torch.arange(batch_size), torch.randperm(batch_size, generator=g)

    def _nce(self, z: Tensor, z_pos: Tensor, negatives: Tensor) -> tuple[Tensor, Tensor]:
        """Eq. 5 per row, and per row whether the positive outranks every negative (:func:`nce_top1`)."""
        logits = nce_logits(z, z_pos, negatives, self.tau)
        return nce_from_logits(logits), nce_top1(logits)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Return ``loss`` (Eq. 10), its parts ``l_dc`` (Eq. 4) and, if on, ``l_dp`` (Eq. 9), and the
        shortcut signal of each part, ``top1_dc`` / ``top1_dp``: the fraction of its InfoNCE rows whose
        positive outranks every negative of the memory bank (no host sync; docs/training.md)."""
        x1, x2s, x2 = batch["x1"], batch["x2s"], batch["x2"]
        b1, b2s, b2 = batch["boxes1"], batch["boxes2s"], batch["boxes2"]
        s_order, t_order = self._bn_orders(x1.shape[0])
        z_s1 = self._encode(self.student, x1, b1, self.roi_size, s_order)  # Eq. 3
        z_s2 = self._encode(self.student, x2s, b2s, self.roi_size_small, s_order)  # Eq. 3
        with torch.no_grad():
            z_t1 = self._encode(self.teacher, x1, b1, self.roi_size, t_order)  # Eq. 3
            z_t2 = self._encode(self.teacher, x2, b2, self.roi_size, t_order)  # Eq. 3
        negatives = self.queue.keys.clone().detach()
        (l_12, top1_12), (l_21, top1_21) = self._nce(z_s1, z_t2, negatives), self._nce(z_s2, z_t1, negatives)
        l_dc = l_12 + l_21  # Eq. 4
        out = {"l_dc": l_dc.mean(), "top1_dc": torch.cat([top1_12, top1_21]).mean()}
        per_region = l_dc
        if self.depositioning:
            b3 = batch["boxes3"]  # the first n <= K proposals of each image (data.dp_proposals)
            z_s3 = self._encode(self.student, batch["x3"], b3, self.roi_size, s_order)  # Eq. 8
            n, k = b3.shape[1], b1.shape[1]
            z_t1_dp, z_t2_dp = (z.view(-1, k, z.shape[1])[:, :n].reshape(-1, z.shape[1]) for z in (z_t1, z_t2))
            (l_32, top1_32), (l_31, top1_31) = self._nce(z_s3, z_t2_dp, negatives), self._nce(z_s3, z_t1_dp, negatives)
            l_dp = l_32 + l_31  # Eq. 9
            out["l_dp"], out["top1_dp"] = l_dp.mean(), torch.cat([top1_32, top1_31]).mean()
            # Eq. 10 per region: a region outside the composite has no L_dp term
            per_region = per_region.view(-1, k).clone()
            per_region[:, :n] += l_dp.view(-1, n)
            per_region = per_region.reshape(-1)
        out["loss"] = per_region.mean()  # Eq. 10: 1/K sum_i, averaged over the images too
        # negatives for the next batches: the teacher embeddings of both views (ours; docs/design.md)
        self.queue.enqueue(torch.cat([z_t1, z_t2]))
        return out
