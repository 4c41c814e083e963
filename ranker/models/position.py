"""Position debiasing for training only: a PAL-style examination tower (Guo et al., RecSys 2019,
"PAL: A Position-bias Aware Learning Framework for CTR Prediction in Online Recommender Systems").

A served item is clicked when it is examined and, once examined, found relevant:
P(click | x, p) = P(seen | p) * P(click | x, seen). Training fits the product to the logged clicks;
the model alone learns P(click | x, seen) and is what is exported and served, so the service
needs no position and never learns "shown high = good" from its own traffic.

Every task of this project is 0 for an item that was not examined (no click: no watch time, no
completion), so the same factor applies to each: its expectation at position p is
P(seen | p) times its expectation once seen. `observed_raw` maps a task's raw output "once seen" to
its raw output at the served position, so the task's own loss (ranker.models.losses) is unchanged.

Position 0 is fixed as examined (P(seen | 0) = 1): it pins the scale the product leaves free, so
the exported model is the model at the top position, and `observed_raw` returns its input there.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ranker.models.base import ModelParts, MultiTaskModel
from ranker.tasks import Task

# Inputs key of the served positions for `AtServedPosition` (never a model input).
POSITION_INPUT = "position"
# Losses whose raw output is (or starts with) the logit of a probability that is 0 unless the item
# was examined: P(click), E[completion] as a soft label, P(W > 0) of the zero-inflated losses.
PROBABILITY_FIRST: tuple[str, ...] = ("bce", "ziln", "zi_gamma", "zi_bce")
# Losses whose raw output is an expectation that is 0 unless examined (log1p seconds, seconds).
EXPECTATION: tuple[str, ...] = ("log_mse", "mse")


class PositionBias(nn.Module):
    """Shallow position tower: one learnt examination logit per position.

    u[p] is the logit of "not examined" at position p, so log P(seen | p) = -softplus(u[p]) <= 0
    and log P(not seen | p) = u[p] - softplus(u[p]), both without cancellation. Positions
    >= `max_positions` share the last estimate. Position 0 is examined by definition (its
    parameter is never read).
    """

    def __init__(self, max_positions: int = 64, init_seen: float = 0.9) -> None:
        super().__init__()
        if max_positions < 2:
            raise ValueError(f"max_positions must be >= 2, got {max_positions}")
        if not 0.0 < init_seen < 1.0:
            raise ValueError(f"init_seen must be in (0, 1), got {init_seen}")
        self.max_positions = max_positions
        # Start close to "everything is examined": the data, not the start, sets the curve.
        start = torch.full((max_positions,), float(torch.logit(torch.tensor(1.0 - init_seen))))
        self.not_seen_logit = nn.Parameter(start)

    def _logits(self, position: Tensor) -> tuple[Tensor, Tensor]:
        """position [N] int -> (u [N], below_top [N] bool): row p's logit and p > 0."""
        if position.dtype.is_floating_point or position.dtype == torch.bool:
            raise TypeError(f"position must be an integer tensor, got {position.dtype}")
        if position.numel() and int(position.min()) < 0:
            raise ValueError("position must be >= 0 (0 = the top of the list)")
        index = position.long().clamp(max=self.max_positions - 1)
        return self.not_seen_logit[index], position > 0

    def log_seen(self, position: Tensor) -> Tensor:
        """log P(seen | position), [N], exactly 0 at position 0."""
        u, below_top = self._logits(position)
        return torch.where(below_top, -F.softplus(u), torch.zeros_like(u))

    def examination(self) -> Tensor:
        """P(seen | p) for p = 0 .. max_positions - 1 (detached), for reports."""
        positions = torch.arange(self.max_positions, device=self.not_seen_logit.device)
        return self.log_seen(positions).detach().exp()

    def observed_raw(self, task: Task, raw: Tensor, position: Tensor) -> Tensor:
        """A task's raw output once seen -> its raw output at `position` (same shape, same loss).

        Probabilities (bce; the P(y > 0) logit of the zero-inflated losses) become the logit of
        P(seen) * sigmoid(logit); expectations (log_mse on log1p seconds, mse on seconds) are
        scaled by P(seen): both are 0 when the item was not examined.
        """
        u, below_top = self._logits(position)
        if task.loss in PROBABILITY_FIRST:
            logit = raw if raw.dim() == 1 else raw[:, 0]
            # logit(s * sigmoid(l)) = log s - log(1 - s + e^-l) = log s - logaddexp(log(1-s), -l)
            log_seen, log_unseen = -F.softplus(u), u - F.softplus(u)
            moved = log_seen - torch.logaddexp(log_unseen, -logit)
            logit = torch.where(below_top, moved, logit)
            return logit if raw.dim() == 1 else torch.cat([logit[:, None], raw[:, 1:]], dim=1)
        if task.loss in EXPECTATION:
            return raw * torch.where(below_top, torch.sigmoid(-u), torch.ones_like(u))
        raise ValueError(f"position debiasing has no rule for loss {task.loss!r}")


class AtServedPosition(nn.Module):
    """A model's outputs at each row's served position (inputs key `position`, [N] int, beside
    the features): what logged outcomes measure, so a debiased model is validated on logged days
    the way it was trained. Its position-0 outputs alone look worse on such days the better the
    position effect is removed. Training only; `tasks`, `task_names` and `forward_parts` are the
    model's, so evaluation code reads it like one."""

    def __init__(self, model: MultiTaskModel, tower: PositionBias) -> None:
        super().__init__()
        self.model = model
        self.tower = tower
        self.tasks = model.tasks
        self.task_names = model.task_names

    def forward_parts(self, inputs: Mapping[str, Tensor]) -> ModelParts:
        parts = self.model.forward_parts(inputs)
        position = inputs[POSITION_INPUT]
        raw = {t.name: self.tower.observed_raw(t, parts.raw[t.name], position) for t in self.tasks}
        return parts._replace(raw=raw)

    def predictions(self, raw: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return self.model.predictions(raw)

    def forward(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return self.predictions(self.forward_parts(inputs).raw)
