"""The mean of several inference models with the same inputs and tasks: one module to export,
for a seed ensemble (training/ensemble.py publishes it)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn

from ranker.models.base import MultiTaskModel


class MeanOfModels(nn.Module):
    """Inference models with the same inputs and tasks -> {task: mean of their predictions}."""

    kind = "ensemble"

    def __init__(self, members: Sequence[MultiTaskModel]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        first = members[0]
        for i, member in enumerate(members[1:], start=1):
            if member.input_names != first.input_names or member.task_names != first.task_names:
                raise ValueError(
                    f"member {i}: inputs {member.input_names} / tasks {member.task_names} differ "
                    f"from member 0's {first.input_names} / {first.task_names}"
                )
        self.members = nn.ModuleList(members)
        self.input_names = first.input_names
        self.task_names = first.task_names
        self.tasks = first.tasks

    def forward(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        outputs = [member(inputs) for member in self.members]
        return {
            task: torch.stack([out[task] for out in outputs]).mean(dim=0)
            for task in self.task_names
        }

    def hparams(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "tasks": [t.to_dict() for t in self.tasks],
            "members": [cast(MultiTaskModel, member).hparams() for member in self.members],
        }
