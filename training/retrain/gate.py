"""The publish gate: a retrained candidate vs the production model on the same held-out day, with
intervals from a paired bootstrap over requests (training.retrain.paired_bootstrap).

A point estimate on one day decides on noise: a candidate that differs from production only by
chance wins half the time. So each gated metric's change is given a two-sided `confidence`
interval over request resamples, and:
- the primary metric must improve with confidence: the interval's lower bound of the improvement
  (in the metric's own direction, absolute) must exceed `min_improvement`. A candidate equal to
  production up to noise has an interval around zero (or below it) and is refused; by
  construction it passes at most (1 - confidence) / 2 of the time.
- a guard metric refuses when it is worse than its tolerance with confidence: the lower bound of
  its relative degradation exceeds the tolerance (its whole interval lies beyond it). A guard
  whose interval straddles the tolerance does not refuse: the data cannot tell.
Without a production model the candidate passes when every gated metric is finite.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from training.config import ConfigError
from training.evaluate import higher_is_better, lookup
from training.retrain.paired_bootstrap import Replicates

Metrics = Mapping[str, Mapping[str, float]]

# Metrics a gate may use, as training.evaluate.task_metrics names them (a test keeps the two in
# step). Calibration is left out: neither higher nor lower is better there, 1 is.
GATE_METRICS: dict[str, tuple[str, ...]] = {
    "click": ("auc", "gauc", "logloss"),
    "watch_time": ("rmse", "mae", "ndcg@10", "normalised"),
    "completion": ("rmse", "normalised"),
}


@dataclass(frozen=True)
class GateConfig:
    # Metric that must improve: `score` (the early-stopping score) or `task.metric`.
    primary: str = "score"
    # The lower bound of the primary metric's improvement (absolute, in its direction) must
    # exceed this (>= 0).
    min_improvement: float = 0.0
    # Guard metrics: none may be worse than production's by more than its tolerance, with
    # confidence.
    metrics: tuple[str, ...] = (
        "click.auc",
        "click.logloss",
        "watch_time.ndcg@10",
        "watch_time.rmse",
        "completion.rmse",
    )
    # Relative degradation of each guard metric (0.002: 0.2% worse) that refuses the candidate
    # when its whole interval lies beyond it.
    tolerance: float = 0.002
    # Per-metric tolerances that replace `tolerance`, e.g. {click.auc: 0.001}.
    tolerances: Mapping[str, float] = field(default_factory=dict)
    # Bootstrap replicates (request resamples), their seed, and the two-sided interval level.
    bootstrap: int = 200
    seed: int = 0
    confidence: float = 0.95

    def validate(self, tasks: Sequence[str]) -> None:
        check_metric(self.primary, tasks, "gate.primary")
        for i, key in enumerate(self.metrics):
            check_metric(key, tasks, f"gate.metrics[{i}]")
        if not (self.min_improvement >= 0 and math.isfinite(self.min_improvement)):
            raise ConfigError(f"gate.min_improvement: must be >= 0, got {self.min_improvement}")
        for key, value in {"": self.tolerance, **self.tolerances}.items():
            where = f"gate.tolerances.{key}" if key else "gate.tolerance"
            if not (value >= 0 and math.isfinite(value)):
                raise ConfigError(f"{where}: must be >= 0 (a fraction, 0.01 = 1%), got {value}")
            if key and key not in self.metrics:
                raise ConfigError(f"{where}: not one of gate.metrics {list(self.metrics)}")
        if self.bootstrap < 20:
            raise ConfigError(f"gate.bootstrap: must be >= 20 replicates, got {self.bootstrap}")
        if not 0.5 <= self.confidence < 1:
            raise ConfigError(f"gate.confidence: must be in [0.5, 1), got {self.confidence}")

    def keys(self) -> list[str]:
        """Gated metrics, primary first."""
        return [self.primary, *(k for k in self.metrics if k != self.primary)]


def check_metric(key: str, tasks: Sequence[str], where: str) -> None:
    if key == "score":
        return
    task, _, name = key.partition(".")
    if task not in tasks or name not in GATE_METRICS.get(task, ()):
        valid = ["score", *(f"{t}.{m}" for t in tasks for m in GATE_METRICS.get(t, ()))]
        raise ConfigError(f"{where}: unknown metric {key!r}; valid: {valid}")


@dataclass(frozen=True)
class Check:
    metric: str
    # "primary" or "guard".
    role: str
    candidate: float
    production: float | None
    # primary: improvement in the metric's direction (> 0 better); guard: relative degradation
    # (> 0 worse). None without a finite production value.
    change: float | None
    # The change's interval at the gate's confidence (None without production).
    low: float | None
    high: float | None
    # primary: the lower bound must exceed it; guard: the lower bound must not exceed it.
    limit: float
    passed: bool


@dataclass(frozen=True)
class Decision:
    publish: bool
    reason: str
    checks: tuple[Check, ...]


def _value(metrics: Metrics | None, key: str) -> float | None:
    if metrics is None:
        return None
    try:
        return float(lookup(metrics, key))
    except (KeyError, TypeError, ValueError):
        return None


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def changes(key: str, primary: bool, candidate: np.ndarray, production: np.ndarray) -> np.ndarray:
    """Improvement (primary) or relative degradation (guard) of candidate over production."""
    sign = 1.0 if higher_is_better(key) else -1.0
    gain = sign * (candidate - production)
    if primary:
        return gain
    scale = np.abs(production)
    return -gain / np.where(scale > 0, scale, 1.0)


def _interval(
    key: str, primary: bool, reps: Replicates, confidence: float
) -> tuple[float, float, float]:
    point = changes(key, primary, np.array([reps.candidate]), np.array([reps.production]))[0]
    values = changes(key, primary, reps.candidate_b, reps.production_b)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float(point), math.nan, math.nan
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(point), float(low), float(high)


def _check(
    gate: GateConfig,
    key: str,
    candidate: Metrics,
    production: Metrics | None,
    reps: Replicates | None,
) -> Check:
    primary = key == gate.primary
    cand = _value(candidate, key)
    prod = _value(production, key)
    limit = gate.min_improvement if primary else gate.tolerances.get(key, gate.tolerance)
    change = low = high = None
    if _finite(cand) and _finite(prod) and reps is not None:
        change, low, high = _interval(key, primary, reps, gate.confidence)
    if not _finite(cand):
        passed = False
    elif change is None:
        passed = True  # no production value to compare with
    elif primary:
        passed = low is not None and low > limit  # NaN fails
    else:
        passed = not (low is not None and low > limit)  # refuse only when confidently worse
    return Check(
        key,
        "primary" if primary else "guard",
        math.nan if cand is None else cand,
        prod,
        change,
        low,
        high,
        limit,
        passed,
    )


def decide(
    gate: GateConfig,
    candidate: Metrics,
    production: Metrics | None,
    intervals: Mapping[str, Replicates] | None = None,
) -> Decision:
    """Publish or keep production, with the reason in one line. `intervals` (from
    training.retrain.paired_bootstrap over the gate's metrics) is required with a production model."""
    if production is not None and intervals is None:
        raise ValueError("the gate compares with production only through bootstrap intervals")
    keys = gate.keys()
    intervals = intervals or {}
    checks = tuple(_check(gate, key, candidate, production, intervals.get(key)) for key in keys)
    failed = [c for c in checks if not c.passed]
    if production is None:
        if failed:
            names = ", ".join(c.metric for c in failed)
            return Decision(False, f"no production model, but candidate {names} not finite", checks)
        return Decision(True, "no production model yet; the candidate's metrics are finite", checks)
    level = f"{gate.confidence:.0%}"
    if not failed:
        head = checks[0]
        gain = (
            "no production value"
            if head.change is None
            else f"{head.change:+.4g} ({level} interval {head.low:+.4g} to {head.high:+.4g})"
        )
        return Decision(
            True,
            f"{head.metric} improved by {gain}, lower bound > {gate.min_improvement:g}; "
            f"no guard of {len(checks) - 1} worse beyond its tolerance with confidence",
            checks,
        )
    return Decision(False, "; ".join(_why(c, level) for c in failed), checks)


def _why(check: Check, level: str) -> str:
    if not _finite(check.candidate):
        return f"candidate {check.metric} is not finite"
    assert check.change is not None
    if check.role == "primary":
        return (
            f"{check.metric} changed by {check.change:+.4g}, {level} interval "
            f"{check.low:+.4g} to {check.high:+.4g}: lower bound not > {check.limit:+g}"
        )
    return (
        f"{check.metric} worse by {check.change:.2%}, {level} interval {check.low:.2%} to "
        f"{check.high:.2%}: beyond the tolerance {check.limit:.2%} with confidence"
    )
