"""Uncertainty weighting (UW): Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to
Weigh Losses for Scene Geometry and Semantics", CVPR 2018."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ranker.balancing.base import Balancer


class UW(Balancer):
    """Learnt log-variances s_i = log sigma_i^2; the loss is sum_i c_i exp(-s_i) L_i + s_i / 2.

    Kendall et al.'s likelihoods, per task kind: a regression (Gaussian) gives
    L / (2 sigma^2) + log sigma, so c_i = 1/2; a classification (softmax scaled by 1 / sigma^2)
    gives L / sigma^2 + log sigma, so c_i = 1. Both regularise with log sigma = s_i / 2.
    (METHODS.md writes "exp(-s_i) L_i + s_i, halved for regression", which is log sigma^2 for
    classification: twice the paper's regulariser, and it let classification settle at twice the
    weight of a regression with the same loss.) For a fixed L_i the optimum is s_i = log L_i for a
    regression and log 2 L_i for a classification: weight 1 / (2 L_i) for both kinds.
    The weights c_i exp(-s_i) carry gradients to `log_var`, so the trainer must hand this
    module's parameters to its optimizer; `regulariser()` is the sum_i s_i / 2 term.
    """

    factor: Tensor

    def __init__(
        self, num_tasks: int, regression: Sequence[bool] | None = None, init_log_var: float = 0.0
    ) -> None:
        super().__init__(num_tasks)
        regression = [False] * num_tasks if regression is None else list(regression)
        if len(regression) != num_tasks:
            raise ValueError(f"regression needs {num_tasks} flags, got {len(regression)}")
        self.log_var = nn.Parameter(torch.full((num_tasks,), float(init_log_var)))
        self.register_buffer("factor", torch.tensor([0.5 if r else 1.0 for r in regression]))

    def _weights(self, losses: Tensor, gramian: Tensor | None) -> Tensor:
        self.log["log_var"] = self.log_var.detach().clone()
        return self.factor * torch.exp(-self.log_var)

    def regulariser(self) -> Tensor:
        return 0.5 * self.log_var.sum()
