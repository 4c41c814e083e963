"""Calibration under drift: each task's offset for the day the model will serve.

A model without a time input predicts the average level of its training days; when outcome rates
drift (a click rate rising ~0.4% a day), it is biased on the days after them by the drift since
the window's middle. After training, per training day d and task, the offset b_d that makes the
day's mean shifted prediction equal its mean label is found on the task's link scale (logit, or
log for watch seconds: ranker.models.calibration). A line b = a + s * d, weighted by rows, is fitted
through them (a constant with fewer than `MIN_TREND_DAYS` days) and read at the target day, by
default the day after the newest day of the data (what a daily retrain serves next). The model's
own training days are used, not the validation or test days, so those stay held out.

The quality benchmark's worlds, recommended configuration, 3 seeds (docs/results.md): test-day
mean predicted / observed click rate 0.93-0.95 -> 0.97-0.99, watch time 0.88-0.93 -> 0.95-0.99.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ranker.models.calibration import shift_kind
from ranker.tasks import Task

# Fewer training days than this fit a constant offset (the mean), not a trend.
MIN_TREND_DAYS = 3
# Newton iterations for a day's logit offset (converges in ~5 from 0 for any realistic rate).
NEWTON_STEPS = 50


@dataclass(frozen=True)
class TaskDrift:
    """One task's per-day offsets, the fitted line and its value at the target day."""

    kind: str  # logit | scale
    days: tuple[int, ...]
    offsets: tuple[float, ...]
    intercept: float  # at day 0 of `days`' numbering
    slope: float  # per day; 0 with fewer than MIN_TREND_DAYS days
    target_day: int
    offset: float  # intercept + slope * target_day: what the model applies

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "days": list(self.days),
            "offsets": [round(v, 6) for v in self.offsets],
            "slope_per_day": round(self.slope, 6),
            "target_day": self.target_day,
            "offset": round(self.offset, 6),
        }


def day_offset(kind: str, preds: np.ndarray, labels: np.ndarray) -> float | None:
    """The shift that makes mean(shifted preds) equal mean(labels); None when undefined (no
    rows, a label mean at an end of its range, or predictions that cannot reach it)."""
    if len(labels) == 0:
        return None
    target = float(np.mean(labels, dtype=np.float64))
    if kind == "scale":
        mean = float(np.mean(preds, dtype=np.float64))
        return float(np.log(target / mean)) if target > 0 and mean > 0 else None
    if not 0.0 < target < 1.0:
        return None
    p = np.clip(preds.astype(np.float64), 1e-7, 1 - 1e-7)
    z = np.log(p) - np.log1p(-p)
    offset = 0.0
    for _ in range(NEWTON_STEPS):
        q = 1.0 / (1.0 + np.exp(-(z + offset)))
        slope = float(np.mean(q * (1.0 - q)))
        step = (float(np.mean(q)) - target) / max(slope, 1e-12)
        offset -= step
        if abs(step) < 1e-10:
            break
    return offset


def fit_drift(
    tasks: tuple[Task, ...],
    days: np.ndarray,
    preds: Mapping[str, np.ndarray],
    labels: Mapping[str, np.ndarray],
    target_day: int,
) -> dict[str, TaskDrift]:
    """Each task's drift fit over the rows' `days` (day numbers), read at `target_day`. A task
    without a usable day gets no entry (its predictions stay as they are)."""
    fits: dict[str, TaskDrift] = {}
    unique, counts = np.unique(days, return_counts=True)
    rows_of = [np.flatnonzero(days == d) for d in unique]
    for task in tasks:
        kind = shift_kind(task)
        usable: list[tuple[int, float, int]] = []
        for day, rows, count in zip(unique.tolist(), rows_of, counts.tolist(), strict=True):
            offset = day_offset(kind, preds[task.name][rows], labels[task.name][rows])
            if offset is not None and np.isfinite(offset):
                usable.append((day, offset, count))
        if not usable:
            continue
        x = np.array([d for d, _, _ in usable], dtype=np.float64)
        y = np.array([b for _, b, _ in usable])
        w = np.array([n for _, _, n in usable], dtype=np.float64)
        if len(usable) >= MIN_TREND_DAYS:
            slope, intercept = np.polyfit(x - x[0], y, 1, w=np.sqrt(w))
            intercept -= slope * x[0]
        else:
            slope, intercept = 0.0, float(np.average(y, weights=w))
        fits[task.name] = TaskDrift(
            kind=kind,
            days=tuple(int(d) for d in x),
            offsets=tuple(float(b) for b in y),
            intercept=float(intercept),
            slope=float(slope),
            target_day=target_day,
            offset=float(intercept + slope * target_day),
        )
    return fits
