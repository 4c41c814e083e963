"""Task towers, with stop-gradient feeds of earlier tasks' outputs ("estimates as features")."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ranker.models.layers import mlp


class Tower(nn.Module):
    """A task head: ReLU MLP then `width` output units. [N, in_dim] -> raw output [N] (width 1) or
    [N, width] (losses with several raw outputs, e.g. ZILN's logit, mu and sigma)."""

    def __init__(
        self, in_dim: int, units: Sequence[int], dropout: float = 0.0, width: int = 1
    ) -> None:
        super().__init__()
        self.width = width
        self.hidden = mlp(in_dim, units, dropout)
        self.out = nn.Linear(units[-1] if units else in_dim, width)

    def forward(self, x: Tensor) -> Tensor:
        out = self.out(self.hidden(x))
        return out.squeeze(-1) if self.width == 1 else out


class TaskTowers(nn.Module):
    """One tower per task, run in task order. A feed target -> source appends the source task's raw
    output, detached, as more input columns of the target's tower (one per raw output of the
    source): the target learns from the source's estimate but its loss never pushes the source's
    tower (or anything beneath it through that path). The inference model keeps the feed, so the
    exported graph matches training. `widths` gives each task's raw outputs per row (default 1).
    """

    def __init__(
        self,
        tasks: Sequence[str],
        in_dim: int,
        units: Sequence[int],
        dropout: float,
        feeds: Mapping[str, str],
        widths: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__()
        self.task_names = tuple(tasks)
        self.feeds = dict(feeds)
        self.widths = {t: int((widths or {}).get(t, 1)) for t in self.task_names}
        self.in_dims = {
            t: in_dim + (self.widths[self.feeds[t]] if t in self.feeds else 0)
            for t in self.task_names
        }
        self.towers = nn.ModuleDict(
            {t: Tower(self.in_dims[t], units, dropout, self.widths[t]) for t in self.task_names}
        )

    def in_dim(self, task: str) -> int:
        """Width of the task's tower input, feed columns included."""
        return self.in_dims[task]

    def width(self, task: str) -> int:
        """Raw outputs per row of the task's tower."""
        return self.widths[task]

    def forward(
        self, inputs: Sequence[Tensor], offsets: Mapping[str, Tensor] | None = None
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """inputs: per task [N, in_dim], task order -> (raw outputs [N] or [N, width(t)], tower
        inputs [N, in_dim(t)]). `offsets[t]`, shaped like t's raw output, is added to it before any
        feed reads it (the factor terms of `ranker.models.factors`; a task without one gets none)."""
        raw: dict[str, Tensor] = {}
        tower_inputs: dict[str, Tensor] = {}
        for task, x in zip(self.task_names, inputs, strict=True):
            source = self.feeds.get(task)
            if source is not None:
                fed = raw[source].detach()
                x = torch.cat([x, fed.unsqueeze(-1) if fed.dim() == 1 else fed], dim=-1)
            tower_inputs[task] = x
            out = self.towers[task](x)
            offset = None if offsets is None else offsets.get(task)
            raw[task] = out if offset is None else out + offset
        return raw, tower_inputs
