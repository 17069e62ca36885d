"""Faster / Mask R-CNN in the R50-C4 form, built from torchvision parts (no detectron2).

The split is the paper's (Eq. 1) and detectron2's C4 model (paper §5 "Setting"): the backbone is
the stem and res2..res4 (C4, stride 16); the RPN runs on C4; each RoI is RoIAlign'ed 14x14
(aligned, ``d3ssl_zoo.boxes.region_align``) on C4 and goes through res5 (layer4, first block
stride 2 -> 7x7) plus the extra BatchNorm of MoCo's protocol; the box predictor reads the
average-pooled res5 features and the mask head (2x2 deconv + 1x1 conv) reads the res5 maps, as
detectron2's Res5ROIHeads does. Hyper-parameters are detectron2's defaults for R50-C4.

Box geometry stays float32 under mixed precision: torchvision makes anchors in the dtype of the
feature map and decodes boxes in the dtype of the regression output, so under bf16 autocast anchors,
proposals, detections and (cast to the proposals' dtype) the ground-truth boxes would all be bf16,
whose 8 significant bits put coordinates between 512 and 1024 px on a 4 px grid and beyond on an 8 px one.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_inference, maskrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from ..boxes import boxes_to_rois, region_align

__all__ = ["C4DetectorConfig", "C4Backbone", "Res5Head", "C4RoIPool", "Res5ROIHeads", "Float32BoxCoder",
           "Float32AnchorGenerator", "build_c4_detector", "box_head_losses"]

# ImageNet statistics for [0, 1] RGB input (= MoCo's 0-255 PIXEL_MEAN / PIXEL_STD divided by 255).
_MEAN, _STD = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD  # timm's


@dataclass
class C4DetectorConfig:
    """detectron2's R50-C4 defaults (MoCo protocol); sizes are overridable for small tests."""

    num_classes: int = 20
    mask_on: bool = False
    extra_norm: bool = True
    min_size_train: Tuple[int, ...] = (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800)
    min_size_test: int = 800
    max_size: int = 1333
    roi_size: int = 14
    anchor_sizes: Tuple[int, ...] = (32, 64, 128, 256, 512)
    aspect_ratios: Tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_pre_nms_train: int = 12000
    rpn_post_nms_train: int = 2000
    rpn_pre_nms_test: int = 6000
    rpn_post_nms_test: int = 1000
    rpn_batch_per_image: int = 256
    roi_batch_per_image: int = 512
    roi_positive_fraction: float = 0.25
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_image: int = 100


class C4Backbone(nn.Module):
    """Stem + layer1..layer3 of a ResNet (detectron2's ``res4`` output), keys kept torchvision's."""

    def __init__(self, trunk: nn.Module):
        super().__init__()
        self.conv1, self.bn1 = trunk.conv1, trunk.bn1
        self.act1 = trunk.act1 if hasattr(trunk, "act1") else trunk.relu   # timm / torchvision name
        self.maxpool = trunk.maxpool
        self.layer1, self.layer2, self.layer3 = trunk.layer1, trunk.layer2, trunk.layer3
        self.out_channels = _channels_out(trunk.layer3)

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        return OrderedDict([("0", self.layer3(self.layer2(self.layer1(x))))])


def _channels_out(stage: nn.Sequential) -> int:
    last = stage[-1]
    conv = getattr(last, "conv3", None) or last.conv2
    return conv.out_channels


class Res5Head(nn.Module):
    """res5 (layer4, stride 2) on 14x14 RoI features, then MoCo's extra BatchNorm -> (N, C5, 7, 7)."""

    def __init__(self, layer4: nn.Sequential, extra_norm: bool):
        super().__init__()
        self.res5 = layer4
        self.out_channels = _channels_out(layer4)
        self.norm = nn.BatchNorm2d(self.out_channels) if extra_norm else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.res5(x))


class C4RoIPool(nn.Module):
    """torchvision's ``box_roi_pool`` interface over the package's one RoIAlign helper."""

    def __init__(self, output_size: int, stride: int):
        super().__init__()
        self.output_size = output_size
        self.stride = stride

    def forward(self, features: Dict[str, Tensor], boxes: List[Tensor], image_shapes=None) -> Tensor:
        # float32 features keep the RoI coordinates in float32 under AMP (fp16 rounds them to 1 px
        # beyond 1024); autocast casts the pooled features back for res5.
        c4 = features["0"].float()
        rois = boxes_to_rois(list(boxes), len(boxes), device=c4.device)
        return region_align(c4, rois, self.output_size, self.stride)


class Float32BoxCoder(BoxCoder):
    """torchvision's ``BoxCoder`` whose ``decode`` runs in float32 with autocast off.

    The stock decode casts the reference boxes (anchors, proposals) to the dtype of ``rel_codes``;
    under bf16 autocast that rounds a box at 1333 px by up to 4 px before any delta is applied.
    """

    def decode(self, rel_codes: Tensor, boxes: List[Tensor]) -> Tensor:
        with torch.autocast(rel_codes.device.type, enabled=False):
            return super().decode(rel_codes.float(), [b.float() for b in boxes])


class Float32AnchorGenerator(AnchorGenerator):
    """torchvision's ``AnchorGenerator`` with float32 anchors whatever the dtype of the feature maps."""

    def forward(self, image_list: ImageList, feature_maps: List[Tensor]) -> List[Tensor]:
        # the stock generator reads only shape, dtype and device of the maps: a broadcast float32
        # scalar carries them without copying the map
        like = [torch.zeros((), dtype=torch.float32, device=f.device).expand(f.shape) for f in feature_maps]
        return super().forward(image_list, like)


class _BoxPredictor(nn.Module):
    # detectron2's FastRCNNOutputLayers init: N(0, 0.01) scores, N(0, 0.001) deltas, zero bias.
    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes + 1)
        self.bbox_pred = nn.Linear(in_channels, (num_classes + 1) * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        return self.cls_score(x), self.bbox_pred(x)


class _MaskHead(nn.Sequential):
    # detectron2's MaskRCNNConvUpsampleHead with NUM_CONV 0 (its C4 default): deconv 2x, ReLU.
    def __init__(self, in_channels: int, dim: int = 256):
        super().__init__(nn.ConvTranspose2d(in_channels, dim, 2, stride=2), nn.ReLU(inplace=True))
        nn.init.kaiming_normal_(self[0].weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self[0].bias)


class _MaskPredictor(nn.Conv2d):
    def __init__(self, dim: int, num_classes: int):
        super().__init__(dim, num_classes + 1, 1)
        nn.init.normal_(self.weight, std=0.001)
        nn.init.zeros_(self.bias)


def box_head_losses(class_logits: Tensor, box_regression: Tensor, labels: List[Tensor],
                    regression_targets: List[Tensor]) -> Tuple[Tensor, Tensor]:
    """detectron2's Fast R-CNN losses: cross-entropy over the K+1 classes and L1 (its default
    SMOOTH_L1_BETA 0) on the ground-truth class's deltas of foreground RoIs, summed and divided
    by the number of sampled RoIs."""
    labels_all = torch.cat(labels)
    targets = torch.cat(regression_targets)
    loss_cls = F.cross_entropy(class_logits, labels_all)
    fg = torch.nonzero(labels_all > 0).squeeze(1)
    deltas = box_regression.reshape(labels_all.shape[0], -1, 4)[fg, labels_all[fg]]
    loss_box = F.l1_loss(deltas, targets[fg], reduction="sum") / max(labels_all.numel(), 1)
    return loss_cls, loss_box


class _RPN(RegionProposalNetwork):
    """torchvision's RPN with detectron2's losses: objectness BCE and L1 anchor-delta loss
    (SMOOTH_L1_BETA 0), both summed over the sampled anchors and divided by
    ``batch_size_per_image * images``."""

    def compute_loss(self, objectness, pred_bbox_deltas, labels, regression_targets):
        pos, neg = self.fg_bg_sampler(labels)
        pos, neg = torch.cat(pos).bool(), torch.cat(neg).bool()
        sampled = pos | neg
        norm = self.fg_bg_sampler.batch_size_per_image * len(labels)
        target = torch.cat(labels)
        loss_obj = F.binary_cross_entropy_with_logits(
            objectness.flatten()[sampled], target[sampled], reduction="sum") / norm
        loss_box = F.l1_loss(pred_bbox_deltas[pos], torch.cat(regression_targets)[pos], reduction="sum") / norm
        return loss_obj, loss_box


class Res5ROIHeads(RoIHeads):
    """torchvision ``RoIHeads`` whose box and mask branches share one res5 transform.

    As detectron2's Res5ROIHeads: in training the mask head reads the res5 features of the
    foreground proposals already computed for the box head; at test time res5 runs again on
    the final boxes.
    """

    def forward(self, features, proposals, image_shapes, targets=None):
        if self.training:
            proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        res5 = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(res5.mean(dim=(2, 3)))
        if self.training:
            loss_cls, loss_box = box_head_losses(class_logits, box_regression, labels, regression_targets)
            losses = {"loss_classifier": loss_cls, "loss_box_reg": loss_box}
            if self.has_mask():
                fg = [lab > 0 for lab in labels]
                mask_logits = self.mask_predictor(self.mask_head(res5[torch.cat(fg)]))
                losses["loss_mask"] = maskrcnn_loss(
                    mask_logits, [p[f] for p, f in zip(proposals, fg)], [t["masks"] for t in targets],
                    [t["labels"] for t in targets], [m[f] for m, f in zip(matched_idxs, fg)])
            return [], losses
        # float32 scores: bf16 ones near 1 are 0.004 apart and tie, which reorders detections for AP
        boxes, scores, labels = self.postprocess_detections(class_logits.float(), box_regression.float(), proposals,
                                                            image_shapes)
        result = [{"boxes": b, "labels": lab, "scores": s} for b, s, lab in zip(boxes, scores, labels)]
        if self.has_mask():
            res5 = self.box_head(self.box_roi_pool(features, boxes, image_shapes))
            probs = maskrcnn_inference(self.mask_predictor(self.mask_head(res5)), labels)
            for r, p in zip(result, probs):
                r["masks"] = p
        return result, {}


def build_c4_detector(trunk: nn.Module, cfg: C4DetectorConfig) -> GeneralizedRCNN:
    """Faster R-CNN (``cfg.mask_on`` False) or Mask R-CNN in the C4 form around a ResNet trunk.

    ``trunk`` is a zoo model (or any timm/torchvision-layout ResNet); its modules are used in
    place (the detector owns them afterwards) and its ``fc`` is not used.
    """
    backbone = C4Backbone(trunk)
    stride = 16
    anchors = Float32AnchorGenerator((tuple(cfg.anchor_sizes),), (tuple(cfg.aspect_ratios),))
    rpn = _RPN(
        anchors, RPNHead(backbone.out_channels, anchors.num_anchors_per_location()[0]),
        fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=cfg.rpn_batch_per_image,
        positive_fraction=0.5,
        pre_nms_top_n=dict(training=cfg.rpn_pre_nms_train, testing=cfg.rpn_pre_nms_test),
        post_nms_top_n=dict(training=cfg.rpn_post_nms_train, testing=cfg.rpn_post_nms_test),
        nms_thresh=0.7)
    rpn.box_coder = Float32BoxCoder(rpn.box_coder.weights, rpn.box_coder.bbox_xform_clip)
    pool = C4RoIPool(cfg.roi_size, stride)
    head = Res5Head(trunk.layer4, cfg.extra_norm)
    mask_kw = {}
    if cfg.mask_on:
        mask_kw = dict(mask_roi_pool=pool, mask_head=_MaskHead(head.out_channels),
                       mask_predictor=_MaskPredictor(256, cfg.num_classes))
    roi_heads = Res5ROIHeads(
        pool, head, _BoxPredictor(head.out_channels, cfg.num_classes),
        fg_iou_thresh=0.5, bg_iou_thresh=0.5, batch_size_per_image=cfg.roi_batch_per_image,
        positive_fraction=cfg.roi_positive_fraction, bbox_reg_weights=None,
        score_thresh=cfg.score_thresh, nms_thresh=cfg.nms_thresh,
        detections_per_img=cfg.detections_per_image, **mask_kw)
    roi_heads.box_coder = Float32BoxCoder(roi_heads.box_coder.weights, roi_heads.box_coder.bbox_xform_clip)
    transform = _ScaleTransform(cfg.min_size_train, cfg.min_size_test, cfg.max_size)
    return GeneralizedRCNN(backbone, rpn, roi_heads, transform)


class _ScaleTransform(GeneralizedRCNNTransform):
    """Normalise and resize: shorter side drawn from the train scales in training, the test
    scale in eval (detectron2's ResizeShortestEdge); no padding to a multiple of 32, as
    detectron2's C4 models (SIZE_DIVISIBILITY 0)."""

    def __init__(self, train_sizes: Sequence[int], test_size: int, max_size: int):
        super().__init__(tuple(train_sizes), max_size, list(_MEAN), list(_STD), size_divisible=1)
        self.train_sizes = tuple(train_sizes)
        self.test_size = test_size

    def train(self, mode: bool = True):
        # torchvision draws from min_size in training and uses min_size[-1] in eval.
        self.min_size = self.train_sizes if mode else (self.test_size,)
        return super().train(mode)
