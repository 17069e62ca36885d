"""Learning-rate and teacher-momentum schedules, pure functions of the optimisation step.

Being functions of the step alone (saved in every checkpoint), neither schedule can restart on
resume. SoCo's settings (the paper's supplement is not available): linear warm-up then cosine
decay of the learning rate; teacher momentum from ``base`` (0.99) to 1 with a cosine (BYOL).
"""
from __future__ import annotations

import math

__all__ = ["scaled_lr", "lr_at", "momentum_at"]


def scaled_lr(base_lr: float, global_batch: int, base_batch: int = 256) -> float:
    """Linear scaling rule: ``base_lr`` is the rate for ``base_batch`` images (SoCo: 1.0 per 256)."""
    return base_lr * global_batch / base_batch


def lr_at(step: int, total_steps: int, warmup_steps: int, peak_lr: float, final_lr: float = 0.0) -> float:
    """Linear warm-up from 0 to ``peak_lr`` over ``warmup_steps``, then cosine to ``final_lr`` at ``total_steps``."""
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return final_lr + 0.5 * (peak_lr - final_lr) * (1.0 + math.cos(math.pi * progress))


def momentum_at(step: int, total_steps: int, base: float = 0.99, final: float = 1.0) -> float:
    """Teacher momentum ``final - (final - base) (cos(pi step / total) + 1) / 2`` (BYOL / SoCo)."""
    progress = min(step / max(total_steps, 1), 1.0)
    return final - (final - base) * (math.cos(math.pi * progress) + 1.0) / 2.0
