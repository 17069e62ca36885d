"""Export to detectron2's R50-C4 format and the matching configs (paper §5 "Setting").

The paper fine-tunes Faster R-CNN R50-C4 on VOC07+12 and Mask R-CNN R50-C4 1x on COCO following
MoCo's protocol. This module writes what detectron2 needs for that:

* a pickle ``{"model": {name: ndarray}, "__author__": ..., "matching_heuristics": True}`` in
  detectron2's ResNet names (``stem.conv1.norm.*``, ``res2..res5.*``, ``shortcut(.norm)``,
  ``convK.norm``); detectron2 matches ``res5.*`` to ``roi_heads.res5.*`` by its suffix rule;
* config files with the settings our weights need: RGB input, ImageNet mean/std in 0-255,
  ``RESNETS.STRIDE_IN_1X1: False`` (torchvision's v1.5 bottleneck; detectron2's default True
  would load these weights without an error and run them wrongly), SyncBN, ``FREEZE_AT: 0`` and
  an extra BatchNorm after res5 (``Res5ROIHeadsExtraNorm`` of MoCo's detection/train_net.py).

No detectron2 install is needed: ``detectron2_r50c4_keys`` rebuilds the key set detectron2's
R50-C4 model has from its naming rules, and ``match_detectron2_keys`` re-implements the suffix
matching of its checkpoint loader, so tests can check an export against both.
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import yaml
from torch import Tensor

from .foreign import BACKBONE_KEY, PathLike, resnet_arch

__all__ = ["to_detectron2_key", "from_detectron2_key", "detectron2_state_dict",
           "write_detectron2_pickle", "detectron2_export_check", "detectron2_r50c4_keys", "match_detectron2_keys",
           "DETECTRON2_TASKS", "detectron2_config", "write_detectron2_config", "PIXEL_MEAN_255", "PIXEL_STD_255"]

#: ImageNet mean/std of RGB images in 0-255 (timm's IMAGENET_DEFAULT_MEAN/STD times 255).
PIXEL_MEAN_255 = [123.675, 116.28, 103.53]
PIXEL_STD_255 = [58.395, 57.12, 57.375]
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_BOTTLENECK_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def to_detectron2_key(key: str) -> str:
    """torchvision ResNet name -> detectron2 ResNet name (``layer1.0.bn2.weight`` -> ``res2.0.conv2.norm.weight``)."""
    if not BACKBONE_KEY.match(key):
        raise ValueError(f"{key!r} is not a ResNet trunk key (conv1, bn1, layer1..4); drop heads before export")
    if not key.startswith("layer"):
        return "stem." + key.replace("bn1", "conv1.norm")
    stage, block, rest = key.split(".", 2)
    rest = re.sub(r"^bn(\d)\.", r"conv\1.norm.", rest)
    rest = rest.replace("downsample.0.", "shortcut.").replace("downsample.1.", "shortcut.norm.")
    return f"res{int(stage[5:]) + 1}.{block}.{rest}"


def from_detectron2_key(key: str) -> str:
    """Inverse of ``to_detectron2_key``."""
    if key.startswith("stem."):
        return key[len("stem."):].replace("conv1.norm.", "bn1.")
    m = re.match(r"^res([2-5])\.(\d+)\.(.+)$", key)
    if m is None:
        raise ValueError(f"{key!r} is not a detectron2 ResNet key (stem.*, res2..res5.*)")
    rest = m.group(3).replace("shortcut.norm.", "downsample.1.").replace("shortcut.", "downsample.0.")
    rest = re.sub(r"^conv(\d)\.norm\.", r"bn\1.", rest)
    return f"layer{int(m.group(1)) - 1}.{m.group(2)}.{rest}"


def detectron2_state_dict(state_dict: Mapping[str, Tensor]) -> Dict[str, np.ndarray]:
    """Rename a zoo/torchvision ResNet trunk to detectron2 names, values as numpy arrays.

    ``fc`` (the classifier, absent from headless SSL tags) is not part of the detector and is
    left out.
    """
    out = {}
    for k, v in state_dict.items():
        if k.startswith("fc."):
            continue
        out[to_detectron2_key(k)] = v.detach().cpu().numpy()
    return out


def write_detectron2_pickle(state_dict: Mapping[str, Tensor], path: PathLike,
                            author: str = "d3ssl_zoo") -> Dict[str, np.ndarray]:
    """Write the detectron2 C4 pickle; returns the renamed arrays.

    ``author`` must not be ``"Caffe2"``: detectron2 would then apply its Caffe2 renaming rules.
    """
    if author == "Caffe2":
        raise ValueError("author 'Caffe2' makes detectron2 rename keys with its Caffe2 rules; use another name")
    model = detectron2_state_dict(state_dict)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump({"model": model, "__author__": author, "matching_heuristics": True}, f)
    return model


def detectron2_r50c4_keys(depth: int = 50, *, extra_norm: bool = True,
                          bn_counters: bool = True) -> Dict[str, Tuple[int, ...]]:
    """Backbone and res5 parameter names (with shapes) of detectron2's R-C4 GeneralizedRCNN.

    Built from detectron2's ResNet naming: ``backbone.stem.conv1`` (+``.norm``), stages
    ``res2..res4`` in ``backbone`` and ``res5`` in ``roi_heads`` (Res5ROIHeads), bottleneck blocks
    with ``conv1..conv3`` (+``.norm``) and a ``shortcut`` (+``.norm``) in each stage's first block,
    SyncBN norms (with ``num_batches_tracked`` when ``bn_counters``), and, with ``extra_norm``,
    ``roi_heads.res5.norm`` of MoCo's Res5ROIHeadsExtraNorm. RPN/box/mask heads are not listed:
    they start from scratch in every protocol.
    """
    if depth not in _BOTTLENECK_BLOCKS:
        raise ValueError(f"depth {depth}: detectron2's C4 res5 head is built for bottleneck ResNets (50, 101)")
    norm_params = _BN if bn_counters else _BN[:4]

    def conv(name: str, shape: Tuple[int, ...]) -> Dict[str, Tuple[int, ...]]:
        out = {f"{name}.weight": shape}
        out.update({f"{name}.norm.{p}": (() if p == "num_batches_tracked" else (shape[0],)) for p in norm_params})
        return out

    keys = conv("backbone.stem.conv1", (64, 3, 7, 7))
    in_ch = 64
    for i, n in enumerate(_BOTTLENECK_BLOCKS[depth]):
        stage = i + 2
        scope = "roi_heads" if stage == 5 else "backbone"
        mid, out_ch = 64 * 2 ** i, 256 * 2 ** i
        for b in range(n):
            p = f"{scope}.res{stage}.{b}"
            if b == 0:
                keys.update(conv(f"{p}.shortcut", (out_ch, in_ch, 1, 1)))
            keys.update(conv(f"{p}.conv1", (mid, in_ch if b == 0 else out_ch, 1, 1)))
            keys.update(conv(f"{p}.conv2", (mid, mid, 3, 3)))
            keys.update(conv(f"{p}.conv3", (out_ch, mid, 1, 1)))
        in_ch = out_ch
    if extra_norm:
        keys.update({f"roi_heads.res5.norm.{p}": (() if p == "num_batches_tracked" else (in_ch,))
                     for p in norm_params})
    return keys


def match_detectron2_keys(model_keys: Sequence[str],
                          ckpt_keys: Sequence[str]) -> Tuple[Dict[str, str], List[str], List[str]]:
    """detectron2's loading heuristic: each model key takes the longest checkpoint key that is
    a whole-component suffix of it (``a == b`` or ``a.endswith("." + b)``).

    Returns ``(model key -> checkpoint key, unmatched model keys, unmatched checkpoint keys)``;
    raises ``ValueError`` when one checkpoint key would feed two model keys (detectron2 refuses).
    """
    matched: Dict[str, str] = {}
    used: Dict[str, str] = {}
    for mk in model_keys:
        best = max((ck for ck in ckpt_keys if mk == ck or mk.endswith("." + ck)), key=len, default=None)
        if best is None:
            continue
        if best in used:
            raise ValueError(f"checkpoint key {best!r} matches both {used[best]!r} and {mk!r}")
        used[best] = mk
        matched[mk] = best
    return (matched, [k for k in model_keys if k not in matched], [k for k in ckpt_keys if k not in used])


#: The two transfer protocols of the paper (§5, "Setting"), MoCo's detectron2 configs made explicit.
DETECTRON2_TASKS = {
    "voc": dict(
        title="Faster R-CNN R50-C4, VOC07+12 trainval -> VOC07 test, 24k iterations (MoCo protocol)",
        filename="pascal_voc_R_50_C4_24k.yaml", mask_on=False, num_classes=20,
        min_size_train=[480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800], min_size_test=800,
        train=["voc_2007_trainval", "voc_2012_trainval"], test=["voc_2007_test"],
        steps=[18000, 22000], max_iter=24000, warmup_iters=100),
    "coco": dict(
        title="Mask R-CNN R50-C4, COCO train2017 -> val2017, 1x schedule (90k iterations)",
        filename="coco_mask_rcnn_R_50_C4_1x.yaml", mask_on=True, num_classes=80,
        min_size_train=[640, 672, 704, 736, 768, 800], min_size_test=800,
        train=["coco_2017_train"], test=["coco_2017_val"],
        steps=[60000, 80000], max_iter=90000, warmup_iters=1000),
}


def detectron2_config(task: str, weights: str = "See export instructions", depth: int = 50) -> Dict[str, object]:
    """The detectron2 config (as a dict) for ``task`` in {'voc', 'coco'}."""
    if task not in DETECTRON2_TASKS:
        raise ValueError(f"unknown detectron2 task {task!r}; choose one of {sorted(DETECTRON2_TASKS)}")
    t = DETECTRON2_TASKS[task]
    pooler = {"POOLER_TYPE": "ROIAlignV2", "POOLER_RESOLUTION": 14, "POOLER_SAMPLING_RATIO": 0}
    model = {
        "META_ARCHITECTURE": "GeneralizedRCNN",
        "WEIGHTS": weights,
        "MASK_ON": t["mask_on"],
        "PIXEL_MEAN": PIXEL_MEAN_255,
        "PIXEL_STD": PIXEL_STD_255,
        "BACKBONE": {"NAME": "build_resnet_backbone", "FREEZE_AT": 0},
        "RESNETS": {"DEPTH": depth, "OUT_FEATURES": ["res4"], "NORM": "SyncBN", "STRIDE_IN_1X1": False},
        "RPN": {"IN_FEATURES": ["res4"], "PRE_NMS_TOPK_TEST": 6000, "POST_NMS_TOPK_TEST": 1000},
        "ROI_HEADS": {"NAME": "Res5ROIHeadsExtraNorm", "IN_FEATURES": ["res4"], "NUM_CLASSES": t["num_classes"]},
        "ROI_BOX_HEAD": dict(pooler),
    }
    if t["mask_on"]:
        model["ROI_MASK_HEAD"] = dict(pooler)
    return {
        "MODEL": model,
        "INPUT": {"FORMAT": "RGB", "MIN_SIZE_TRAIN": t["min_size_train"], "MIN_SIZE_TEST": t["min_size_test"]},
        "DATASETS": {"TRAIN": t["train"], "TEST": t["test"]},
        "SOLVER": {"IMS_PER_BATCH": 16, "BASE_LR": 0.02, "STEPS": t["steps"], "MAX_ITER": t["max_iter"],
                   "WARMUP_ITERS": t["warmup_iters"]},
        "TEST": {"PRECISE_BN": {"ENABLED": True}},
        "VERSION": 2,
    }


def write_detectron2_config(task: str, path: PathLike, weights: str = "See export instructions",
                            depth: int = 50) -> Path:
    """Write ``detectron2_config(task, weights)`` as YAML with a header saying how to run it."""
    cfg = detectron2_config(task, weights, depth)
    t = DETECTRON2_TASKS[task]
    header = (
        f"# {t['title']}\n"
        "# Written by d3ssl_zoo (docs/transfer.md). Train with MoCo's detection/train_net.py, which registers\n"
        "# Res5ROIHeadsExtraNorm (the extra BatchNorm after res5), e.g.\n"
        f"#   python train_net.py --config-file {Path(path).name} --num-gpus 8\n"
        "# STRIDE_IN_1X1 False and RGB / 0-255 ImageNet mean-std are required by these weights\n"
        "# (torchvision v1.5 ResNet). SoCo's own C4 configs also set SOLVER.WEIGHT_DECAY 2.5e-5.\n")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None))
    return path


def detectron2_export_check(state_dict: Mapping[str, Tensor]) -> Optional[str]:
    """Why ``state_dict`` cannot go into detectron2's C4 model, or None when it can."""
    kind, blocks = resnet_arch(state_dict)
    if kind != "bottleneck" or blocks not in _BOTTLENECK_BLOCKS.values():
        return (f"detectron2's C4 head (Res5ROIHeads) is built from bottleneck blocks; this trunk has "
                f"{kind} blocks {blocks}. Export a ResNet-50/101 (e.g. d3ssl_r50c4)")
    return None
