"""Calibration under drift: a shift of each task's prediction on its link scale.

Outcome rates drift from day to day (the simulated worlds' click rate rises ~0.4% a day, and so
do the held-out ones'), while a model without a time input predicts the average level of its
training days. `training/calibration.py` fits, after training, one offset per task for the day
the model will serve; `MultiTaskModel.forward` applies it, so the exported graph carries it and
serving needs nothing. The shift keeps every ranking within a task (it is monotone):
- `logit` (probabilities and completion in [0, 1]): p -> sigmoid(logit(p) + offset);
- `scale` (watch seconds >= 0): y -> y * exp(offset).
No offsets (the default) is the identity and adds nothing to the graph.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ranker.tasks import Task, TaskKind

# How a task's prediction is shifted, by the task's kind.
SHIFT_OF_KIND: dict[TaskKind, str] = {"binary": "logit", "bounded": "logit", "regression": "scale"}
# Probabilities are clamped this far from 0 and 1 before the logit: float32 sigmoids saturate.
EPS = 1e-7


def shift_kind(task: Task) -> str:
    """`logit` or `scale`: how `task`'s prediction is shifted."""
    return SHIFT_OF_KIND[task.kind]


class OutputCalibration(nn.Module):
    """{task: prediction [N]} -> the same with each calibrated task shifted by its offset.

    Example: OutputCalibration({"click": ("logit", 0.05)}) raises every click probability's
    odds by e^0.05 (about 5%); other tasks pass through. Holds no parameters or buffers, so a
    model's state dict is the same with or without it; the offsets are constants of the graph.
    """

    def __init__(self, shifts: Mapping[str, tuple[str, float]] | None = None) -> None:
        super().__init__()
        self.shifts = {
            task: (kind, float(offset)) for task, (kind, offset) in (shifts or {}).items()
        }
        for task, (kind, _) in self.shifts.items():
            if kind not in ("logit", "scale"):
                raise ValueError(f"calibration of {task!r}: unknown shift {kind!r}")

    @classmethod
    def for_tasks(cls, tasks: tuple[Task, ...], offsets: Mapping[str, float]) -> OutputCalibration:
        """Offsets {task: float} with each task's shift kind."""
        known = {t.name: t for t in tasks}
        unknown = sorted(set(offsets) - set(known))
        if unknown:
            raise ValueError(
                f"calibration offsets for unknown tasks {unknown}; tasks: {list(known)}"
            )
        return cls({name: (shift_kind(known[name]), value) for name, value in offsets.items()})

    @property
    def offsets(self) -> dict[str, float]:
        return {task: offset for task, (_, offset) in self.shifts.items()}

    def forward(self, outputs: dict[str, Tensor]) -> dict[str, Tensor]:
        if not self.shifts:
            return outputs
        shifted = dict(outputs)
        for task, (kind, offset) in self.shifts.items():
            value = outputs[task]
            if kind == "logit":
                p = value.clamp(EPS, 1.0 - EPS)
                shifted[task] = torch.sigmoid(torch.log(p) - torch.log1p(-p) + offset)
            else:
                shifted[task] = value * math.exp(offset)
        return shifted
