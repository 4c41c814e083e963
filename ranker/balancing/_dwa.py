"""Dynamic weight average (DWA): Liu, Johns & Davison, "End-to-End Multi-Task Learning with
Attention", CVPR 2019."""

from __future__ import annotations

import torch
from torch import Tensor

from ranker.balancing.base import Balancer, check_finite


class DWA(Balancer):
    """w = K softmax(ratio / T) with ratio_i = mean L_i over the last `window` calls divided by the
    mean over the `window` calls before; equal weights until 2 * window calls have been seen.

    The paper uses epoch averages (window = one epoch of steps); a window of steps keeps the
    method independent of what the trainer calls an epoch. Loss ratios ignore each task's scale.
    """

    history: Tensor
    seen: Tensor

    def __init__(self, num_tasks: int, temperature: float = 2.0, window: int = 50) -> None:
        super().__init__(num_tasks)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.temperature = temperature
        self.window = window
        self.register_buffer("history", torch.zeros(2 * window, num_tasks, dtype=torch.float64))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))

    def _weights(self, losses: Tensor, gramian: Tensor | None) -> Tensor:
        check_finite(losses, "losses")
        self.history.copy_(torch.cat([self.history[1:], losses[None]]))
        self.seen.add_(1)
        older = self.history[: self.window].mean(0)
        recent = self.history[self.window :].mean(0)
        # ratio 1 (equal weights) until the window is full, and for a task whose loss was 0
        valid = (self.seen >= 2 * self.window) & (older > 0)
        ratio = torch.where(valid, recent / torch.where(valid, older, 1.0), 1.0)
        self.log["ratio"] = ratio
        return self.num_tasks * torch.softmax(ratio / self.temperature, 0)
