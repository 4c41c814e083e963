"""Static weighting: fixed per-task weights from the configuration."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ranker.balancing.base import Balancer


class Static(Balancer):
    """w_i = weights[i], fixed; all ones (EW) when no weights are given."""

    fixed: Tensor

    def __init__(self, num_tasks: int, weights: Sequence[float] | None = None) -> None:
        super().__init__(num_tasks)
        fixed = torch.ones(num_tasks, dtype=torch.float64)
        if weights is not None:
            fixed = torch.as_tensor(list(weights), dtype=torch.float64)
            if fixed.shape != (num_tasks,):
                raise ValueError(f"weights needs {num_tasks} values, got {len(fixed)}")
            if not bool(torch.isfinite(fixed).all()) or bool((fixed < 0).any()):
                raise ValueError(f"weights must be finite and >= 0, got {list(weights)}")
        self.register_buffer("fixed", fixed)

    def _weights(self, losses: Tensor, gramian: Tensor | None) -> Tensor:
        return self.fixed.clone()
