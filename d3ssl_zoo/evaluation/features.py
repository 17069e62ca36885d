"""Model adapter of the diagnostics: per-stage feature maps and region features of any ResNet.

The diagnostics of the paper (Sec. 3.1, 3.2, 5.3) read the four ResNet stages ``layer1..layer4``
(C2..C5). Models exposing timm's ``forward_intermediates`` (every timm ResNet, hence every zoo
model) are read through it; any other module whose stages are submodules named ``layer1..layer4``
(torchvision's resnets, small test networks) is read through forward hooks.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
from typing import Dict, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from d3ssl_zoo.boxes import region_align, region_align_pooled
from d3ssl_zoo.evaluation.objects import IMAGENET_MEAN, IMAGENET_STD
from d3ssl_zoo.factory import load_backbone
from d3ssl_zoo.models.d3ssl_resnet import REGIONS_PER_PASS

__all__ = ["STAGES", "eval_mode", "load_model", "stage_maps", "stage_strides", "region_features", "c5_region_features",
           "c4_head_region_features", "model_mean_std", "model_device", "model_fingerprint", "stage_region_features"]

STAGES = ("layer1", "layer2", "layer3", "layer4")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode inside the block; its train/eval state is restored afterwards, also on error."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def load_model(spec: str, checkpoint: Optional[str] = None, device: Optional[str] = None) -> nn.Module:
    """Build a backbone from a zoo name/tag, timm name, 'torchvision:resnetX' or a
    save_pretrained folder, optionally with a state-dict file, in eval mode on ``device``."""
    model = load_backbone(spec, checkpoint=checkpoint)
    return model.to(device or "cpu").eval()


def _stride(input_hw: Sequence[int], fmap: Tensor) -> int:
    # feature maps of odd-sized inputs are rounded up by padding; the nominal stride is the power of 2
    return 2 ** round(math.log2(input_hw[0] / fmap.shape[-2]))


def stage_maps(model: nn.Module, x: Tensor, stages: Sequence[str] = STAGES) -> Dict[str, Tensor]:
    """Feature maps ``{stage: (B, C, h, w)}`` of the named ResNet stages for images ``x``."""
    if hasattr(model, "forward_intermediates") and hasattr(model, "feature_info"):
        modules = [f["module"] for f in model.feature_info]
        missing = [s for s in stages if s not in modules]
        if missing:
            raise ValueError(f"model has no stage(s) {missing} in feature_info {modules}; "
                             f"the diagnostics need a ResNet with stages {STAGES}")
        indices = [modules.index(s) for s in stages]
        maps = model.forward_intermediates(x, indices=indices, intermediates_only=True, stop_early=True)
        return dict(zip(stages, maps))
    captured: Dict[str, Tensor] = {}
    handles = []
    try:
        for s in stages:
            try:
                module = model.get_submodule(s)
            except AttributeError as e:
                raise ValueError(f"model {type(model).__name__} has no submodule '{s}'; the diagnostics "
                                 f"need a ResNet with stages {STAGES} (timm, torchvision or d3ssl_zoo)") from e
            handles.append(module.register_forward_hook(
                lambda _m, _inp, out, name=s: captured.__setitem__(name, out)))
        model(x)
    finally:
        for h in handles:
            h.remove()
    return {s: captured[s] for s in stages}


def stage_strides(input_hw: Sequence[int], maps: Dict[str, Tensor]) -> Dict[str, int]:
    """Nominal stride of each map w.r.t. an input of size ``input_hw``."""
    return {s: _stride(input_hw, m) for s, m in maps.items()}


def region_features(fmap: Tensor, rois: Tensor, stride: int, output_size: int = 7) -> Tensor:
    """RoIAlign ``output_size`` x ``output_size`` of pixel ``(N, 5)`` RoIs, then average pooling
    -> ``(N, C)`` (the region feature of Sec. 5.3, used for every stage)."""
    return region_align_pooled(fmap, rois, output_size, stride)


def c5_region_features(model: nn.Module, x: Tensor, rois: Tensor) -> Tensor:
    """O-KNN object features (Sec. 5.3): RoIAlign 7x7 on C5, average pool, L2-normalise."""
    c5 = stage_maps(model, x, ("layer4",))["layer4"]
    feats = region_features(c5, rois, _stride(x.shape[-2:], c5), 7)
    return F.normalize(feats.float(), dim=1)


def c4_head_region_features(model: nn.Module, x: Tensor, rois: Tensor, roi_size: int = 14) -> Tensor:
    """Object features through the pre-training path instead: RoIAlign ``roi_size`` on C4, res5 on
    the RoI, average pool, L2-normalise (``forward_c4`` + ``forward_region_head`` of a C4 model;
    SoCo's head uses 14 on 224 px views). A diagnostic: it tells whether the full-image C5 read of
    O-KNN sees less than the region head that pre-training optimised."""
    if not (hasattr(model, "forward_c4") and hasattr(model, "forward_region_head")):
        raise TypeError(f"{type(model).__name__} has no C4 region head (forward_c4, forward_region_head); "
                        f"the c4_head features need a d3ssl_zoo C4 model, use the c5 features otherwise")
    c4 = model.forward_c4(x)
    stride = _stride(x.shape[-2:], c4)
    # in eval mode, RoIAlign and res5 on a bounded number of boxes at a time: any number of objects fits in memory
    parts = [rois] if model.training else rois.split(REGIONS_PER_PASS)
    feats = [model.forward_region_head(region_align(c4, part, roi_size, stride)) for part in parts]
    return F.normalize(torch.cat(feats).float(), dim=1)


def model_mean_std(model: nn.Module):
    """Input normalisation of ``model`` (timm's ``pretrained_cfg``), ImageNet's by default."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))


def model_device(model: nn.Module, device=None) -> torch.device:
    """``device`` if given, else where the model's first parameter/buffer lives (cpu if none)."""
    if device is not None:
        return torch.device(device)
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def model_fingerprint(model: nn.Module) -> str:
    """sha256 of the model's state (names, shapes, values): the feature-cache key of a model."""
    h = hashlib.sha256(type(model).__name__.encode())
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def stage_region_features(model: nn.Module, x: Tensor, rois: Tensor, box_size: int,
                          stages: Sequence[str] = STAGES) -> Dict[str, Tensor]:
    """Per-stage features ``{stage: (N, C)}`` of square ``box_size`` RoIs placed on the stride grid.

    The RoIAlign grid has one bin per feature cell (``box_size / stride``), so each sample falls
    on a cell centre and the feature is the mean of exactly the cells inside the box: nothing
    is interpolated across the box border (used by the coupling rate and the positional MCS).
    """
    maps = stage_maps(model, x, stages)
    strides = stage_strides(x.shape[-2:], maps)
    return {s: region_features(maps[s], rois, strides[s], max(1, box_size // strides[s])) for s in stages}
