"""Export a zoo backbone for other detection codebases (docs/transfer.md): detectron2, torchvision, mmdet.

* ``detectron2``: the C4 pickle of ``detectron2.py`` plus the two ready configs (VOC07+12
  Faster R-CNN R50-C4 24k, COCO Mask R-CNN R50-C4 1x) next to it, pointing at it.
* ``torchvision``: the plain ResNet state dict (``torchvision.models.resnet50()`` keys without
  ``fc``; load with ``strict=False`` or into a headless model), ``.pth`` or ``.safetensors``.
* ``mmdet``: ``{"state_dict": {"backbone.<key>": tensor}, "meta": {...}}`` for mmdetection's
  ``load_from`` (or ``init_cfg=dict(type='Pretrained', prefix='backbone.', checkpoint=...)``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping

import torch
from torch import Tensor

from .detectron2 import DETECTRON2_TASKS, detectron2_export_check, write_detectron2_config, write_detectron2_pickle
from .foreign import BACKBONE_KEY, PathLike

__all__ = ["EXPORT_TARGETS", "ExportReport", "backbone_state_dict", "export_state_dict", "export_backbone"]

EXPORT_TARGETS = ("detectron2", "torchvision", "mmdet")


@dataclass
class ExportReport:
    target: str
    out: str
    num_tensors: int
    configs: List[str] = field(default_factory=list)

    def summary(self) -> str:
        text = f"{self.target}: {self.num_tensors} tensors written to {self.out}"
        return text + "".join(f"\n  config: {c}" for c in self.configs)


def backbone_state_dict(model: torch.nn.Module) -> Dict[str, Tensor]:
    """The ResNet trunk of a zoo/timm/torchvision model in torchvision names (classifier left out)."""
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if BACKBONE_KEY.match(k)}
    if "conv1.weight" not in sd or "layer4.0.conv1.weight" not in sd:
        raise ValueError("the model is not a torchvision/timm-layout ResNet (no conv1 / layer4 keys)")
    return sd


def export_state_dict(state_dict: Mapping[str, Tensor], target: str, out: PathLike, *,
                      configs: bool = True, author: str = "d3ssl_zoo") -> ExportReport:
    """Write a trunk state dict (torchvision names) in ``target``'s format to ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if target == "detectron2":
        why = detectron2_export_check(state_dict)
        if why:
            raise ValueError(why)
        if out.suffix != ".pkl":
            raise ValueError(f"detectron2 reads its converted weights from a .pkl file; got {out}")
        model = write_detectron2_pickle(state_dict, out, author=author)
        written = []
        if configs:
            depth = 101 if "layer3.22.conv1.weight" in state_dict else 50
            for task, spec in DETECTRON2_TASKS.items():
                cfg_path = out.with_name(f"{out.stem}_{spec['filename']}")
                written.append(str(write_detectron2_config(task, cfg_path, weights=str(out.resolve()), depth=depth)))
        return ExportReport(target, str(out), len(model), written)
    if target == "torchvision":
        sd = dict(state_dict)
        if out.suffix == ".safetensors":
            from safetensors.torch import save_file
            save_file(sd, str(out), metadata={"format": "pt"})
        else:
            torch.save(sd, out)
        return ExportReport(target, str(out), len(sd))
    if target == "mmdet":
        sd = {f"backbone.{k}": v for k, v in state_dict.items()}
        torch.save({"state_dict": sd, "meta": {"author": author, "layout": "mmdet ResNet backbone"}}, out)
        return ExportReport(target, str(out), len(sd))
    raise ValueError(f"unknown export target {target!r}; choose one of {', '.join(EXPORT_TARGETS)}")


def export_backbone(spec: str, target: str, out: PathLike, *, configs: bool = True) -> ExportReport:
    """Load ``spec`` with ``d3ssl_zoo.load_backbone`` (zoo name/tag, save_pretrained folder,
    ``torchvision:resnet50``, timm name) and export its trunk to ``target``."""
    import d3ssl_zoo

    model = d3ssl_zoo.load_backbone(spec)
    return export_state_dict(backbone_state_dict(model), target, out, configs=configs)
