"""Task towers, with stop-gradient feeds of earlier tasks' outputs ("estimates as features")."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ranker.models.layers import mlp


class Tower(nn.Module):
    """A task head: ReLU MLP then one output unit. [N, in_dim] -> raw output [N]."""

    def __init__(self, in_dim: int, units: Sequence[int], dropout: float = 0.0) -> None:
        super().__init__()
        self.hidden = mlp(in_dim, units, dropout)
        self.out = nn.Linear(units[-1] if units else in_dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.hidden(x)).squeeze(-1)


class TaskTowers(nn.Module):
    """One tower per task, run in task order. A feed target -> source appends the source task's raw
    output, detached, as one more input column of the target's tower: the target learns from the
    source's estimate but its loss never pushes the source's tower (or anything beneath it through
    that path). The inference model keeps the feed, so the exported graph matches training.
    """

    def __init__(
        self,
        tasks: Sequence[str],
        in_dim: int,
        units: Sequence[int],
        dropout: float,
        feeds: Mapping[str, str],
    ) -> None:
        super().__init__()
        self.task_names = tuple(tasks)
        self.feeds = dict(feeds)
        self.in_dims = {t: in_dim + (t in self.feeds) for t in self.task_names}
        self.towers = nn.ModuleDict(
            {t: Tower(self.in_dims[t], units, dropout) for t in self.task_names}
        )

    def in_dim(self, task: str) -> int:
        """Width of the task's tower input, feed columns included."""
        return self.in_dims[task]

    def forward(self, inputs: Sequence[Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """inputs: per task [N, in_dim], task order -> (raw outputs [N], tower inputs [N, in_dim(t)])."""
        raw: dict[str, Tensor] = {}
        tower_inputs: dict[str, Tensor] = {}
        for task, x in zip(self.task_names, inputs, strict=True):
            source = self.feeds.get(task)
            if source is not None:
                x = torch.cat([x, raw[source].detach().unsqueeze(-1)], dim=-1)
            tower_inputs[task] = x
            raw[task] = self.towers[task](x)
        return raw, tower_inputs
