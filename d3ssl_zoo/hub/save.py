"""``save_pretrained``: a folder that timm and the Hub load (``model.safetensors``, timm's
``config.json``, a model card), every file written atomically."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional

import yaml
from torch import nn

from ..tags import LICENSE, PAPER_ARXIV
from .card import model_card
from .weights import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME

__all__ = ["save_pretrained", "check_save_folder"]

# The model card's Hub tag that marks a card written by save_pretrained (model_card()).
_CARD_MARKER = "d3ssl_zoo"

# pretrained_cfg fields that are ours to write into config.json (all are timm PretrainedCfg fields;
# an unknown key there breaks ``timm.create_model('hf-hub:...')``).
_CONFIG_CFG_KEYS = ("tag", "input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std",
                    "num_classes", "pool_size", "first_conv", "classifier", "license", "paper_ids",
                    "paper_name")


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _written_by_us(path: Path) -> bool:
    """Whether ``path`` (a ``config.json`` or ``README.md``) is one that :func:`save_pretrained` wrote."""
    try:
        if path.name == CONFIG_NAME:
            config = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(config, dict) or "architecture" not in config:
                return False
            cfg = config.get("pretrained_cfg")
            return isinstance(cfg, dict) and cfg.get("paper_ids") == PAPER_ARXIV
        from huggingface_hub.repocard import metadata_load

        tags = (metadata_load(path) or {}).get("tags") or []
        return isinstance(tags, list) and _CARD_MARKER in tags
    except (OSError, ValueError, AttributeError, yaml.YAMLError):  # unreadable, not JSON / YAML, not a mapping
        return False


def check_save_folder(out_dir: os.PathLike | str, overwrite: bool = False) -> None:
    """Raise ``ValueError`` if ``out_dir`` holds a ``config.json`` or ``README.md`` that
    :func:`save_pretrained` did not write (the user's own project files), unless ``overwrite``.

    Our own files (a config.json with our architecture and paper keys, a card tagged ``d3ssl_zoo``)
    are replaced without asking, so re-exporting into the same folder keeps working.
    """
    out = Path(out_dir)
    if overwrite or not out.is_dir():
        return
    foreign = [name for name in (CONFIG_NAME, CARD_NAME) if (out / name).exists() and not _written_by_us(out / name)]
    if foreign:
        raise ValueError(
            f"save_pretrained: {out} already holds {' and '.join(foreign)} not written by save_pretrained, which "
            f"would be overwritten; save into another (or a new) folder, or pass overwrite=True to replace them "
            f"(d3ssl-zoo convert: --overwrite)")


def save_pretrained(model: nn.Module, out_dir: os.PathLike | str, tag: Optional[str] = None, *,
                    model_name: Optional[str] = None,
                    card_extra: Optional[Mapping[str, Any]] = None, overwrite: bool = False) -> Path:
    """Write ``model.safetensors``, a timm ``config.json`` and a ``README.md`` model card.

    The folder loads with ``timm.create_model('hf-hub:<repo>')`` once pushed, and locally with
    ``create_model(model_name, pretrained=True, pretrained_cfg_overlay=dict(file=<folder>/model.safetensors))``.
    A ``config.json`` or ``README.md`` already in the folder that this function did not write is
    refused with a ``ValueError`` before anything is written, unless ``overwrite=True``.
    """
    from safetensors.torch import save_file

    check_save_folder(out_dir, overwrite)
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    arch = model_name or cfg.get("architecture")
    if not arch:
        raise ValueError("save_pretrained: cannot tell the architecture; pass model_name='d3ssl_r50c4' (or similar)")
    if "." in arch:
        arch, _, name_tag = arch.partition(".")
        tag = tag or name_tag
    tag = tag if tag is not None else cfg.get("tag")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _atomic_write(out / WEIGHTS_NAME, lambda p: save_file(state, p, metadata={"format": "pt"}))

    num_classes = int(getattr(model, "num_classes", 0) or 0)
    pretrained_cfg = {k: cfg[k] for k in _CONFIG_CFG_KEYS if cfg.get(k) is not None}
    pretrained_cfg.update(num_classes=num_classes, tag=tag or "", license=cfg.get("license", LICENSE),
                          paper_ids=PAPER_ARXIV)
    pretrained_cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in pretrained_cfg.items()}
    config = {"architecture": arch, "num_classes": num_classes,
              "num_features": int(getattr(model, "num_features", 0)), "pretrained_cfg": pretrained_cfg}
    padding_mode = getattr(model, "padding_mode", "zeros")
    if padding_mode != "zeros":  # the weights alone do not say it; timm passes model_args back to the model
        config["model_args"] = {"padding_mode": padding_mode}
    text = json.dumps(config, indent=2) + "\n"
    _atomic_write(out / CONFIG_NAME, lambda p: Path(p).write_text(text))
    name = f"{arch}.{tag}" if tag else arch
    card = model_card(name, pretrained_cfg, card_extra)
    _atomic_write(out / CARD_NAME, lambda p: Path(p).write_text(card))
    return out


