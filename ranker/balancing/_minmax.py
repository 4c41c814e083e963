"""MinMax: optimise the worst task's loss (the minimax scalarisation of multi-objective learning)."""

from __future__ import annotations

import torch
from torch import Tensor

from ranker.balancing.base import Balancer, check_finite


class MinMax(Balancer):
    """All weight K on the task with the largest loss (shared equally on ties); with
    `temperature` > 0 the smoothed w proportional to L_i ** (1 / temperature), which tends to the
    hard maximum as the temperature falls and, like it, ignores a common scale of the losses.
    """

    def __init__(self, num_tasks: int, temperature: float = 0.0) -> None:
        super().__init__(num_tasks)
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        self.temperature = temperature

    def _weights(self, losses: Tensor, gramian: Tensor | None) -> Tensor:
        check_finite(losses, "losses")
        if self.temperature > 0:
            log_losses = losses.clamp_min(torch.finfo(torch.float64).tiny).log()
            return self.num_tasks * torch.softmax(log_losses / self.temperature, 0)
        worst = (losses == losses.max()).to(losses.dtype)
        return self.num_tasks * worst / worst.sum()
