"""The zoo's front door: create_model, list_models, list_pretrained, get_pretrained_cfg, load_backbone.

The same models are reachable through timm once ``d3ssl_zoo`` is imported; these functions
add what a zoo user needs on top: errors that suggest close names, our metadata, and one
loader for "anything that is a ResNet" used by the evaluation and transfer tools.
"""
from __future__ import annotations

import difflib
import fnmatch
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

import timm
from timm.models import split_model_name_tag
from torch import nn

from .hub import CONFIG_NAME, WEIGHTS_NAME, load_state_dict_file
from .models.d3ssl_resnet import D3SSLResNet  # importing it registers the architectures in timm
from .tags import TAGS, get_tag

__all__ = ["create_model", "list_models", "list_pretrained", "get_pretrained_cfg", "load_backbone"]


def list_models(pattern: str = "") -> List[str]:
    """Architectures of the zoo (``fnmatch`` pattern, as timm): the models ``models/d3ssl_resnet.py``
    registers in timm's registry, the one list of them."""
    return timm.list_models(pattern or "*", module="d3ssl_resnet")


def list_pretrained(pattern: str = "") -> List[str]:
    """``model.tag`` names of the zoo in table order (an architecture's default tag first)."""
    return [t.name for t in TAGS if fnmatch.fnmatch(t.name, pattern or "*")]


def _check_name(name: str) -> None:
    arch, tag = split_model_name_tag(name)
    archs = list_models()
    if arch not in archs:
        close = difflib.get_close_matches(arch, archs, n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"Unknown d3ssl_zoo model '{arch}'.{hint} Available: {', '.join(archs)}.")
    if tag:
        tags = [n.split(".", 1)[1] for n in list_pretrained(f"{arch}.*")]
        if tag not in tags:
            close = difflib.get_close_matches(tag, tags, n=3, cutoff=0.4)
            hint = f" Did you mean {', '.join(repr(f'{arch}.{c}') for c in close)}?" if close else ""
            raise ValueError(f"Unknown tag '{tag}' for '{arch}'.{hint} "
                             f"Tags: {', '.join(tags) if tags else '(none: this model has no pretrained tags)'}.")


def create_model(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Build a zoo model, e.g. ``create_model('d3ssl_r50c4.oimini_800ep', pretrained=True)``.

    Keyword arguments go to timm (``num_classes``, ``features_only``, ``pretrained_cfg_overlay``...).
    """
    _check_name(name)
    return timm.create_model(name, pretrained=pretrained, **kwargs)


def get_pretrained_cfg(name: str) -> Dict[str, Any]:
    """timm's pretrained cfg of ``model.tag`` merged with our table (paper numbers, recipe, sha256)."""
    _check_name(name)
    cfg = timm.get_pretrained_cfg(name).to_dict()
    cfg.pop("state_dict", None)
    arch, tag = split_model_name_tag(name)
    cfg["architecture"] = arch
    entry = get_tag(f"{arch}.{tag or cfg.get('tag', '')}")
    if entry is not None:
        cfg.update(entry.to_dict())
    return cfg


def _torchvision_resnet(name: str) -> D3SSLResNet:
    import torchvision
    from timm.models.resnet import BasicBlock, Bottleneck

    layers = {"resnet18": (BasicBlock, (2, 2, 2, 2)), "resnet34": (BasicBlock, (3, 4, 6, 3)),
              "resnet50": (Bottleneck, (3, 4, 6, 3)), "resnet101": (Bottleneck, (3, 4, 23, 3)),
              "resnet152": (Bottleneck, (3, 8, 36, 3))}
    if name not in layers:
        raise ValueError(f"torchvision:{name} is not supported; use one of "
                         f"{', '.join('torchvision:' + n for n in layers)}")
    tv = getattr(torchvision.models, name)(weights=None)
    block, depth = layers[name]
    model = D3SSLResNet(block=block, layers=depth, num_classes=tv.fc.out_features)
    model.load_state_dict(tv.state_dict(), strict=True)
    model.pretrained_cfg = {"architecture": f"torchvision:{name}", "num_classes": tv.fc.out_features}
    return model


def _load_strict(model: nn.Module, path: str) -> None:
    from .hub import ResolvedWeights

    sd = load_state_dict_file(path)
    sd = ResolvedWeights(sd, path, "file").check_keys(sd, model)
    model.load_state_dict(sd, strict=not any(k.startswith("fc.") for k in model.state_dict()))


def _read_config(path: Path) -> Dict[str, Any]:
    """The ``config.json`` of a save_pretrained folder; a broken one is named with the line and column."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}; fix that line, "
                         f"or write the folder again with d3ssl_zoo.save_pretrained") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start}); is it a config.json "
                         f"written by d3ssl_zoo.save_pretrained?") from e
    if not isinstance(config, dict) or not isinstance(config.get("architecture"), str):
        raise ValueError(f"{path}: no \"architecture\" (a model name such as \"d3ssl_r50c4\") at the top level; "
                         f"is it a config.json written by d3ssl_zoo.save_pretrained?")
    return config


def load_backbone(spec: str, checkpoint: Optional[str] = None, pretrained: Optional[bool] = None) -> nn.Module:
    """Any ResNet the tools accept, in eval mode.

    ``spec``: a zoo name (``d3ssl_r50c4``) or ``model.tag`` (pretrained by default when a tag is
    given), a folder written by ``save_pretrained``, ``torchvision:resnet50`` (torchvision's
    architecture, returned as an identical ``D3SSLResNet``), or any timm model name.
    ``checkpoint``: a safetensors/pth state dict loaded strictly (the classifier excepted).
    """
    path = Path(os.path.expanduser(spec))
    if path.is_dir():
        cfg_file = path / CONFIG_NAME
        if not cfg_file.is_file():
            raise FileNotFoundError(f"{path} has no {CONFIG_NAME}; is it a save_pretrained folder?")
        config = _read_config(cfg_file)
        weights = checkpoint or str(path / WEIGHTS_NAME)
        model = create_model(config["architecture"], pretrained=True, num_classes=config.get("num_classes", 0),
                             pretrained_cfg_overlay=dict(file=weights), **config.get("model_args", {}))
    elif spec.startswith("torchvision:"):
        model = _torchvision_resnet(spec.split(":", 1)[1])
        if checkpoint:
            _load_strict(model, checkpoint)
    elif split_model_name_tag(spec)[0] in list_models():
        if checkpoint:
            model = create_model(spec, pretrained=True, pretrained_cfg_overlay=dict(file=checkpoint))
        else:
            has_tag = bool(split_model_name_tag(spec)[1])
            model = create_model(spec, pretrained=has_tag if pretrained is None else pretrained)
    elif timm.is_model(split_model_name_tag(spec)[0]):
        model = timm.create_model(spec, pretrained=bool(pretrained))
        if checkpoint:
            _load_strict(model, checkpoint)
    else:
        pool = list_models() + timm.list_models("resnet*")
        close = difflib.get_close_matches(spec, pool, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"Unknown model '{spec}': not a zoo name, a save_pretrained folder, "
                         f"'torchvision:<resnet>', or a timm model.{hint}")
    return model.eval()
