"""The region encoder f_theta of Eq. 1 and its MLP heads.

f_theta(x, b) = f^H(RoIAlign(f^E(x), b)) (Eq. 1): the encoder f^E is the backbone up to C4
(stem + layer1..3), RoIAlign acts on C4 (stride 16), and the head f^H is the 5-th residual block
(layer4) + average pooling + an MLP projector. The projector (and SoCo's BYOL predictor) is
Linear-BN-ReLU-Linear, 2048-4096-256 for ResNet-50 (SoCo's C4 setting; not given in the paper).
"""
from __future__ import annotations

from torch import Tensor, nn

from d3ssl_zoo.boxes import batched_rois, region_align

__all__ = ["MLPHead", "RegionEncoder"]


class MLPHead(nn.Sequential):
    """Linear -> BatchNorm1d -> ReLU -> Linear: SoCo's projector and BYOL's predictor."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__(
            nn.Linear(in_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )


class RegionEncoder(nn.Module):
    """f_theta of Eq. 1: one embedding per box, ``(B*K, out_dim)`` for images ``(B,3,H,W)`` and boxes ``(B,K,4)``.

    ``backbone`` is a zoo model (``forward_c4``, ``forward_region_head``, ``c4_stride``, ``num_features``);
    ``roi_size`` is 14 for the 224 views and 7 for the 112 view x2-s (SoCo's convention).
    """

    def __init__(self, backbone: nn.Module, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = MLPHead(backbone.num_features, hidden_dim, out_dim)

    def forward(self, images: Tensor, boxes: Tensor, roi_size: int) -> Tensor:
        rois = batched_rois(boxes.to(images.device))  # validated by the collator, on the CPU
        c4 = self.backbone.forward_c4(images)
        regions = region_align(c4, rois, roi_size, self.backbone.c4_stride)
        return self.projector(self.backbone.forward_region_head(regions))
