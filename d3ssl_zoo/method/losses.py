"""The two losses of the pre-training methods.

* :func:`nce` -- the InfoNCE loss of Eq. 5 (Sec. 4.2), used by L_dc (Eq. 4) and L_dp (Eq. 9),
  with negatives from the memory bank of teacher region embeddings.
* :func:`byol_loss` -- SoCo's BYOL-style regression loss ``2 - 2 cos(p, z)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["nce", "byol_loss"]


def nce(z: Tensor, z_pos: Tensor, negatives: Tensor, tau: float) -> Tensor:
    """Eq. 5: ``-log exp(z.z+/tau) / sum_{z_j in {z-} u {z+}} exp(z.z_j/tau)``, one value per row.

    ``z`` (N, d) student embeddings, ``z_pos`` (N, d) their positives (teacher embeddings of the
    same box in the other view), ``negatives`` (M, d) the memory bank. All are L2-normalised
    here, so the dot products are cosine similarities as in MoCo. Returns ``(N,)``; the
    positive must not receive gradients (it comes from the teacher).
    """
    z = F.normalize(z.float(), dim=1)
    z_pos = F.normalize(z_pos.float(), dim=1)
    negatives = F.normalize(negatives.float(), dim=1)
    l_pos = (z * z_pos).sum(dim=1, keepdim=True)
    l_neg = z @ negatives.t()
    logits = torch.cat([l_pos, l_neg], dim=1) / tau
    # the positive sits at index 0 of every row
    return F.cross_entropy(logits, logits.new_zeros(logits.shape[0], dtype=torch.long), reduction="none")


def byol_loss(p: Tensor, z: Tensor) -> Tensor:
    """SoCo / BYOL: ``2 - 2 cos(p, z)`` per row, ``p`` the student prediction, ``z`` the teacher target."""
    return 2.0 - 2.0 * F.cosine_similarity(p.float(), z.float(), dim=1)
