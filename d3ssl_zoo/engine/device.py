"""The recipe's device settings, applied in one place: by the training loop and by ``benchmarks/gpu_check.py``.

Whatever the check measures is what training runs: the memory format of the model and of the images
(``train.memory_format``) and cuDNN's algorithm search. TF32 keeps PyTorch's defaults (cuDNN convolutions may
use it, float32 matmuls do not); under the recipes' bf16 autocast the convolutions and matmuls run in bf16
anyway and the losses in float32 (``d3ssl_zoo/method/losses.py``).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from d3ssl_zoo.data import prepare_batch

from .config import Recipe

__all__ = ["MEMORY_FORMATS", "apply_device_settings"]

#: ``train.memory_format`` -> the torch memory format of 4-d weights and image batches
MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def apply_device_settings(recipe: Recipe, method: nn.Module, device: torch.device) -> Callable[[dict], dict]:
    """Apply ``recipe``'s device settings to ``method`` (in place) and return the function that turns a
    collated batch, already on ``device``, into the method's input.

    * ``train.memory_format=channels_last``: the method's 4-d weights (convolutions) are converted now,
      before the model moves to its device (``Module.to(device)`` keeps the format), and the returned
      function puts the prepared image batches (x1, x2, x2-s, x3) in the same format, as convolutions
      want their input in their weights' format. ``contiguous`` (the default) leaves both untouched.
    * On CUDA, ``torch.backends.cudnn.benchmark = True``: every step has the same shapes (fixed view sizes,
      K proposals per image, full batches), so cuDNN's one-time search for the fastest convolution
      algorithms pays off (timm's ``train.py`` sets it too). It picks kernels, not the computation.

    The returned function applies :func:`~d3ssl_zoo.data.prepare_batch` (normalised views, x3 of Eq. 8)
    with the recipe's mean and std, then the memory format.
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    channels_last = recipe.train.memory_format == "channels_last"
    if channels_last:
        method.to(memory_format=torch.channels_last)
    mean, std = recipe.data.mean, recipe.data.std

    def prepare(batch: dict) -> dict:
        out = prepare_batch(batch, mean, std)
        if channels_last:
            out = {k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v for k, v in out.items()}
        return out

    return prepare
