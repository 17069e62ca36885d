"""LARS (You et al. 2017) as SoCo uses it: no weight decay and no layer adaptation on biases and BN.

SoCo's settings (not in the paper): LARS, base lr 1.0 per 256 images, weight decay
1e-5, trust coefficient 0.001, momentum 0.9.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

__all__ = ["LARS", "lars_param_groups"]


def lars_param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights (decayed, layer-adapted) and biases / norm parameters (neither).

    Every 1-d parameter (biases, BatchNorm weights and biases) goes to the second group.
    Parameters that do not require gradients (the momentum teacher) are left out.
    """
    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "lars_adapt": True},
        {"params": no_decay, "weight_decay": 0.0, "lars_adapt": False},
    ]


class LARS(torch.optim.Optimizer):
    """SGD with momentum whose update of each tensor is scaled by ``eta ||w|| / ||g + wd w||``.

    Groups with ``lars_adapt=False`` get plain SGD with momentum (SoCo / BYOL exclude biases and
    BN from the adaptation and from weight decay).
    """

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.001, lars_adapt: bool = True) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0 or eta <= 0:
            raise ValueError(f"LARS needs lr, momentum, weight_decay >= 0 and eta > 0; got "
                             f"lr={lr}, momentum={momentum}, weight_decay={weight_decay}, eta={eta}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars_adapt=lars_adapt)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad
                if group["weight_decay"]:
                    d_p = d_p.add(p, alpha=group["weight_decay"])
                if group["lars_adapt"]:
                    w_norm, g_norm = torch.norm(p), torch.norm(d_p)
                    # trust ratio 1 where either norm is 0 (fresh zero-init weights, dead units)
                    trust = torch.where((w_norm > 0) & (g_norm > 0), group["eta"] * w_norm / g_norm,
                                        torch.ones_like(w_norm))
                    d_p = d_p.mul(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.clone(d_p).detach()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(d_p)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss
