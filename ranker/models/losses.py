"""Torch side of `ranker.tasks`: each loss name's training loss and inference output transform.

A model's raw output per task is what the loss compares (a logit for `bce`, log1p(seconds) for
`log_mse`, seconds for `mse`); `task_output` maps it to natural units.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ranker.tasks import Task

# Upper clamp of a log1p(seconds) output before expm1: e^30 s is far past any watch time and keeps
# the output finite.
MAX_LOG_SECONDS = 30.0


def _log_mse(raw: Tensor, label: Tensor) -> Tensor:
    return F.mse_loss(raw, torch.log1p(label))


def _log_seconds(raw: Tensor) -> Tensor:
    return torch.expm1(raw.clamp(0.0, MAX_LOG_SECONDS))


LossFn = Callable[[Tensor, Tensor], Tensor]
OutputFn = Callable[[Tensor], Tensor]

# loss name -> (loss(raw [N], label [N]) -> scalar, output(raw [N]) -> natural units [N]).
LOSSES: dict[str, tuple[LossFn, OutputFn]] = {
    "bce": (F.binary_cross_entropy_with_logits, torch.sigmoid),
    "log_mse": (_log_mse, _log_seconds),
    "mse": (F.mse_loss, lambda raw: raw.clamp_min(0.0)),
}


def task_loss(task: Task, raw: Tensor, label: Tensor) -> Tensor:
    """Mean loss of one task: raw [N] model output, label [N] in natural units (see ranker.tasks)."""
    return LOSSES[task.loss][0](raw, label.to(raw.dtype))


def task_output(task: Task, raw: Tensor) -> Tensor:
    """Natural-unit prediction from a raw output: probability, seconds >= 0, or completion in [0, 1]."""
    return LOSSES[task.loss][1](raw)
