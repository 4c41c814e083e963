"""Shared-bottom baseline: one MLP every task reads, then a tower per task."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from ranker.models.base import Body, ModelConfig, MultiTaskModel
from ranker.models.layers import Experts
from ranker.schema import FeatureSpec
from ranker.tasks import Task


@dataclass(frozen=True)
class SharedBottomConfig(ModelConfig):
    # Hidden layers of the shared bottom MLP.
    bottom_units: tuple[int, ...] = (256, 128)


class SharedBottom(MultiTaskModel):
    """inputs -> bottom MLP [N, H] -> towers. The bottom is a single expert, so its first layer is
    split by input group and the user side is multiplied once per request."""

    kind = "shared_bottom"
    config_class = SharedBottomConfig
    config: SharedBottomConfig

    def __init__(
        self, spec: FeatureSpec, tasks: Sequence[Task], config: SharedBottomConfig
    ) -> None:
        super().__init__(spec, tasks, config)
        self.bottom = Experts(1, self.inputs.out_dims, config.bottom_units, config.dropout)
        self._make_towers(self.bottom.out_dim)

    def body(self, user: Tensor, item: Tensor) -> Body:
        bottom = self.bottom((user, item)).squeeze(0)  # [N, H]
        return Body([bottom] * len(self.tasks), (bottom,), {})

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.bottom.parameters())
