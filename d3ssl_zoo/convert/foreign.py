"""Reading checkpoint files safely, and the ResNet key vocabulary shared by the converters.

Every ``.pth`` is read with ``torch.load(weights_only=True)``: tensors and plain containers
only, never arbitrary unpickling. The one class let through is ``argparse.Namespace``, which
SoCo and PixPro save under ``"opt"`` next to their weights; it only holds attributes.
"""
from __future__ import annotations

import argparse
import pickle
import re
import zipfile
from pathlib import Path
from typing import Dict, Mapping, Tuple, Union

import torch
from torch import Tensor

__all__ = ["read_checkpoint", "is_state_dict", "resnet_arch", "BACKBONE_KEY", "STEM_AND_STAGES"]

PathLike = Union[str, Path]

#: Key of a torchvision/timm ResNet trunk (classifier ``fc`` excluded): stem conv1/bn1 and the
#: four stages layer1..layer4 with their blocks.
BACKBONE_KEY = re.compile(r"^(conv1\.weight|bn1\.[a-z_]+|layer[1-4]\.\d+\.[a-z0-9_.]+)$")
#: Dotted names that start a ResNet trunk inside a longer key (used to report key prefixes).
STEM_AND_STAGES = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc")
#: Suffixes of the checkpoint files ``read_checkpoint`` takes.
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".tar", ".safetensors")


def read_checkpoint(path: PathLike) -> Dict[str, object]:
    """Load a ``.safetensors`` file or a ``.pth``/``.pt``/``.tar`` file with ``weights_only=True``."""
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.suffix in CHECKPOINT_SUFFIXES)
        raise ValueError(f"checkpoint {path} is a directory; give one checkpoint file (.pth, .pt, .tar or "
                         f".safetensors)" + (f", e.g. {path / inside[0]} (it holds {', '.join(inside[:5])}"
                                             f"{', ...' if len(inside) > 5 else ''})" if inside else ""))
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return dict(load_file(str(path)))
        except Exception as e:  # safetensors has its own error types for every kind of damage
            raise ValueError(f"cannot read {path}: not a complete safetensors file (truncated or corrupted: "
                             f"{_first_line(e)}); download or copy it again") from e
    if path.suffix == ".pkl":
        raise ValueError(
            f"{path} is a pickle (.pkl, e.g. a detectron2 file); d3ssl_zoo never unpickles such "
            f"files. Convert the original .pth/.safetensors checkpoint instead")
    with open(path, "rb") as f:
        magic = f.read(4)
    if not zipfile.is_zipfile(path) and (magic.startswith(b"PK") or not magic.startswith(b"\x80")):
        # torch.save writes a zip archive (a pickle, starting with 0x80, before torch 1.6)
        state = ("a truncated or damaged zip archive" if magic.startswith(b"PK")
                 else "neither a zip archive nor a pickle")
        raise ValueError(f"cannot read {path} with torch.load: the file is {state}, so it is truncated, "
                         f"corrupted or not a PyTorch checkpoint; download or copy it again")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"{path} holds objects other than tensors and plain containers, so it cannot be read "
            f"with torch.load(weights_only=True). If you trust it, re-save only its weights "
            f"elsewhere: torch.save(ckpt['state_dict'], 'weights.pth'). Loader said: "
            f"{str(e).splitlines()[-1] if str(e) else e!r}") from e
    except (RuntimeError, EOFError, ValueError, OSError) as e:  # torch's errors for a cut or damaged file
        raise ValueError(f"cannot read {path} with torch.load: the file is truncated or corrupted "
                         f"({_first_line(e)}); download or copy it again") from e
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a dict of weights")
    return dict(obj)



def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def is_state_dict(obj: object) -> bool:
    """A non-empty mapping from names to tensors."""
    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()))


def resnet_arch(state_dict: Mapping[str, Tensor]) -> Tuple[str, Tuple[int, ...]]:
    """Block type ('bottleneck' or 'basic') and blocks per stage of a torchvision-keyed ResNet."""
    blocks = []
    for stage in range(1, 5):
        ids = {int(k.split(".")[1]) for k in state_dict if k.startswith(f"layer{stage}.")}
        blocks.append(max(ids) + 1 if ids else 0)
    kind = "bottleneck" if "layer1.0.conv3.weight" in state_dict else "basic"
    return kind, tuple(blocks)
