"""LARS (You et al. 2017) as SoCo uses it: no weight decay and no layer adaptation on biases and BN.

SoCo's settings (not in the paper): LARS, base lr 1.0 per 256 images, weight decay
1e-5, trust coefficient 0.001, momentum 0.9.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor, nn

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

    Per tensor w with gradient g: ``d = g + wd w``; in groups with ``lars_adapt`` ``d *= eta ||w|| / ||d||``
    (1 where either norm is 0); ``buf = d`` on the first step, then ``buf = momentum buf + d``;
    ``w -= lr buf``. Groups with ``lars_adapt=False`` get plain SGD with momentum (SoCo / BYOL exclude
    biases and BN from the adaptation and from weight decay).
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
        """One update of every parameter with a gradient: a few ``torch._foreach_*`` calls per group,
        no Python loop over the tensors (the same arithmetic as the per-tensor formula in the class
        docstring)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._update(group, params)
        return loss

    def _update(self, group: dict, params: list[Tensor]) -> None:
        grads = [p.grad for p in params]
        # d = g + wd w, in new tensors: the gradients are never written
        d_p = torch._foreach_add(grads, params, alpha=group["weight_decay"]) if group["weight_decay"] else grads
        trust = None
        if group["lars_adapt"]:
            w_norm = torch.stack(torch._foreach_norm(params))
            g_norm = torch.stack(torch._foreach_norm(d_p))
            # trust ratio 1 where either norm is 0 (fresh zero-init weights, dead units)
            trust = torch.where((w_norm > 0) & (g_norm > 0), group["eta"] * w_norm / g_norm, torch.ones_like(w_norm))
            trust = list(trust.unbind())
        states = [self.state[p] for p in params]
        old = [i for i, s in enumerate(states) if "momentum_buffer" in s]
        if old:  # buffer = momentum * buffer + trust * d
            bufs = [states[i]["momentum_buffer"] for i in old]
            torch._foreach_mul_(bufs, group["momentum"])
            if trust is None:
                torch._foreach_add_(bufs, [d_p[i] for i in old])
            else:  # the 0-d trust ratios as addcmul's first factor, which CUDA can take in one kernel
                torch._foreach_addcmul_(bufs, [trust[i] for i in old], [d_p[i] for i in old])
        for i, s in enumerate(states):  # first step: buffer = trust * d
            if "momentum_buffer" not in s:
                s["momentum_buffer"] = (d_p[i] if trust is None else d_p[i] * trust[i]).clone().detach()
        torch._foreach_add_(params, [s["momentum_buffer"] for s in states], alpha=-group["lr"])
