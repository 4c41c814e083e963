"""PCGrad: Yu, Kumar, Gupta, Levine, Hausman & Finn, "Gradient Surgery for Multi-Task Learning",
NeurIPS 2020."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ranker.balancing.base import Balancer, check_finite


def pcgrad_weights(gramian: Tensor, orders: Sequence[Sequence[int]]) -> Tensor:
    """PCGrad's update sum_i g_i^PC written as weights on the task gradients.

    Each projected gradient stays a combination c^(i) of the g_i, so g_i^PC . g_j = c^(i) . G[:, j]
    and projecting g_i^PC away from a conflicting g_j adds -(c^(i) . G[:, j]) / G_jj to c^(i)_j.
    `orders[i]` is the order in which task i meets the others (its own index is skipped). Every
    weight is >= 1: projections only ever add non-negative multiples of the g_j.
    """
    g = gramian.detach().cpu().numpy().astype(np.float64)
    k = g.shape[0]
    total = np.zeros(k)
    for i in range(k):
        c = np.zeros(k)
        c[i] = 1.0
        for j in orders[i]:
            dot = float(c @ g[:, j])
            if j != i and dot < 0.0 and g[j, j] > 0.0:
                c[j] -= dot / g[j, j]
        total += c
    return torch.from_numpy(total).to(gramian.device, gramian.dtype)


class PCGrad(Balancer):
    """Pairwise projection of conflicting gradients, each task meeting the others in a fresh
    random order every update, drawn from the module's own seeded generator (checkpointed)."""

    requires_gramian = True

    def __init__(self, num_tasks: int, seed: int = 0, update_every: int = 1) -> None:
        super().__init__(num_tasks, update_every)
        self.generator = torch.Generator().manual_seed(seed)

    def _weights(self, losses: Tensor, gramian: Tensor | None) -> Tensor:
        assert gramian is not None
        check_finite(gramian, "gramian")
        k = self.num_tasks
        orders = [torch.randperm(k, generator=self.generator).tolist() for _ in range(k)]
        return pcgrad_weights(gramian, orders)

    def get_extra_state(self) -> Any:
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: Any) -> None:
        self.generator.set_state(state["generator"])
