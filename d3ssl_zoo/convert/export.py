"""Export a zoo backbone for other detection codebases (docs/transfer.md): detectron2, torchvision, mmdet.

* ``detectron2``: the C4 pickle of ``detectron2.py`` plus the two ready configs (VOC07+12
  Faster R-CNN R50-C4 24k, COCO Mask R-CNN R50-C4 1x) next to it, pointing at it.
* ``torchvision``: the plain ResNet state dict (``torchvision.models.resnet50()`` keys without
  ``fc``; load with ``strict=False`` or into a headless model), ``.pth`` or ``.safetensors``.
* ``mmdet``: ``{"state_dict": {"backbone.<key>": tensor}, "meta": {...}}`` for mmdetection's
  ``load_from`` (or ``init_cfg=dict(type='Pretrained', prefix='backbone.', checkpoint=...)``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping

import torch
from torch import Tensor

from d3ssl_zoo.disk import check_destination

from .detectron2 import DETECTRON2_TASKS, detectron2_export_check, write_detectron2_config, write_detectron2_pickle
from .foreign import BACKBONE_KEY, PathLike

__all__ = ["EXPORT_TARGETS", "ExportReport", "backbone_state_dict", "check_export_out", "export_state_dict",
           "export_backbone"]

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


def _config_path(out: Path, task: str) -> Path:
    return out.with_name(f"{out.stem}_{DETECTRON2_TASKS[task]['filename']}")


def check_export_out(target: str, out: PathLike, *, configs: bool = True, overwrite: bool = False) -> None:
    """Refuse, before any work, an export the files of which could not be written or would
    replace existing files (unless ``overwrite``): the target, ``out``'s suffix, a directory in
    the way, existing files, a folder that cannot be written."""
    if target not in EXPORT_TARGETS:
        raise ValueError(f"unknown export target {target!r}; choose one of {', '.join(EXPORT_TARGETS)}")
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"{out} is a directory; the export is one file: name it, e.g. {out / 'model.pkl'} for "
                         f"detectron2 or {out / 'model.pth'}")
    if target == "detectron2" and out.suffix != ".pkl":
        raise ValueError(f"detectron2 reads its converted weights from a .pkl file; got {out}")
    paths = [out] + ([_config_path(out, task) for task in DETECTRON2_TASKS]
                     if target == "detectron2" and configs else [])
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise ValueError(f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; choose another "
                         f"output file, or replace {'it' if len(existing) == 1 else 'them'} with --overwrite "
                         f"(overwrite=True in Python)")
    check_destination(out.parent, f"export {out}")


def _write_atomically(out: Path, write: Callable[[Path], object]):
    """``write(temp)`` next to ``out``, then rename: a failed write leaves any earlier ``out`` as it was."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        result = write(tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return result


def export_state_dict(state_dict: Mapping[str, Tensor], target: str, out: PathLike, *,
                      configs: bool = True, author: str = "d3ssl_zoo", overwrite: bool = False) -> ExportReport:
    """Write a trunk state dict (torchvision names) in ``target``'s format to ``out``.

    Existing files are replaced only with ``overwrite=True`` (:func:`check_export_out`).
    """
    check_export_out(target, out, configs=configs, overwrite=overwrite)
    out = Path(out)
    if target == "detectron2":
        why = detectron2_export_check(state_dict)
        if why:
            raise ValueError(why)
    out.parent.mkdir(parents=True, exist_ok=True)
    if target == "detectron2":
        model = _write_atomically(out, lambda p: write_detectron2_pickle(state_dict, p, author=author))
        written = []
        if configs:
            depth = 101 if "layer3.22.conv1.weight" in state_dict else 50
            for task in DETECTRON2_TASKS:
                cfg = write_detectron2_config(task, _config_path(out, task), weights=str(out.resolve()), depth=depth)
                written.append(str(cfg))
        return ExportReport(target, str(out), len(model), written)
    if target == "torchvision":
        sd = dict(state_dict)
        if out.suffix == ".safetensors":
            from safetensors.torch import save_file
            _write_atomically(out, lambda p: save_file(sd, str(p), metadata={"format": "pt"}))
        else:
            _write_atomically(out, lambda p: torch.save(sd, p))
        return ExportReport(target, str(out), len(sd))
    sd = {f"backbone.{k}": v for k, v in state_dict.items()}  # mmdet
    _write_atomically(out, lambda p: torch.save(
        {"state_dict": sd, "meta": {"author": author, "layout": "mmdet ResNet backbone"}}, p))
    return ExportReport(target, str(out), len(sd))


def export_backbone(spec: str, target: str, out: PathLike, *, configs: bool = True,
                    overwrite: bool = False) -> ExportReport:
    """Load ``spec`` with ``d3ssl_zoo.load_backbone`` (zoo name/tag, save_pretrained folder,
    ``torchvision:resnet50``, timm name) and export its trunk to ``target``; ``out`` is checked
    (:func:`check_export_out`) before the model is loaded."""
    import d3ssl_zoo

    check_export_out(target, out, configs=configs, overwrite=overwrite)
    model = d3ssl_zoo.load_backbone(spec)
    return export_state_dict(backbone_state_dict(model), target, out, configs=configs, overwrite=overwrite)
