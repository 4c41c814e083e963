"""The ranking score: one number per candidate from the task predictions (numpy, torch-free).

The same function ranks in offline evaluation, in weight tuning and in the service, so what was
tuned is what is served. Two formulas:

- `weighted_sum`: sum_t w_t * f_t(pred_t), with f_t one of `identity` (probabilities), `log1p`
  (seconds) or `rank` (the prediction's rank within its request, scaled to [0, 1]);
- `weighted_product`: prod_t (pred_t + bias_t) ** w_t, computed in log space.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ranker.metrics import average_ranks, run_starts

FormulaKind = Literal["weighted_sum", "weighted_product"]
FORMULAS: tuple[str, ...] = ("weighted_sum", "weighted_product")
TRANSFORMS: tuple[str, ...] = ("identity", "log1p", "rank")
# What each task's prediction is transformed by when a formula does not say.
DEFAULT_TRANSFORMS: dict[str, str] = {
    "click": "identity",
    "watch_time": "log1p",
    "completion": "identity",
}


class ScoreError(ValueError):
    """An invalid score formula; the message names the field."""


@dataclass(frozen=True)
class ScoreFormula:
    """How task predictions combine into the ranking score."""

    kind: FormulaKind = "weighted_sum"
    # task -> weight; tasks left out do not contribute.
    weights: Mapping[str, float] = field(default_factory=lambda: {"click": 1.0})
    # weighted_sum only: task -> identity | log1p | rank (default per task: DEFAULT_TRANSFORMS).
    transforms: Mapping[str, str] = field(default_factory=dict)
    # weighted_product only: task -> bias added before the power (keeps zero predictions finite).
    biases: Mapping[str, float] = field(default_factory=dict)
    # Allow negative weights (a task that should push items down).
    allow_negative: bool = False

    def __post_init__(self) -> None:
        if self.kind not in FORMULAS:
            raise ScoreError(
                f"formula: must be one of {list(FORMULAS)}, got {reprlib.repr(self.kind)}"
            )
        if not self.weights:
            raise ScoreError("weights: at least one task needs a weight")
        for task, weight in self.weights.items():
            if (
                isinstance(weight, bool)
                or not isinstance(weight, int | float)
                or not math.isfinite(weight)
            ):
                raise ScoreError(
                    f"weights.{task}: must be a finite number, got {reprlib.repr(weight)}"
                )
            if weight < 0 and not self.allow_negative:
                raise ScoreError(f"weights.{task}: must be >= 0 (set allow_negative), got {weight}")
        for task, transform in self.transforms.items():
            if transform not in TRANSFORMS:
                raise ScoreError(
                    f"transforms.{task}: must be one of {list(TRANSFORMS)}, got {reprlib.repr(transform)}"
                )
        for task, bias in self.biases.items():
            if (
                isinstance(bias, bool)
                or not isinstance(bias, int | float)
                or not (math.isfinite(bias) and bias > 0)
            ):
                raise ScoreError(
                    f"biases.{task}: must be a finite number > 0, got {reprlib.repr(bias)}"
                )
        if self.kind == "weighted_product" and self.transforms:
            raise ScoreError("transforms: only the weighted_sum formula takes transforms")
        if self.kind == "weighted_sum" and self.biases:
            raise ScoreError("biases: only the weighted_product formula takes biases")
        object.__setattr__(self, "weights", {k: float(v) for k, v in self.weights.items()})

    def tasks(self) -> list[str]:
        return list(self.weights)

    def check_tasks(self, known: Sequence[str]) -> None:
        """Refuse a formula that names a task the model does not predict."""
        for part in ("weights", "transforms", "biases"):
            for task in getattr(self, part):
                if task not in known:
                    raise ScoreError(
                        f"{part}.{task}: the model has no task {task!r}; tasks: {list(known)}"
                    )

    def transform(self, task: str) -> str:
        return self.transforms.get(task, DEFAULT_TRANSFORMS.get(task, "identity"))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"formula": self.kind, "weights": dict(self.weights)}
        if self.transforms:
            out["transforms"] = dict(self.transforms)
        if self.biases:
            out["biases"] = dict(self.biases)
        if self.allow_negative:
            out["allow_negative"] = True
        return out

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ScoreFormula:
        if not isinstance(doc, Mapping):
            raise ScoreError(f"score: expected a mapping, got {type(doc).__name__}")
        unknown = sorted(
            set(doc) - {"formula", "weights", "transforms", "biases", "allow_negative"}
        )
        if unknown:
            raise ScoreError(
                f"{unknown[0]}: unknown score field; valid: formula, weights, transforms, biases, allow_negative"
            )
        for part in ("weights", "transforms", "biases"):
            if part in doc and not isinstance(doc[part], Mapping):
                raise ScoreError(f"{part}: expected a mapping of task -> value")
        return cls(
            kind=doc.get("formula", "weighted_sum"),
            weights=dict(doc.get("weights", {"click": 1.0})),
            transforms=dict(doc.get("transforms", {})),
            biases=dict(doc.get("biases", {})),
            allow_negative=_flag(doc.get("allow_negative", False)),
        )


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ScoreError(f"allow_negative: must be true or false, got {reprlib.repr(value)}")
    return value


# The hand-picked default a platform would start from: clicks first, some watch time and completion.
DEFAULT_FORMULA = ScoreFormula(weights={"click": 1.0, "watch_time": 0.2, "completion": 0.5})


def rank_within(values: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    """Each value's rank within its group scaled to [0, 1] (highest = 1; ties share the average)."""
    n = len(values)
    groups = np.zeros(n, dtype=np.int64) if groups is None else np.asarray(groups)
    ranks, order = average_ranks(groups, np.asarray(values, dtype=np.float64))
    group_id = np.cumsum(run_starts(groups[order])) - 1
    sizes = np.bincount(group_id) if n else np.zeros(0, dtype=np.int64)
    scaled = np.empty(n)
    scaled[order] = (ranks - 1) / np.maximum(sizes[group_id] - 1, 1)
    return scaled


def score(
    formula: ScoreFormula, predictions: Mapping[str, np.ndarray], groups: np.ndarray | None = None
) -> np.ndarray:
    """Ranking scores [N] for per-task predictions {task: [N]} in natural units.

    `groups` (e.g. request ids) matter only for the `rank` transform; None means one request.
    """
    missing = [t for t in formula.weights if t not in predictions]
    if missing:
        raise ScoreError(f"weights: no predictions for tasks {missing}; got {sorted(predictions)}")
    first = next(iter(formula.weights))
    n = len(predictions[first])
    if formula.kind == "weighted_sum":
        total = np.zeros(n)
        for task, weight in formula.weights.items():
            values = np.asarray(predictions[task], dtype=np.float64)
            transform = formula.transform(task)
            if transform == "log1p":
                values = np.log1p(np.maximum(values, 0.0))
            elif transform == "rank":
                values = rank_within(values, groups)
            total += weight * values
        return total
    log_total = np.zeros(n)
    for task, weight in formula.weights.items():
        values = np.asarray(predictions[task], dtype=np.float64)
        bias = formula.biases.get(task, 1e-3)
        log_total += weight * np.log(np.maximum(values, 0.0) + bias)
    return np.exp(log_total)


def rank_order(scores: np.ndarray) -> np.ndarray:
    """Indices sorting scores from best to worst; ties keep candidate order (deterministic)."""
    return np.argsort(-scores, kind="stable")
