"""The prediction tasks, their output order, losses and label derivation (torch-free).

Tasks, in the fixed output order of every model and manifest:

- `click`: binary. BCE on the logit; output: click probability.
- `watch_time`: seconds, >= 0, heavy-tailed (0 for most impressions: not clicked). The label stays in
  seconds; the loss says how it is compared, so its scale is never rescaled silently:
  `log_mse` (default): the model's raw output is log1p(seconds), MSE against log1p(label); output
  expm1(raw) clamped to >= 0 (a geometric-mean-like estimate, robust to the tail).
  `mse`: the raw output is seconds, MSE against the label in seconds (losses ~100-1000x larger than
  BCE: the loss-scale disparity balancers are meant to handle); output the raw value clamped to >= 0.
  `ziln`: zero-inflated log-normal (Wang, Liu & Miao, 2019, "A Deep Probabilistic Model for Customer
  Lifetime Value Prediction"). Three raw outputs: the logit of P(W > 0), mu and sigma of log W given
  W > 0. Loss: BCE on W > 0 plus the log-normal negative log-likelihood of the positive rows, per
  impression (on the scale of the click BCE); output P(W > 0) * exp(mu + sigma^2 / 2), the mean of
  the fitted distribution: E[watch seconds] when log W given W > 0 is close to normal. When it is
  not (many short views give log W a heavy left tail, as in the simulator), sigma grows and the
  mean overshoots: 1.9x the label mean on a simulated log.
  `zi_gamma`: two raw outputs, the logit of P(W > 0) and m = log E[W | W > 0]. Loss: BCE on W > 0
  plus the Gamma deviance of the positive rows around exp(m) (scale-free, >= 0, on the scale of the
  click BCE), whose minimiser is the conditional mean whatever the distribution's shape; output
  P(W > 0) * exp(m) = E[watch seconds]. The recommended watch-time loss.
- `completion`: min(watch_time / duration, 1) in [0, 1]. BCE on the logit with soft labels (a bounded
  regression; a proper scoring rule for the mean, so its minimiser is E[completion]); output:
  sigmoid, in [0, 1]. `zi_bce`: two raw outputs, the logits of P(completion > 0) (a click) and of
  E[completion | completion > 0]; loss: BCE on completion > 0 plus the soft-label BCE of the
  positive rows (per impression); output their product, E[completion].

Unclicked impressions carry watch_time 0 and completion 0: both regressions predict the expectation
over all impressions, not conditional on a click. The torch side (`ranker.models.losses`) implements
every loss named here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

TaskKind = Literal["binary", "regression", "bounded"]

# Output order of every model, ONNX graph and manifest.
TASK_ORDER: tuple[str, ...] = ("click", "watch_time", "completion")
TASK_KINDS: dict[str, TaskKind] = {
    "click": "binary",
    "watch_time": "regression",
    "completion": "bounded",
}
# Valid losses per task; the first is the default.
TASK_LOSSES: dict[str, tuple[str, ...]] = {
    "click": ("bce",),
    "watch_time": ("log_mse", "mse", "ziln", "zi_gamma"),
    "completion": ("bce", "zi_bce"),
}
# Raw outputs per row of a loss (what the tower emits); losses not listed have one.
LOSS_WIDTHS: dict[str, int] = {"ziln": 3, "zi_gamma": 2, "zi_bce": 2}


class TaskError(ValueError):
    """An invalid task list, loss name or label column; the message names it."""


@dataclass(frozen=True)
class Task:
    """One prediction task."""

    name: str
    # binary (0/1 label), regression (unbounded >= 0) or bounded (label in [0, 1]).
    kind: TaskKind
    # Loss name, one of TASK_LOSSES[name]; fixes what the model's raw output means.
    loss: str

    @property
    def is_regression(self) -> bool:
        """True for real-valued labels (watch_time, completion): evaluated by error, not AUC."""
        return self.kind != "binary"

    @property
    def raw_width(self) -> int:
        """Raw outputs per row the model emits for this task: [N] when 1, [N, width] otherwise."""
        return LOSS_WIDTHS.get(self.loss, 1)

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "kind": self.kind, "loss": self.loss}


def build_tasks(
    names: Sequence[str] | None = None, losses: Mapping[str, str] | None = None
) -> tuple[Task, ...]:
    """Tasks in output order. `names` defaults to all of TASK_ORDER and must follow that order;
    `losses` maps a task to a non-default loss."""
    names = list(TASK_ORDER if names is None else names)
    losses = dict(losses or {})
    if not names:
        raise TaskError("at least one task is needed")
    unknown = [n for n in names if n not in TASK_KINDS]
    if unknown:
        raise TaskError(f"unknown tasks {unknown}; valid: {list(TASK_ORDER)}")
    if len(set(names)) != len(names):
        raise TaskError(f"tasks listed twice: {names}")
    ordered = [n for n in TASK_ORDER if n in names]
    if names != ordered:
        raise TaskError(f"tasks must follow the output order {list(TASK_ORDER)}, got {names}")
    stray = sorted(set(losses) - set(names))
    if stray:
        raise TaskError(f"losses given for tasks not in the task list: {stray}; tasks: {names}")
    tasks = []
    for name in names:
        loss = losses.get(name, TASK_LOSSES[name][0])
        if loss not in TASK_LOSSES[name]:
            raise TaskError(
                f"task {name!r}: unknown loss {loss!r}; valid: {list(TASK_LOSSES[name])}"
            )
        tasks.append(Task(name=name, kind=TASK_KINDS[name], loss=loss))
    return tuple(tasks)


DEFAULT_TASKS: tuple[Task, ...] = build_tasks()


def tasks_to_dicts(tasks: Sequence[Task]) -> list[dict[str, str]]:
    """Manifest / checkpoint form of a task list."""
    return [t.to_dict() for t in tasks]


def tasks_from_dicts(entries: Sequence[Mapping[str, Any]]) -> tuple[Task, ...]:
    """Inverse of `tasks_to_dicts`; checks every entry's kind against its name."""
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or "name" not in entry:
            raise TaskError(f"tasks[{i}] must be a mapping with a 'name'")
    tasks = build_tasks(
        [str(e["name"]) for e in entries],
        {str(e["name"]): str(e["loss"]) for e in entries if "loss" in e},
    )
    for task, entry in zip(tasks, entries, strict=True):
        if "kind" in entry and entry["kind"] != task.kind:
            raise TaskError(f"task {task.name!r}: kind {entry['kind']!r}, expected {task.kind!r}")
    return tasks


def labels_from_columns(
    click: np.ndarray, watch_time: np.ndarray, duration: np.ndarray
) -> dict[str, np.ndarray]:
    """Labels of every task from the impression-log columns, as float32 arrays of the input shape.

    click must be 0/1, watch_time finite and >= 0 (seconds), duration finite and > 0 (seconds);
    completion = min(watch_time / duration, 1).
    """
    cols = {
        "click": np.asarray(click, dtype=np.float64),
        "watch_time": np.asarray(watch_time, dtype=np.float64),
        "duration": np.asarray(duration, dtype=np.float64),
    }
    shapes = {name: col.shape for name, col in cols.items()}
    if len(set(shapes.values())) != 1:
        raise TaskError(f"label columns must have the same shape, got {shapes}")
    _check(cols["click"], (cols["click"] == 0) | (cols["click"] == 1), "click", "0 or 1")
    wt, dur = cols["watch_time"], cols["duration"]
    _check(wt, np.isfinite(wt) & (wt >= 0), "watch_time", "finite and >= 0")
    _check(dur, np.isfinite(dur) & (dur > 0), "duration", "finite and > 0")
    return {
        "click": cols["click"].astype(np.float32),
        "watch_time": wt.astype(np.float32),
        "completion": np.minimum(wt / dur, 1.0).astype(np.float32),
    }


def _check(values: np.ndarray, ok: np.ndarray, name: str, rule: str) -> None:
    if not ok.all():
        bad = np.flatnonzero(~ok.ravel())
        raise TaskError(
            f"{name} must be {rule}: {bad.size} bad rows, first at row {int(bad[0])} "
            f"(value {values.ravel()[bad[0]]!r})"
        )
