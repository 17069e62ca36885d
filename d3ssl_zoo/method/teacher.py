"""The momentum teacher f_k (Eq. 3): an exponential moving average of the student f_q (MoCo / BYOL)."""
from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["make_teacher", "momentum_update", "StudentTeacher"]


def make_teacher(student: nn.Module) -> nn.Module:
    """A copy of ``student`` that receives no gradients (theta_k <- theta_q at start, as MoCo)."""
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def momentum_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """theta_k <- m theta_k + (1 - m) theta_q for every parameter (buffers are not averaged, as MoCo)."""
    t = [p for p in teacher.parameters()]
    s = [p.detach() for p in student.parameters()]
    if len(t) != len(s):
        raise ValueError(f"teacher has {len(t)} parameters but student has {len(s)}; build it with make_teacher")
    torch._foreach_lerp_(t, s, 1.0 - momentum)


class StudentTeacher(nn.Module):
    """Base of the pre-training methods: a region encoder ``student`` (f_q) and its EMA ``teacher`` (f_k)."""

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student = student
        self.teacher = make_teacher(student)

    @property
    def backbone(self) -> nn.Module:
        """The student's backbone: the network that is exported."""
        return self.student.backbone

    def momentum_update(self, momentum: float) -> None:
        """theta_k <- m theta_k + (1 - m) theta_q, called after each optimiser step."""
        momentum_update(self.teacher, self.student, momentum)
