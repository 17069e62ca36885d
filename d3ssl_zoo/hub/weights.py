"""Weight files: safe reading (safetensors; ``.pth`` only with ``torch.load(..., weights_only=True)``),
sha256, and the strict key/shape check applied when pretrained weights are loaded."""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Mapping

import torch
from torch import nn

__all__ = ["PretrainedWeightsError", "WEIGHTS_NAME", "CONFIG_NAME", "CARD_NAME", "sha256_file", "verify_sha256",
           "load_state_dict_file", "ResolvedWeights"]

_logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights could not be found, read, or verified."""


def sha256_file(path: os.PathLike | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def verify_sha256(path: os.PathLike | str, expected: str) -> None:
    actual = sha256_file(path)
    if actual != expected.lower():
        raise PretrainedWeightsError(
            f"sha256 mismatch for {path}: expected {expected.lower()}, actual {actual}. The file is "
            f"corrupted or not the published one; delete it (and its Hugging Face cache entry) and retry.")


def load_state_dict_file(path: os.PathLike | str) -> Dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or (safely) from a ``.pth``/``.pt``/``.bin``.

    A ``.pth`` holding ``{"state_dict": ...}`` or ``{"model": ...}`` is unwrapped. Raises
    ``PretrainedWeightsError`` naming the file for anything unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise PretrainedWeightsError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types for every corruption
            raise PretrainedWeightsError(
                f"cannot read {path}: not a valid safetensors file (corrupted or truncated?): {e}") from e
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise PretrainedWeightsError(
            f"cannot read {path} with torch.load(weights_only=True) (corrupted, truncated, or a pickle "
            f"holding more than tensors): {e}") from e
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise PretrainedWeightsError(f"{path} does not hold a state dict of tensors")
    return dict(obj)


@dataclass
class ResolvedWeights:
    """A state dict fetched for a pretrained cfg, and where it came from."""

    state_dict: Dict[str, torch.Tensor]
    path: str
    source: str

    def check_keys(self, state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
        """timm filter fn: strict key check, except the classifier, which is adapted.

        timm loads non-strictly whenever the classifier changes size; we keep everything else
        strict so nothing is silently left at random init or dropped.
        """
        expected = set(model.state_dict().keys())
        classifier = {k for k in expected | set(state_dict) if k.startswith("fc.")}
        missing = sorted(expected - set(state_dict) - classifier)
        unexpected = sorted(set(state_dict) - expected - classifier)
        if missing or unexpected:
            raise PretrainedWeightsError(
                f"{self.path} does not match the model: missing keys {_short(missing)}, unexpected keys "
                f"{_short(unexpected)}. For checkpoints in SoCo/MoCo/DenseCL/PixPro layouts convert first: "
                f"d3ssl-zoo convert {self.path} --out DIR")
        own = model.state_dict()
        wrong = [f"{k}: file {tuple(v.shape)}, model {tuple(own[k].shape)}" for k, v in state_dict.items()
                 if k in own and not k.startswith("fc.") and tuple(v.shape) != tuple(own[k].shape)]
        if wrong:
            raise PretrainedWeightsError(
                f"{self.path} does not fit this architecture: {len(wrong)} tensors have other shapes "
                f"({_short(wrong, 3)}). It was saved from another model; load it with the architecture it "
                f"was trained as (`d3ssl-zoo convert {self.path} --out DIR` reports it)")
        dropped = sorted(k for k in state_dict if k.startswith("fc.") and k not in expected)
        if dropped:
            _logger.info("Not loading classifier %s from %s: the model is headless", dropped, self.path)
        return {k: v for k, v in state_dict.items() if k in expected}


def _short(keys: Iterable[str], n: int = 6) -> str:
    keys = list(keys)
    more = f", ... {len(keys) - n} more" if len(keys) > n else ""
    return "[]" if not keys else "[" + ", ".join(keys[:n]) + more + "]"


