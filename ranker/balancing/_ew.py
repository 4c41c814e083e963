"""Equal weighting (EW): the linear scalarisation sum_i L_i every method is compared against."""

from __future__ import annotations

import torch
from torch import Tensor

from ranker.balancing.base import Balancer


class EW(Balancer):
    """w_i = 1 for every task."""

    def __init__(self, num_tasks: int) -> None:
        super().__init__(num_tasks)

    def _weights(self, losses: Tensor, gramian: Tensor | None) -> Tensor:
        return torch.ones_like(losses)
