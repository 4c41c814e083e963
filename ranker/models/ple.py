"""PLE (Tang et al., RecSys 2020): stacked CGC levels of task-specific and shared experts."""

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
class PLEConfig(ModelConfig):
    # Stacked CGC levels; 1 is a single CGC.
    num_levels: int = 2
    # Shared experts per level.
    num_shared_experts: int = 2
    # Task-specific experts per task per level.
    num_task_experts: int = 2
    # Hidden layers of every expert, all levels; the last width is the towers' input width.
    expert_units: tuple[int, ...] = (128, 64)
    # Probability of hiding an expert from a gate, per row and gate (training only).
    expert_dropout: float = 0.0
    # Explicit user x item interactions fed to the first level with the inputs: `none`, or `dot`
    # (pairwise dot products of user-side and item-side field embeddings, FM / DLRM style).
    interactions: str = "none"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_interactions(self.interactions)


class CGC(nn.Module):
    """One customized gate control level over K tasks.

    Task experts (k per task, batched as K * k) and shared experts (s, batched) -> task k's gate
    mixes its own k experts and the s shared ones; except on the last level a shared gate mixes all
    experts into the next level's shared input.
    First level: every gate and expert reads the split input (user [B_u, d_u], item [N, d_i] and,
    with interactions, the dot products [N, P]).
    Later levels: inputs are K task vectors [K, N, H] and a shared vector [N, H].
    Returns task outputs [K, N, H], the shared output [N, H] (None on the last level), the shared
    experts' outputs [s, N, H] and gate weights.
    """

    def __init__(
        self, num_tasks: int, in_dims: Sequence[int] | int, config: PLEConfig, last: bool
    ) -> None:
        super().__init__()
        c = config
        self.num_tasks, self.last = num_tasks, last
        self.k, self.s = c.num_task_experts, c.num_shared_experts
        self.first_level = not isinstance(in_dims, int)
        gate_dims = tuple(in_dims) if not isinstance(in_dims, int) else (in_dims,)
        if self.first_level:
            task_in: Sequence[int] | int = gate_dims
        else:
            task_in = gate_dims[0]
        self.task_experts = Experts(num_tasks * self.k, task_in, c.expert_units, c.dropout)
        self.shared_experts = Experts(self.s, gate_dims, c.expert_units, c.dropout)
        self.task_gates = nn.ModuleList(
            SplitLinear(gate_dims, self.k + self.s) for _ in range(num_tasks)
        )
        self.shared_gate = None if last else SplitLinear(gate_dims, num_tasks * self.k + self.s)
        self.expert_dropout = c.expert_dropout

    def forward(
        self, task_in: Sequence[Tensor] | Tensor, shared_in: Sequence[Tensor]
    ) -> tuple[Tensor, Tensor | None, Tensor, list[Tensor]]:
        """First level: task_in = shared_in = (user, item). Later: task_in [K, N, H], shared_in (x,)."""
        if self.first_level:
            task_experts = self.task_experts(task_in)  # [K * k, N, H]
            gate_in: list[Sequence[Tensor]] = [shared_in] * self.num_tasks
        else:
            assert isinstance(task_in, Tensor)
            kk, n, h = self.num_tasks, task_in.shape[1], task_in.shape[2]
            per_expert = task_in.unsqueeze(1).expand(kk, self.k, n, h).reshape(kk * self.k, n, h)
            task_experts = self.task_experts(per_expert)  # [K * k, N, H]
            gate_in = [(x,) for x in task_in.unbind(0)]
        shared_experts = self.shared_experts(shared_in)  # [s, N, H]

        outs, weights = [], []
        for t, gate in enumerate(self.task_gates):
            own = task_experts[t * self.k : (t + 1) * self.k]
            w = softmax_gate(gate(gate_in[t]), self.expert_dropout, self.training)  # [N, k + s]
            outs.append(_mix(w, torch.cat([own, shared_experts], dim=0)))
            weights.append(w)
        shared_out = None
        if self.shared_gate is not None:
            w = softmax_gate(self.shared_gate(shared_in), self.expert_dropout, self.training)
            shared_out = _mix(w, torch.cat([task_experts, shared_experts], dim=0))
            weights.append(w)
        return torch.stack(outs), shared_out, shared_experts, weights


def _mix(weights: Tensor, experts: Tensor) -> Tensor:
    """weights [N, E], experts [E, N, H] -> [N, H]."""
    return torch.matmul(weights.unsqueeze(1), experts.transpose(0, 1)).squeeze(1)


class PLE(MultiTaskModel):
    """inputs -> num_levels CGC levels -> task k's tower reads the last level's task-k output.

    `ModelParts.shared` is the last level's shared-expert outputs [s, N, H]; gates are named
    "level{l}/{task}" and "level{l}/shared" ([N, k + s] and [N, K * k + s]).
    """

    kind = "ple"
    config_class = PLEConfig
    config: PLEConfig

    def __init__(self, spec: FeatureSpec, tasks: Sequence[Task], config: PLEConfig) -> None:
        super().__init__(spec, tasks, config)
        self.interactions = make_interactions(config.interactions, self.inputs)
        dims: tuple[int, ...] = self.inputs.out_dims
        if self.interactions is not None:
            dims = (*dims, self.interactions.out_dim)
        n = config.num_levels
        width = config.expert_units[-1]
        self.levels = nn.ModuleList(
            CGC(len(self.tasks), dims if i == 0 else width, config, i == n - 1) for i in range(n)
        )
        self._make_towers(width)

    def body(self, user: Tensor, item: Tensor) -> Body:
        parts: tuple[Tensor, ...] = (user, item)
        if self.interactions is not None:
            parts = (user, item, self.interactions(user, item))  # + [N, F_u * F_i]
        task_in: Sequence[Tensor] | Tensor = parts  # later levels: [K, N, H]
        shared_in: Sequence[Tensor] = parts  # later levels: ([N, H],)
        gates: dict[str, Tensor] = {}
        for i, level in enumerate(self.levels):
            task_in, shared_out, shared_experts, weights = level(task_in, shared_in)
            names = [*self.task_names, "shared"][: len(weights)]
            gates.update({f"level{i}/{name}": w for name, w in zip(names, weights, strict=True)})
            if shared_out is not None:
                shared_in = (shared_out,)
        assert isinstance(task_in, Tensor)
        # The last level's shared experts [s, N, H]: every task reads them, nothing else does.
        return Body(list(task_in.unbind(0)), (shared_experts,), gates)

    def shared_parameters(self) -> list[nn.Parameter]:
        """Experts read by more than one task: every level's shared experts, and the task experts of
        all levels but the last (they feed that level's shared gate, hence every task above)."""
        params: list[nn.Parameter] = []
        levels: list[CGC] = list(self.levels)  # type: ignore[arg-type]
        for i, level in enumerate(levels):
            params += level.shared_experts.parameters()
            if i < len(levels) - 1:
                params += level.task_experts.parameters()
        return params
