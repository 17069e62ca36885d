"""ResNet-C4 backbones of D3SSL and SoCo in timm's (= torchvision's) ResNet layout.

"C4" is how pre-training splits the network (paper Eq. 1): the encoder f^E is the stem and
layer1..layer3 (C4, stride 16); the head f^H is layer4 (res5) applied to RoIAlign'ed C4
features, then average pooling. The parameters are exactly those of a plain ResNet, so every
checkpoint is also a ``resnet50`` state dict and every timm/torchvision ``resnet50`` state dict
loads here strictly.

The module name is deliberately not ``resnet``: timm keys its module registry by the last
part of the module name.
"""
from __future__ import annotations

from typing import Any, Dict

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._builder import resolve_pretrained_cfg
from timm.models._manipulate import checkpoint_seq
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import Tensor

from ..boxes import BoxesLike, boxes_to_rois, check_rois_in_image, region_align, region_align_pooled
from ..hub import pretrained_state_dict
from ..tags import LICENSE, PAPER_ARXIV, PAPER_TITLE, TAGS, recipe_path

__all__ = ["D3SSLResNet", "PADDING_MODES", "REGIONS_PER_PASS", "IMAGE_DTYPES", "d3ssl_r50c4", "soco_r50c4",
           "d3ssl_r18c4"]

#: RoIAlign output sizes of the region API: 14x14 on C4 feeds res5 (SoCo/Mask R-CNN C4
#: convention, res5 halves it to 7x7); 7x7 on C5 is the O-KNN protocol (paper §5.3).
C4_ROI_SIZE = 14
C5_ROI_SIZE = 7

#: In eval mode ``forward_regions`` runs RoIAlign and res5 on at most this many boxes at a time, so
#: any number of boxes fits in memory (512 RoI maps of a ResNet-50 are 400 MiB); each box's
#: embedding does not depend on the others then. In train mode BatchNorm normalises over all boxes,
#: so they go through res5 as one batch, as in pre-training.
REGIONS_PER_PASS = 512

#: Image dtypes the region API takes (float16/bfloat16 under autocast), besides the parameters' own.
IMAGE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

#: ``torch.nn.Conv2d`` padding modes. "zeros" is ResNet's (every published checkpoint). Zero padding
#: lets a CNN read how far a pixel is from the image border, i.e. its absolute position: the paper's
#: positional bias (Sec. 3.2, after Islam et al. 2021 and Xu et al., CVPR 2021; also Kayhan & van
#: Gemert, CVPR 2020). "circular" makes every conv equivariant to circular shifts, so on a flat
#: background a region's features no longer tell where it is (a diagnostic, not the paper's model).
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


class D3SSLResNet(ResNet):
    """A timm ``ResNet`` with the region API of dense SSL (paper Eq. 1)."""

    def __init__(self, *args, padding_mode: str = "zeros", **kwargs):
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES} (torch.nn.Conv2d's), got {padding_mode!r}; "
                             f"'zeros' is ResNet's own")
        super().__init__(*args, **kwargs)
        # The weights do not depend on it, so a state dict loads whatever the mode; save_pretrained
        # writes a non-default mode into config.json's model_args, which timm passes back here.
        self.padding_mode: str = padding_mode
        for m in self.modules():
            if isinstance(m, torch.nn.Conv2d) and any(m.padding):
                m.padding_mode = padding_mode
        # Plain ints rather than properties over the untyped ``feature_info`` list: TorchScript
        # compiles properties, and cannot type that list.
        self.c4_channels: int = self.feature_info[3]["num_chs"]
        self.c4_stride: int = self.feature_info[3]["reduction"]
        self.c5_stride: int = self.feature_info[4]["reduction"]

    def forward_c4(self, x: Tensor) -> Tensor:
        """Encoder f^E: stem + layer1..layer3 -> (B, C4, H/16, W/16)."""
        self._check_images(x)
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        stages = [self.layer1, self.layer2, self.layer3]
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(stages, x, flatten=True)
        for stage in stages:
            x = stage(x)
        return x

    def forward_region_head(self, roi_features: Tensor) -> Tensor:
        """Head f^H without the projector: res5 (layer4) on RoI features, then average pooling."""
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.layer4, roi_features)
        else:
            x = self.layer4(roi_features)
        return x.mean(dim=(2, 3))

    def _check_images(self, x: Tensor) -> None:
        """Raise ``ValueError`` saying what to fix unless ``x`` is a batch of images this model reads."""
        channels = self.conv1.in_channels
        expected = f"a (B, {channels}, H, W) float32/float16/bfloat16 tensor"
        if not isinstance(x, Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"images must be {expected}, got {shape}; for one image add the batch dimension: x[None]")
        if not torch.is_floating_point(x):
            raise ValueError(f"images must be a normalised float tensor, got dtype {x.dtype}; convert with "
                             f"x.float() / 255, then normalise with the model's pretrained_cfg mean and std")
        if x.dtype not in IMAGE_DTYPES and x.dtype != self.conv1.weight.dtype:
            raise ValueError(f"images must be {expected}, got dtype {x.dtype} (the model's weights are "
                             f"{self.conv1.weight.dtype}); convert with x.float()")
        if x.shape[1] != channels:
            hint = " (RGB; drop an alpha channel with x[:, :3])" if channels == 3 and x.shape[1] == 4 else ""
            raise ValueError(f"images must be {expected}{hint}, got shape {tuple(x.shape)} with {x.shape[1]} in "
                             f"the channel dimension")

    def _region_inputs(self, x: Tensor, boxes: BoxesLike) -> Tensor:
        """Check the inputs of the region API and return the (N, 5) RoIs; errors say what to fix."""
        self._check_images(x)
        finite = torch.isfinite(x).flatten(1).all(dim=1)
        if not finite.all():
            bad = (~finite).nonzero().flatten().tolist()
            raise ValueError(f"images {bad} of the batch contain NaN or infinite values: their embeddings would be "
                             f"NaN; check how they were decoded and normalised (e.g. a std of 0)")
        rois = boxes_to_rois(boxes, x.shape[0], device=x.device)
        check_rois_in_image(rois, x.shape[-2], x.shape[-1])
        return rois

    def forward_regions(self, x: Tensor, boxes: BoxesLike) -> Tensor:
        """One embedding per box: RoIAlign 14x14 on C4 -> res5 -> average pool (Eq. 1).

        ``boxes``: a list of (Ni, 4) xyxy pixel tensors, one per image, or one (N, 5) tensor
        with the batch index first. Returns (N, num_features), boxes in input order. Any number of
        boxes: in eval mode they go through res5 :data:`REGIONS_PER_PASS` at a time.
        """
        rois = self._region_inputs(x, boxes)
        if rois.shape[0] == 0:
            return x.new_zeros(0, self.num_features)
        c4 = self.forward_c4(x)
        parts = [rois] if self.training else rois.split(REGIONS_PER_PASS)
        return torch.cat([self.forward_region_head(region_align(c4, part, C4_ROI_SIZE, self.c4_stride))
                          for part in parts])

    def forward_regions_c5(self, x: Tensor, boxes: BoxesLike) -> Tensor:
        """Full trunk, RoIAlign 7x7 on C5, average pool: the O-KNN features (paper §5.3)."""
        rois = self._region_inputs(x, boxes)
        if rois.shape[0] == 0:
            return x.new_zeros(0, self.num_features)
        c5 = self.forward_features(x)
        return region_align_pooled(c5, rois, C5_ROI_SIZE, self.c5_stride)


def _cfg(**kwargs) -> Dict[str, Any]:
    # SSL weights are headless: num_classes 0, no ImageNet label fields.
    return {
        "num_classes": 0, "input_size": (3, 224, 224), "pool_size": (7, 7), "crop_pct": 0.875,
        "interpolation": "bilinear", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "conv1", "classifier": "fc", "license": LICENSE, "paper_ids": PAPER_ARXIV,
        "paper_name": PAPER_TITLE, **kwargs,
    }


default_cfgs = generate_default_cfgs({
    **{t.name: _cfg(hf_hub_id=t.hf_hub_id, notes=(f"{t.source}; reproduce with {t.recipe}",))
       for t in TAGS},
    # Demo/test backbone: no published weights, train it with d3ssl_zoo/recipes/demo.yaml.
    "d3ssl_r18c4": _cfg(notes=(f"no published weights; train with {recipe_path('demo')}",)),
})


def _create(variant: str, pretrained: bool, **kwargs) -> D3SSLResNet:
    # A plain model starts from torchvision's BN init; pre-training recipes ask for SoCo's
    # zero-init of each block's last BN weight (model.zero_init_last in the recipe).
    kwargs.setdefault("zero_init_last", False)
    num_classes = kwargs.get("num_classes", 0)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes must be an integer >= 0, got {num_classes!r}: 0 for the headless backbone "
                         f"(the tags' default), N for a freshly initialised N-way classifier")
    cfg_dict = resolve_pretrained_cfg(variant, kwargs.pop("pretrained_cfg", None),
                                      kwargs.pop("pretrained_cfg_overlay", None)).to_dict()
    resolved = None
    if pretrained:
        # We fetch and check the weights ourselves (offline-aware, sha256, one clear error) and
        # hand timm the state dict; timm then adapts the classifier as for any of its models.
        resolved = pretrained_state_dict(cfg_dict, cache_dir=kwargs.get("cache_dir"))
        cfg_dict.update(state_dict=resolved.state_dict, source="")
    model = build_model_with_cfg(
        D3SSLResNet, variant, pretrained, pretrained_cfg=cfg_dict,
        pretrained_filter_fn=resolved.check_keys if resolved else None, **kwargs)
    if resolved is not None:
        model.pretrained_cfg.update(state_dict=None, file=resolved.path, source=resolved.source)
    return model


@register_model
def d3ssl_r50c4(pretrained: bool = False, **kwargs) -> D3SSLResNet:
    """ResNet-50-C4 pre-trained with D3SSL (default tag: coco_800ep)."""
    return _create("d3ssl_r50c4", pretrained, block=Bottleneck, layers=(3, 4, 6, 3), **kwargs)


@register_model
def soco_r50c4(pretrained: bool = False, **kwargs) -> D3SSLResNet:
    """ResNet-50-C4 pre-trained with SoCo, the paper's baseline (default tag: coco_800ep)."""
    return _create("soco_r50c4", pretrained, block=Bottleneck, layers=(3, 4, 6, 3), **kwargs)


@register_model
def d3ssl_r18c4(pretrained: bool = False, **kwargs) -> D3SSLResNet:
    """ResNet-18-C4 with the same region API, for demos and fast tests (no published weights)."""
    return _create("d3ssl_r18c4", pretrained, block=BasicBlock, layers=(2, 2, 2, 2), **kwargs)
