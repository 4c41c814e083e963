"""Training wrapper: losses, self-auxiliary heads and what loss balancers need.

The wrapped inference model stays exportable as is; the wrapper's own parameters (auxiliary heads)
never reach it. Stop-gradient feeds are part of the model (config `feeds`), so the exported graph
reads the same fed inputs as training.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ranker.models.aux_heads import AuxConfig, check_smaller_than_tower, make_aux_head
from ranker.models.base import ModelParts, MultiTaskModel
from ranker.models.id_prior import read_weights, row_counts, weighted_penalty
from ranker.models.inputs import GroupInput
from ranker.models.interactions import embedded_fields
from ranker.models.losses import task_loss
from ranker.models.position import PositionBias
from ranker.tasks import Task


class TrainingStep(NamedTuple):
    """One forward pass of the training wrapper."""

    # [K] task losses in task order, L_main + gamma * L_aux: what a balancer weights.
    losses: Tensor
    # [K] main-head losses (equal to `losses` without auxiliary heads), for logging and metrics.
    main_losses: Tensor
    # [K] auxiliary-head losses, 0 for tasks without a head; None without auxiliary heads.
    aux_losses: Tensor | None
    # task -> [N] raw model outputs.
    raw: dict[str, Tensor]
    # Shared representation tensor(s) (in the graph), for cheap-mode per-task gradients.
    shared: tuple[Tensor, ...]
    # gate name -> [N, E] gate weights of this batch.
    gates: dict[str, Tensor]
    # embedding_l2 * mean squared norm of the batch's field embeddings (None when off): added to
    # the balanced loss by the trainer, outside the balancer (it belongs to no task).
    penalty: Tensor | None = None


class MultiTaskTrainingModel(nn.Module):
    """model + optional self-auxiliary heads -> per-task losses for a batch.

    Balancers take per-task gradients either on `shared_parameters()` (dense, never embeddings) or,
    cheaply, on `TrainingStep.shared`; the trainer then runs one backward of sum_k w_k losses[k].
    `gate_usage` holds the last batch's mean gate weight per expert (detached) for logging.
    `embedding_l2` > 0 adds an L2 penalty on the embeddings each batch reads (the rows touched,
    as matrix factorisation regularises them): sparse optimisers have no weight decay, and id
    embeddings seen a few hundred times memorise their rows without it. `factor_l2` does the same
    for the tables of the model's factor terms, on the field vectors the forward pass read (a
    weaker penalty measured best for them: docs/results.md). `use_id_prior` weights each read
    by how rarely the training days read that row, towards a prior per id.
    `position` (training only, ranker.models.position) fits every loss at the row's served
    position, P(seen | position) times the model's output once seen; the model never reads it.
    """

    def __init__(
        self,
        model: MultiTaskModel,
        aux: AuxConfig | None = None,
        embedding_l2: float = 0.0,
        *,
        factor_l2: float = 0.0,
        position: PositionBias | None = None,
    ) -> None:
        super().__init__()
        if not embedding_l2 >= 0:
            raise ValueError(f"embedding_l2 must be >= 0, got {embedding_l2}")
        if not factor_l2 >= 0:
            raise ValueError(f"factor_l2 must be >= 0, got {factor_l2}")
        self.model = model
        self.aux = None if aux is None or aux.form == "none" else aux
        aux = self.aux
        self.embedding_l2 = embedding_l2
        self.factor_l2 = factor_l2
        self.position = position
        self.aux_heads = nn.ModuleDict()
        if aux is not None:
            names = model.task_names if aux.tasks is None else aux.tasks
            unknown = sorted(set(names) - set(model.task_names))
            if unknown:
                raise ValueError(
                    f"aux heads for unknown tasks {unknown}; tasks: {model.task_names}"
                )
            for t in names:
                self.aux_heads[t] = make_aux_head(
                    model.towers.in_dim(t), aux, model.towers.width(t)
                )
            for t, head in self.aux_heads.items():
                check_smaller_than_tower(t, aux.form, head, model.towers.towers[t])
        self.gate_usage: dict[str, Tensor] = {}
        # (group, per-row read weights) when the penalties are per id (`use_id_prior`).
        self.id_weights: list[tuple[GroupInput, Tensor]] = []

    def use_id_prior(self, train_chunks: Iterable[Mapping[str, Any]], alpha: float = 1.0) -> None:
        """Weight each read of an embedding row by (mean count / count) ** alpha, counted over
        the training inputs (one mapping, or a streamed log's chunks; ranker.models.id_prior):
        the L2 penalties become a prior per id."""
        groups = [self.model.inputs.user, self.model.inputs.item]
        if self.model.factors is not None:
            groups += [self.model.factors.user, self.model.factors.item]
        groups = [g for g in groups if g.table is not None]
        counts: list[Any] = [0] * len(groups)
        for chunk in train_chunks:
            counts = [c + row_counts(g, chunk) for c, g in zip(counts, groups, strict=True)]
        self.id_weights = [
            (g, read_weights(g, c, alpha)) for g, c in zip(groups, counts, strict=True)
        ]

    @property
    def task_names(self) -> tuple[str, ...]:
        return self.model.task_names

    def forward(
        self,
        inputs: Mapping[str, Tensor],
        labels: Mapping[str, Tensor],
        position: Tensor | None = None,
    ) -> TrainingStep:
        """inputs: encoded features (see ranker.models.inputs); labels: task -> [N] natural units;
        position: [N] served positions (0 = top), required with a position tower."""
        missing = [t for t in self.task_names if t not in labels]
        if missing:
            raise KeyError(f"labels missing for tasks {missing}; got {sorted(labels)}")
        if self.position is not None and position is None:
            raise ValueError("this training model debiases position: pass each row's position")
        tower = self.position

        def loss(t: Task, raw: Tensor) -> Tensor:
            if tower is not None and position is not None:
                raw = tower.observed_raw(t, raw, position)
            return task_loss(t, raw, labels[t.name])

        parts = self.model.forward_parts(inputs)
        main = torch.stack([loss(t, parts.raw[t.name]) for t in self.model.tasks])
        aux_losses = None
        losses = main
        if self.aux is not None:
            zero = main.new_zeros(())
            aux_losses = torch.stack(
                [
                    loss(t, self.aux_heads[t.name](parts.tower_inputs[t.name]))
                    if t.name in self.aux_heads
                    else zero
                    for t in self.model.tasks
                ]
            )
            losses = main + self.aux.gamma * aux_losses
        self.gate_usage = {k: w.detach().mean(dim=0) for k, w in parts.gates.items()}
        regularised = self.embedding_l2 > 0 or (
            self.factor_l2 > 0 and self.model.factors is not None
        )
        penalty = self._embedding_penalty(parts) if regularised else None
        return TrainingStep(losses, main, aux_losses, parts.raw, parts.shared, parts.gates, penalty)

    def _embedding_penalty(self, parts: ModelParts) -> Tensor:
        """embedding_l2 * per-row mean of the squared norms of the row's field embeddings, plus
        factor_l2 * the same for the factor terms' own tables, all as the forward pass computed
        them (`ModelParts.embedded`, `factor_fields`). With a prior per id (`use_id_prior`), each
        table row read is weighted instead (ranker.models.id_prior, `ModelParts.reads`)."""
        if self.id_weights:
            factors = self.model.factors
            weights = {id(g): w for g, w in self.id_weights}
            terms = []
            for read in parts.reads:
                is_factor = factors is not None and read.group in (factors.user, factors.item)
                scale = self.factor_l2 if is_factor else self.embedding_l2
                if scale > 0:
                    terms.append(scale * weighted_penalty(read, weights[id(read.group)]))
            return torch.stack(terms).sum()
        layer = self.model.inputs
        norms = [
            x[:, : embedded_fields(group) * group.embedding_dim].pow(2).sum(dim=1).mean()
            for group, x in zip((layer.user, layer.item), parts.embedded, strict=True)
        ]
        total = self.embedding_l2 * torch.stack(norms).sum()
        if parts.factor_fields and self.factor_l2 > 0:
            squares = [v.pow(2).sum(dim=(1, 2)).mean() for v in parts.factor_fields]
            total = total + self.factor_l2 * torch.stack(squares).sum()
        return total

    def shared_parameters(self) -> list[nn.Parameter]:
        return self.model.shared_parameters()

    def param_groups(
        self,
        lr: float,
        task_lr: Mapping[str, float] | None = None,
        position_lr: float | None = None,
    ) -> list[dict[str, Any]]:
        """The model's groups with each auxiliary head added to its task's group, and the position
        tower as group `position` at `position_lr` (default `lr`)."""
        groups = self.model.param_groups(lr, task_lr)
        for group in groups:
            if group["name"] in self.aux_heads:
                group["params"] = group["params"] + list(self.aux_heads[group["name"]].parameters())
        if self.position is not None:
            rate = lr if position_lr is None else position_lr
            groups.append(
                {"name": "position", "params": list(self.position.parameters()), "lr": rate}
            )
        return groups
