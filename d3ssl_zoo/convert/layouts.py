"""Import official checkpoints of dense/instance SSL methods into the zoo (docs/transfer.md).

Each layout is one entry of ``LAYOUTS``: where the state dict sits in the file (``containers``),
which key prefix holds the query/online ResNet (``prefixes``, first present wins) and how to
recognise it from the key names alone (``detect``). Adding a layout = adding one entry.

The backbone ends in torchvision's ResNet key names (``conv1``, ``bn1``, ``layer1..layer4``),
which is exactly the zoo's layout (docs/models.md), and is written with ``d3ssl_zoo.save_pretrained``.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

from d3ssl_zoo.disk import check_destination

from .foreign import (
    BACKBONE_KEY,
    STEM_AND_STAGES,
    PathLike,
    is_state_dict,
    read_checkpoint,
    resnet_arch,
)

__all__ = ["Layout", "LAYOUTS", "FORMATS", "ConvertReport", "detect_layout", "extract_backbone",
           "zoo_arch_for", "convert_checkpoint", "key_prefixes"]


def _has(keys: Sequence[str], prefix: str) -> bool:
    return any(k.startswith(prefix) for k in keys)


def _conv_projector(sd: Mapping[str, Tensor]) -> bool:
    # PixPro's projector is a 1x1-conv MLP (4-D weights); SoCo's is a linear MLP (2-D weights).
    w = sd.get("module.projector.linear1.weight")
    return w is not None and w.dim() == 4


@dataclass(frozen=True)
class Layout:
    """Where one public implementation keeps the backbone inside its checkpoint."""

    name: str
    source: str
    containers: Tuple[str, ...]          # top-level keys holding the state dict ("" = the file itself)
    prefixes: Tuple[str, ...]            # backbone key prefix inside it, first present wins
    detect: Optional[Callable[[Mapping[str, Tensor]], bool]]


LAYOUTS: Dict[str, Layout] = {layout.name: layout for layout in (
    Layout("soco", "SoCo (hologerry/SoCo): ckpt['model'] with module.encoder / encoder_k / projector / "
           "predictor (linear MLPs)", ("model", ""), ("module.encoder.",),
           lambda sd: _has(list(sd), "module.encoder.conv1.") and _has(list(sd), "module.predictor.")
           and not _conv_projector(sd) and not _has(list(sd), "module.value_transform.")),
    Layout("pixpro", "PixPro (zdaxie/PixPro): ckpt['model'] with module.encoder / encoder_k / 1x1-conv "
           "projector / value_transform", ("model", ""), ("module.encoder.",),
           lambda sd: _has(list(sd), "module.encoder.conv1.")),
    Layout("moco", "MoCo v1/v2 (facebookresearch/moco): ckpt['state_dict'] with module.encoder_q / "
           "encoder_k / queue", ("state_dict", ""), ("module.encoder_q.", "encoder_q."),
           lambda sd: _has(list(sd), "module.encoder_q.conv1.") or _has(list(sd), "encoder_q.conv1.")),
    Layout("densecl", "DenseCL (WXinlong/DenseCL, OpenSelfSup): ckpt['state_dict'] with backbone.* and "
           "encoder_q.0.* (or the extracted backbone)", ("state_dict", ""), ("backbone.", "encoder_q.0.", ""),
           lambda sd: _has(list(sd), "encoder_q.0.conv1.")),
    Layout("mmdet", "mmdetection/mmselfsup backbone: state_dict with backbone.* only (what "
           "`d3ssl-zoo export --to mmdet` writes)", ("state_dict", ""), ("backbone.",),
           lambda sd: _has(list(sd), "backbone.conv1.") and not _has(list(sd), "encoder_q.")),
    Layout("timm", "timm training checkpoint: ckpt['state_dict'] (optionally module.-prefixed) next to "
           "'arch'; timm's released resnet files are plain torchvision keys", ("state_dict", ""), ("module.", ""),
           None),   # same keys as torchvision: told apart by the file's 'arch' entry in detect_layout
    Layout("torchvision", "plain torchvision/timm ResNet state dict (conv1, bn1, layer1..4, fc)",
           ("state_dict", "model", ""), ("", "module."),
           lambda sd: "conv1.weight" in sd or "module.conv1.weight" in sd),
)}

#: Values of ``--format``.
FORMATS = ("auto",) + tuple(LAYOUTS)


def key_prefixes(keys: Sequence[str]) -> Dict[str, int]:
    """Prefix before the ResNet trunk name of each key (or its first two parts), with counts."""
    out: Counter = Counter()
    for k in keys:
        parts = k.split(".")
        cut = next((i for i, p in enumerate(parts) if p in STEM_AND_STAGES), None)
        out[".".join(parts[:cut]) + "." if cut else ".".join(parts[:2])] += 1
    return dict(out.most_common())


def _candidates(ckpt: Mapping[str, object], containers: Sequence[str]) -> List[Tuple[str, Mapping[str, Tensor]]]:
    out = []
    for c in containers:
        obj = ckpt if c == "" else ckpt.get(c)
        if is_state_dict(obj):
            out.append((c, obj))
    return out


def detect_layout(ckpt: Mapping[str, object]) -> Tuple[str, str]:
    """Name the layout of a loaded checkpoint: returns ``(layout name, container key)``.

    Raises ``ValueError`` listing the top-level keys and the key prefixes seen when no layout
    matches.
    """
    for name, layout in LAYOUTS.items():
        if name in ("timm", "torchvision"):   # plain keys: checked last, below
            continue
        for container, sd in _candidates(ckpt, layout.containers):
            if layout.detect(sd):
                return name, container
    plain = LAYOUTS["torchvision"]
    for container, sd in _candidates(ckpt, plain.containers):
        if plain.detect(sd):
            # timm's train.py saves {'arch', 'state_dict', 'args', ...}; torchvision files are flat.
            return ("timm" if container == "state_dict" and "arch" in ckpt else "torchvision"), container
    seen: Dict[str, int] = {}
    for c in ("", "state_dict", "model", "state_dict_ema", "model_ema"):
        obj = ckpt if c == "" else ckpt.get(c)
        if isinstance(obj, Mapping):
            seen.update({(f"{c}/" if c else "") + p: n for p, n in key_prefixes(
                [k for k, v in obj.items() if isinstance(v, Tensor)]).items()})
    raise ValueError(
        "unknown checkpoint layout: none of " + ", ".join(LAYOUTS) + " matches. Top-level keys: "
        f"{sorted(map(str, ckpt))[:20]}; key prefixes seen (with tensor counts): {seen or 'none'}. "
        "Pass --format explicitly if one of the layouts applies.")


def extract_backbone(ckpt: Mapping[str, object], layout: str,
                     container: Optional[str] = None) -> Tuple[Dict[str, Tensor], List[str], Dict[str, int]]:
    """Cut the ResNet trunk out of a checkpoint in ``layout``.

    Returns the trunk in torchvision key names (``fc`` and other head keys under the backbone
    prefix dropped), the dropped keys under that prefix (e.g. MoCo v2's MLP ``fc.0``), and the
    prefixes (with counts) of everything else in the file (momentum encoder, projector, queue).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown format {layout!r}; choose one of {', '.join(FORMATS)}")
    spec = LAYOUTS[layout]
    cands = _candidates(ckpt, (container,) if container is not None else spec.containers)
    if not cands:
        raise ValueError(
            f"format {layout!r} expects the weights under one of {[c or '<top level>' for c in spec.containers]}, "
            f"but none of them is a dict of tensors; top-level keys: {sorted(map(str, ckpt))[:20]}")
    _, sd = cands[0]
    prefix = next((p for p in spec.prefixes if f"{p}conv1.weight" in sd), None)
    if prefix is None:
        raise ValueError(
            f"format {layout!r}: no ResNet stem found under prefixes {list(spec.prefixes)}; key prefixes "
            f"seen: {key_prefixes(list(sd))}. Use --format auto to detect the layout")
    trunk, dropped = {}, []
    for k, v in sd.items():
        if not k.startswith(prefix):
            continue
        name = k[len(prefix):]
        if BACKBONE_KEY.match(name):
            trunk[name] = v
        else:
            dropped.append(name)
    others = key_prefixes([k for k in sd if not k.startswith(prefix)]) if prefix else {}
    return trunk, dropped, others


#: Zoo architecture for each ResNet shape (block type, blocks per stage).
_ZOO_ARCHS = {("bottleneck", (3, 4, 6, 3)): "d3ssl_r50c4", ("basic", (2, 2, 2, 2)): "d3ssl_r18c4"}


def zoo_arch_for(state_dict: Mapping[str, Tensor], layout: str) -> str:
    """Zoo model name of a trunk: ResNet-50 -> d3ssl_r50c4 (soco_r50c4 for SoCo), ResNet-18 -> d3ssl_r18c4."""
    shape = resnet_arch(state_dict)
    if shape not in _ZOO_ARCHS:
        raise ValueError(
            f"the checkpoint holds a ResNet with {shape[0]} blocks {shape[1]}; the zoo has ResNet-50 "
            f"(bottleneck (3, 4, 6, 3)) and ResNet-18 (basic (2, 2, 2, 2)) architectures only")
    arch = _ZOO_ARCHS[shape]
    return "soco_r50c4" if layout == "soco" and arch == "d3ssl_r50c4" else arch


@dataclass
class ConvertReport:
    """What ``convert_checkpoint`` found and wrote."""

    source: str
    layout: str
    detected: bool
    model_name: str
    out_dir: str
    num_tensors: int
    dropped_under_prefix: List[str] = field(default_factory=list)
    ignored_prefixes: Dict[str, int] = field(default_factory=dict)
    filled_num_batches_tracked: int = 0

    def summary(self) -> str:
        how = "detected" if self.detected else "given"
        lines = [f"{self.source}: layout {self.layout} ({how}) -> {self.model_name}, "
                 f"{self.num_tensors} tensors written to {self.out_dir}"]
        if self.dropped_under_prefix:
            lines.append(f"  dropped (head of the backbone, not part of the zoo trunk): "
                         f"{', '.join(self.dropped_under_prefix)}")
        if self.ignored_prefixes:
            lines.append("  not the backbone, ignored: " + ", ".join(
                f"{p} ({n})" for p, n in self.ignored_prefixes.items()))
        if self.filled_num_batches_tracked:
            lines.append(f"  {self.filled_num_batches_tracked} BatchNorm num_batches_tracked counters were "
                         f"absent and set to 0 (they do not affect outputs)")
        return "\n".join(lines)


def convert_checkpoint(src: PathLike, out_dir: PathLike, fmt: str = "auto", *,
                       model_name: Optional[str] = None, tag: Optional[str] = None,
                       overwrite: bool = False) -> ConvertReport:
    """Convert an official checkpoint into a zoo folder (``model.safetensors`` + config + card).

    The trunk is loaded strictly into the zoo architecture before saving, so the folder loads
    with ``create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=...))``.
    ``out_dir`` is checked before the checkpoint is read: an existing file there, a folder that
    cannot be written, or one holding a ``config.json`` / ``README.md`` of the user's (not written by
    ``save_pretrained``; replaced only with ``overwrite=True``) is refused.
    """
    import d3ssl_zoo

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output folder {out} is an existing file; convert writes a folder (model.safetensors, "
                         f"config.json, README.md) there: remove the file or choose another output folder")
    check_destination(out, f"output folder {out}")
    d3ssl_zoo.hub.check_save_folder(out, overwrite=overwrite)
    ckpt = read_checkpoint(src)
    if fmt == "auto":
        layout, container = detect_layout(ckpt)
    else:
        layout, container = fmt, None
    trunk, dropped, others = extract_backbone(ckpt, layout, container)
    name = model_name or zoo_arch_for(trunk, layout)
    model = d3ssl_zoo.create_model(name, pretrained=False, num_classes=0)
    expected = model.state_dict()
    missing_counters = [k for k in expected if k.endswith("num_batches_tracked") and k not in trunk]
    for k in missing_counters:
        trunk[k] = torch.zeros_like(expected[k])
    try:
        result = model.load_state_dict(trunk, strict=False)
    except RuntimeError as e:  # shape mismatch: a wider/narrower ResNet than the zoo's
        raise ValueError(f"{src}: the {layout} trunk does not fit {name}: {e}") from e
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{src}: the {layout} trunk does not fit {name}: missing {result.missing_keys[:8]}, "
            f"unexpected {result.unexpected_keys[:8]}")
    report = ConvertReport(
        source=str(src), layout=layout, detected=fmt == "auto", model_name=name, out_dir=str(out_dir),
        num_tensors=len(trunk), dropped_under_prefix=dropped, ignored_prefixes=others,
        filled_num_batches_tracked=len(missing_counters))
    d3ssl_zoo.save_pretrained(model, Path(out_dir), tag, model_name=name, overwrite=overwrite, card_extra={
        "converted_from": Path(src).name, "source_layout": f"{layout}: {LAYOUTS[layout].source}"})
    return report
