"""Model registry and builder: the one place a model kind and its config dict become a module."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any

from ranker.models.base import MultiTaskModel
from ranker.models.mmoe import MMoE
from ranker.models.ple import PLE
from ranker.models.shared_bottom import SharedBottom
from ranker.schema import FeatureSpec
from ranker.tasks import Task, build_tasks

MODELS: dict[str, type[MultiTaskModel]] = {
    "shared_bottom": SharedBottom,
    "mmoe": MMoE,
    "ple": PLE,
}


def build_model(
    kind: str,
    spec: FeatureSpec,
    tasks: Sequence[Task | str] | None = None,
    config: Mapping[str, Any] | None = None,
) -> MultiTaskModel:
    """Build an inference model. `tasks`: Task objects or names (default: all, default losses);
    `config`: fields of the kind's config dataclass (lists and a feeds mapping accepted).
    Unknown kinds and fields are rejected with the valid names."""
    if kind not in MODELS:
        raise ValueError(f"unknown model kind {kind!r}; valid: {sorted(MODELS)}")
    cls = MODELS[kind]
    config = dict(config or {})
    valid = [f.name for f in fields(cls.config_class)]
    unknown = sorted(set(config) - set(valid))
    if unknown:
        raise ValueError(f"unknown {kind} config fields {unknown}; valid: {valid}")
    task_list = _tasks(tasks)
    try:
        cfg = cls.config_class(**config)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{kind} config: {exc}") from None
    return cls(spec, task_list, cfg)  # type: ignore[call-arg]


def _tasks(tasks: Sequence[Task | str] | None) -> tuple[Task, ...]:
    if tasks is None:
        return build_tasks()
    if all(isinstance(t, Task) for t in tasks):
        built = tuple(t for t in tasks if isinstance(t, Task))
        build_tasks([t.name for t in built], {t.name: t.loss for t in built})  # validates
        return built
    if all(isinstance(t, str) for t in tasks):
        return build_tasks([str(t) for t in tasks])
    raise TypeError("tasks must be all Task objects or all task names")
