"""The publish gate: a retrained candidate vs the production model on the same held-out day.

The candidate passes when its primary metric improves on production's by at least
`min_improvement` (absolute, in the metric's own direction) and no guard metric is worse than
production's by more than its tolerance (relative). Without a production model it passes when
every gated metric is finite. Both models are scored by `training.evaluate.evaluate_predictions`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from training.config import ConfigError
from training.evaluate import higher_is_better, lookup

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
    # Required improvement of the primary metric, absolute, in its direction (>= 0).
    min_improvement: float = 0.0
    # Guard metrics: none may be worse than production's by more than its tolerance.
    metrics: tuple[str, ...] = (
        "click.auc",
        "click.logloss",
        "watch_time.ndcg@10",
        "watch_time.rmse",
        "completion.rmse",
    )
    # Allowed relative degradation of each guard metric (0.01: 1% worse at most).
    tolerance: float = 0.01
    # Per-metric tolerances that replace `tolerance`, e.g. {click.auc: 0.002}.
    tolerances: Mapping[str, float] = field(default_factory=dict)

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
    # primary: the required improvement; guard: the tolerance.
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


def _check(gate: GateConfig, key: str, candidate: Metrics, production: Metrics | None) -> Check:
    primary = key == gate.primary
    cand = _value(candidate, key)
    prod = _value(production, key)
    sign = 1.0 if higher_is_better(key) else -1.0
    limit = gate.min_improvement if primary else gate.tolerances.get(key, gate.tolerance)
    change: float | None = None
    if _finite(cand) and _finite(prod):
        assert cand is not None and prod is not None
        gain = sign * (cand - prod)
        change = gain if primary else -gain / (abs(prod) or 1.0)
    if not _finite(cand):
        passed = False
    elif change is None:
        passed = True  # no production value to compare with
    else:
        passed = change >= limit if primary else change <= limit
    return Check(
        key,
        "primary" if primary else "guard",
        math.nan if cand is None else cand,
        prod,
        change,
        limit,
        passed,
    )


def decide(gate: GateConfig, candidate: Metrics, production: Metrics | None) -> Decision:
    """Publish or keep production, with the reason in one line."""
    keys = [gate.primary, *(k for k in gate.metrics if k != gate.primary)]
    checks = tuple(_check(gate, key, candidate, production) for key in keys)
    failed = [c for c in checks if not c.passed]
    if production is None:
        if failed:
            names = ", ".join(c.metric for c in failed)
            return Decision(False, f"no production model, but candidate {names} not finite", checks)
        return Decision(True, "no production model yet; the candidate's metrics are finite", checks)
    if not failed:
        head = checks[0]
        gain = "no production value" if head.change is None else f"{head.change:+.4g}"
        return Decision(
            True,
            f"{head.metric} improved by {gain} (needs >= {gate.min_improvement:g}); "
            f"{len(checks) - 1} guard metrics within tolerance",
            checks,
        )
    return Decision(False, "; ".join(_why(c) for c in failed), checks)


def _why(check: Check) -> str:
    if not _finite(check.candidate):
        return f"candidate {check.metric} is not finite"
    assert check.change is not None
    if check.role == "primary":
        return f"{check.metric} changed by {check.change:+.4g} (needs >= {check.limit:+g})"
    return f"{check.metric} worse by {check.change:.2%} (tolerance {check.limit:.2%})"
