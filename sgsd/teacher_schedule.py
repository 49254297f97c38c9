"""When and how much the teacher's weights follow the student's (paper Fig. 3b).

The live teacher IS the student and the frozen one never moves; the two others keep weights
of their own and update them after every actor step ``s = 1, 2, ...`` (one optimizer step):

* ``ema``:      ``theta_T(s) = d theta_T(s-1) + (1 - d) theta_S(s)``, from ``theta_T(0) = theta_0``;
* ``periodic``: ``theta_T(s) = theta_S(s)`` when ``s % period == 0``, else ``theta_T(s-1)``;
  before the first copy ``theta_T = theta_0``.

Both are one update ``theta_T <- (1 - w) theta_T + w theta_S`` with a step-dependent weight
``w`` (:meth:`TeacherSchedule.weight`): ``1 - d`` every step, or ``1`` on copy steps. The
teacher pass of step ``s`` scores with ``theta_T(s-1)``, the weights before that step's
update, as the live teacher scores with the student before its update.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sgsd.checks import check

__all__ = ["TEACHERS", "MOVING_TEACHERS", "TeacherSchedule", "blend_"]

# Where the teacher's weights come from: the current actor (live), the initial policy (frozen), an
# EMA of the actor's weights (ema), a copy of them refreshed every `period` steps (periodic).
TEACHERS = ("live", "frozen", "ema", "periodic")
MOVING_TEACHERS = ("ema", "periodic")  # teachers with weights of their own that follow the student


@dataclass(frozen=True)
class TeacherSchedule:
    """``kind`` (live | frozen | ema | periodic), the EMA ``decay`` d and the copy ``period``."""

    kind: str
    decay: float = 0.999
    period: int = 50

    def __post_init__(self) -> None:
        check("kind", self.kind, self.kind in TEACHERS, f"one of {', '.join(TEACHERS)}")
        check("decay", self.decay, isinstance(self.decay, float | int) and math.isfinite(self.decay)
              and 0.0 < self.decay < 1.0, "in (0, 1) (0.999: the release's EMA teacher)")
        check("period", self.period, isinstance(self.period, int) and self.period >= 1, ">= 1 (actor steps)")

    @property
    def moving(self) -> bool:
        """The teacher has weights of its own that follow the student."""
        return self.kind in MOVING_TEACHERS

    def weight(self, step: int) -> float | None:
        """``w`` of ``theta_T <- (1 - w) theta_T + w theta_S`` after actor step ``step`` (>= 1);
        None: no update (and always None for live and frozen teachers)."""
        if step < 1:
            raise ValueError(f"actor steps count from 1, got {step}")
        if self.kind == "ema":
            return 1.0 - self.decay
        if self.kind == "periodic":
            return 1.0 if step % self.period == 0 else None
        return None

    def expected(self, initial: torch.Tensor, students: list[torch.Tensor]) -> torch.Tensor:
        """``theta_T`` after the actor steps whose student weights are ``students`` (step 1 first),
        by the recursion above in float64: the reference the recipe's shard-wise update is tested
        against."""
        teacher = initial.double()
        for step, student in enumerate(students, start=1):
            w = self.weight(step)
            if w is not None:
                teacher = (1.0 - w) * teacher + w * student.double()
        return teacher


@torch.no_grad()
def blend_(teacher: torch.Tensor, student: torch.Tensor, weight: float) -> None:
    """In place: ``teacher <- (1 - weight) teacher + weight student``, computed in float32 (or
    the teacher's wider dtype) whatever the storage dtype; ``weight == 1`` copies exactly.
    ``student`` may live on another device (it is moved one tensor at a time)."""
    if teacher.shape != student.shape:
        raise ValueError(f"teacher and student tensors differ in shape: {tuple(teacher.shape)} vs "
                         f"{tuple(student.shape)}")
    if not 0.0 < weight <= 1.0:
        raise ValueError(f"blend weight must be in (0, 1], got {weight}")
    source = student.to(device=teacher.device, non_blocking=False)
    if weight == 1.0:
        teacher.copy_(source)
        return
    if teacher.dtype in (torch.float32, torch.float64):
        teacher.lerp_(source.to(teacher.dtype), weight)
    else:  # bf16 / fp16 storage: blended in fp32, but the result rounds to 8 mantissa bits, where an EMA
        # step of (1 - d) ~ 1e-3 mostly vanishes; the recipe keeps EMA teachers in fp32 (main_sgsd checks)
        teacher.copy_(teacher.float().lerp_(source.float(), weight))
