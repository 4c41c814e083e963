"""MMoE (Ma et al., KDD 2018): shared experts mixed by one softmax gate per task."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ranker.models.base import Body, ModelConfig, MultiTaskModel
from ranker.models.interactions import check_interactions, make_interactions
from ranker.models.layers import Experts, SplitLinear, softmax_gate
from ranker.schema import FeatureSpec
from ranker.tasks import Task


@dataclass(frozen=True)
class MMoEConfig(ModelConfig):
    # Number of shared experts.
    num_experts: int = 8
    # Hidden layers of every expert; the last width is the towers' input width.
    expert_units: tuple[int, ...] = (256, 128)
    # Probability of hiding an expert from a gate, per row and task (training only).
    expert_dropout: float = 0.0
    # Explicit user x item interactions fed to the experts and gates with the inputs: `none`, or
    # `dot` (pairwise dot products of user-side and item-side field embeddings, FM / DLRM style).
    interactions: str = "none"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_interactions(self.interactions)


class MMoE(MultiTaskModel):
    """inputs -> E experts [E, N, H] (one batched matmul per layer); gates: one linear layer on the
    input giving [N, K, E] logits, softmax over experts; task k's tower reads sum_e g_k,e expert_e.
    With `interactions: dot` the experts and gates read a third input part, the user x item field
    dot products [N, F_u * F_i] (`ranker.models.interactions`).

    Gates are named by task in `ModelParts.gates` ([N, E] each).
    """

    kind = "mmoe"
    config_class = MMoEConfig
    config: MMoEConfig

    def __init__(self, spec: FeatureSpec, tasks: Sequence[Task], config: MMoEConfig) -> None:
        super().__init__(spec, tasks, config)
        self.interactions = make_interactions(config.interactions, self.inputs)
        dims: tuple[int, ...] = self.inputs.out_dims
        if self.interactions is not None:
            dims = (*dims, self.interactions.out_dim)
        self.experts = Experts(config.num_experts, dims, config.expert_units, config.dropout)
        self.gates = SplitLinear(dims, len(self.tasks) * config.num_experts)
        self._make_towers(self.experts.out_dim)

    def body(self, user: Tensor, item: Tensor) -> Body:
        parts: tuple[Tensor, ...] = (user, item)
        if self.interactions is not None:
            parts = (user, item, self.interactions(user, item))  # + [N, F_u * F_i]
        experts = self.experts(parts)  # [E, N, H]
        logits = self.gates(parts)  # [N, K * E]
        logits = logits.unflatten(-1, (len(self.tasks), self.config.num_experts))  # [N, K, E]
        weights = softmax_gate(logits, self.config.expert_dropout, self.training)
        mixed = torch.matmul(weights, experts.transpose(0, 1))  # [N, K, E] @ [N, E, H] -> [N, K, H]
        gates = {t: weights[:, k] for k, t in enumerate(self.task_names)}
        return Body(list(mixed.unbind(1)), (experts,), gates)

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.experts.parameters())
