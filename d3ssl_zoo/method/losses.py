"""The two losses of the pre-training methods.

* :func:`nce` -- the InfoNCE loss of Eq. 5 (Sec. 4.2), used by L_dc (Eq. 4) and L_dp (Eq. 9),
  with negatives from the memory bank of teacher region embeddings.
* :func:`byol_loss` -- SoCo's BYOL-style regression loss ``2 - 2 cos(p, z)``.

Next to each loss, a shortcut signal that needs no host sync: :func:`nce_top1` (does the positive
outrank every negative of Eq. 5?) and :func:`match_top1` (does the student's prediction pick its own
teacher region among the batch's?). Both methods' teachers see the same BN batch as their students
(docs/training.md, "The shortcut signal").

Both run in float32 with autocast off, whatever the precision of the embeddings: under bf16
autocast ``z @ negatives.t()`` would otherwise be a bf16 matmul whose similarities are rounded to
8 significant bits (errors up to ~0.002, ~0.01 in the logits at tau 0.2).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["nce", "nce_logits", "nce_from_logits", "nce_top1", "byol_loss", "match_top1"]


def _float32(device_type: str):
    """Autocast off for ``device_type``: the ops inside run in the dtype of their inputs."""
    return torch.autocast(device_type, enabled=False)


def nce_logits(z: Tensor, z_pos: Tensor, negatives: Tensor, tau: float) -> Tensor:
    """The logits of Eq. 5, float32 ``(N, 1 + M)``: ``[z.z+, z.z_1-, ..., z.z_M-] / tau``, positive first.

    All three inputs are cast to float32 and L2-normalised here (cosine similarities, as MoCo).
    """
    with _float32(z.device.type):
        z = F.normalize(z.float(), dim=1)
        z_pos = F.normalize(z_pos.float(), dim=1)
        negatives = F.normalize(negatives.float(), dim=1)
        l_pos = (z * z_pos).sum(dim=1, keepdim=True)
        l_neg = z @ negatives.t()
        return torch.cat([l_pos, l_neg], dim=1) / tau


def nce_from_logits(logits: Tensor) -> Tensor:
    """Eq. 5 from the logits of :func:`nce_logits` (positive at index 0): ``(N,)`` float32."""
    with _float32(logits.device.type):
        return F.cross_entropy(logits, logits.new_zeros(logits.shape[0], dtype=torch.long), reduction="none")


def nce(z: Tensor, z_pos: Tensor, negatives: Tensor, tau: float) -> Tensor:
    """Eq. 5: ``-log exp(z.z+/tau) / sum_{z_j in {z-} u {z+}} exp(z.z_j/tau)``, one value per row.

    ``z`` (N, d) student embeddings, ``z_pos`` (N, d) their positives (teacher embeddings of the
    same box in the other view), ``negatives`` (M, d) the memory bank; logits from
    :func:`nce_logits` (float32). Returns ``(N,)`` float32; the positive must not receive
    gradients (it comes from the teacher).
    """
    return nce_from_logits(nce_logits(z, z_pos, negatives, tau))


@torch.no_grad()
def nce_top1(logits: Tensor) -> Tensor:
    """Contrastive top-1 per row of :func:`nce_logits`: 1.0 where the positive's logit is above every
    negative's, else 0.0 (``(N,)`` float32, on the logits' device)."""
    return (logits[:, 0] > logits[:, 1:].amax(dim=1)).float()


def byol_loss(p: Tensor, z: Tensor) -> Tensor:
    """SoCo / BYOL: ``2 - 2 cos(p, z)`` per row (float32), ``p`` the student prediction, ``z`` the teacher target."""
    with _float32(p.device.type):
        return 2.0 - 2.0 * F.cosine_similarity(p.float(), z.float(), dim=1)


@torch.no_grad()
def match_top1(p: Tensor, z: Tensor) -> Tensor:
    """Per row of ``p`` (N, d): 1.0 where its cosine to its own target ``z[i]`` is above its cosine to
    every other row of ``z`` (N, d), else 0.0 (``(N,)`` float32). SoCo's loss has no negatives: this
    ranks each region's teacher embedding among the other regions of the batch."""
    with _float32(p.device.type):
        sim = F.normalize(p.float(), dim=1) @ F.normalize(z.float(), dim=1).t()
        own = sim.diagonal()
        others = sim.masked_fill(torch.eye(len(sim), dtype=torch.bool, device=sim.device), float("-inf"))
        return (own > others.amax(dim=1)).float()
