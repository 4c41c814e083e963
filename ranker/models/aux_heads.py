"""Self-auxiliary heads ("Can Small Heads Help?", Wang et al., WWW 2022), training only.

Each head reads the same input as its task's tower (feed columns included) and predicts the same
raw output with the same loss; being under-parameterised, it regularises the shared layers beneath.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

AuxForm = Literal["none", "linear", "pool", "bottleneck"]
# The forms that build a head; "none" builds none (the training config's default, so that
# `aux.form=none` switches the heads off and keeps the section).
AUX_FORMS: tuple[str, ...] = ("linear", "pool", "bottleneck")


@dataclass(frozen=True)
class AuxConfig:
    # Head form: linear (one dense layer to the output), pool (average groups of pool_size units,
    # then dense), bottleneck (dense of bottleneck_units, ReLU, then the output); none: no heads.
    form: AuxForm = "linear"
    # Weight of the auxiliary loss: task loss = L_main + gamma * L_aux (paper: tune 0.1-1).
    gamma: float = 0.3
    # Units averaged together by the pool form (the last group may be smaller).
    pool_size: int = 4
    # Width of the bottleneck form's hidden layer (paper: 4-8).
    bottleneck_units: int = 8
    # Tasks that get a head; None: every task.
    tasks: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.form not in ("none", *AUX_FORMS):
            raise ValueError(f"aux form must be one of {['none', *AUX_FORMS]}, got {self.form!r}")
        if not self.gamma >= 0:
            raise ValueError(f"aux gamma must be >= 0, got {self.gamma}")
        if self.pool_size < 1 or self.bottleneck_units < 1:
            raise ValueError("aux pool_size and bottleneck_units must be >= 1")
        if self.tasks is not None:
            object.__setattr__(self, "tasks", tuple(self.tasks))


def check_smaller_than_tower(task: str, form: str, head: nn.Module, tower: nn.Module) -> None:
    """Refuse a head with as many parameters as its tower or more.

    The paper's heads regularise because they are under-parameterised: to serve a small head the
    shared layers must carry the task in a simpler, more linearly readable form. A head as large
    as its tower asks no more of them than the tower does.
    """
    head_params = sum(p.numel() for p in head.parameters())
    tower_params = sum(p.numel() for p in tower.parameters())
    if head_params >= tower_params:
        raise ValueError(
            f"the {form} aux head of task {task!r} has {head_params} parameters, not fewer than "
            f"its tower's {tower_params}: a self-auxiliary head must be smaller than its tower "
            "(use a smaller form, fewer bottleneck_units or a larger pool_size)"
        )


class PoolHead(nn.Module):
    """[N, in_dim] -> mean of each group of `size` consecutive units [N, G] -> dense -> [N] (or
    [N, width] for a task with several raw outputs)."""

    pool: Tensor  # [in_dim, groups] averaging matrix

    def __init__(self, in_dim: int, size: int, width: int = 1) -> None:
        super().__init__()
        groups = -(-in_dim // size)
        member = torch.arange(in_dim) // size
        pool = torch.zeros(in_dim, groups)
        pool[torch.arange(in_dim), member] = 1.0
        self.register_buffer("pool", pool / pool.sum(dim=0))
        self.out = nn.Linear(groups, width)

    def forward(self, x: Tensor) -> Tensor:
        out = self.out(x @ self.pool)
        return out.squeeze(-1) if out.shape[-1] == 1 else out


class _Squeeze(nn.Module):
    """Drops a last axis of size 1, so a one-output head gives [N] like its tower."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        out = self.head(x)
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def make_aux_head(in_dim: int, config: AuxConfig, width: int = 1) -> nn.Module:
    """A head of the configured form: [N, in_dim] -> raw output [N], or [N, width] when the task's
    loss reads several raw outputs (its tower's width)."""
    if config.form == "pool":
        return PoolHead(in_dim, config.pool_size, width)
    if config.form == "bottleneck":
        u = config.bottleneck_units
        return _Squeeze(nn.Sequential(nn.Linear(in_dim, u), nn.ReLU(), nn.Linear(u, width)))
    return _Squeeze(nn.Linear(in_dim, width))
