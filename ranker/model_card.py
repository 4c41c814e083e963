"""MODEL_CARD.md: a human-readable page per registry version, rendered from its manifest.

The manifest is the machine record; the card is what a reviewer reads before promoting a version:
the days it saw, its offline metrics beside the oracle (when the log had oracle columns) and beside
the version it replaced (that version's own manifest, so its own test days), calibration, tasks
and outputs, and what the model is and is not for. Torch-free: the registry renders it at publish.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

CARD_FILE = "MODEL_CARD.md"
# Metric columns shown per task, in this order, when present in the metrics.
_SHOWN = ("auc", "gauc", "logloss", "rmse", "mae", "ndcg@10", "normalised", "loss")
_LOWER_IS_BETTER = {"logloss", "rmse", "mae", "loss"}


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "n/a" if value is None else str(value)
    if isinstance(value, int | float):
        return "n/a" if not math.isfinite(value) else f"{value:.4f}"
    return str(value)


def _days(days: Sequence[str]) -> str:
    if not days:
        return "none"
    return f"{days[0]} .. {days[-1]} ({len(days)} days)" if len(days) > 1 else f"{days[0]} (1 day)"


def _section(metrics: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]] | None:
    """The split the card reports: test when the run had one, else validation."""
    for split in ("test", "valid"):
        value = metrics.get(split)
        if isinstance(value, Mapping) and value:
            return split, value
    return None


def _task_rows(task: str, scores: Mapping[str, Any], parent: Mapping[str, Any] | None) -> list[str]:
    rows = []
    for name in _SHOWN:
        if name not in scores:
            continue
        value = scores[name]
        oracle = scores.get(f"oracle_{name}")
        captured = scores.get(f"captured_{name}")
        before = parent.get(name) if parent is not None else None
        change = "n/a"
        if isinstance(before, int | float) and isinstance(value, int | float):
            delta = value - before
            better = delta < 0 if name in _LOWER_IS_BETTER else delta > 0
            change = f"{delta:+.4f} ({'better' if better else 'worse' if delta else 'same'})"
        rows.append(
            f"| {task} | {name} | {_fmt(value)} | {_fmt(oracle)} | {_fmt(captured)} "
            f"| {_fmt(before)} | {change} |"
        )
    return rows


def render_card(manifest: Mapping[str, Any], parent: Mapping[str, Any] | None = None) -> str:
    """The card of a manifest (its to_dict()); `parent` is the replaced version's manifest dict,
    or None when there is none or it cannot be read (the card says which)."""
    lines = [
        *_header(manifest),
        "## Offline metrics",
        "",
        _parent_line(manifest.get("parent"), parent),
        *_metrics(manifest, parent),
        *_tasks_and_use(manifest),
    ]
    return "\n".join(lines)


def _header(manifest: Mapping[str, Any]) -> list[str]:
    window = manifest.get("data_window") or {}
    return [
        f"# Model card: {manifest['name']} {manifest['version']}",
        "",
        f"Published {manifest.get('created_at')}; model `{manifest.get('model_kind')}`, "
        f"ONNX opset {manifest.get('opset')}, sha256 `{manifest.get('sha256')}`.",
        "",
        "## Data window",
        "",
        *(f"- {split}: {_days(window.get(split) or [])}" for split in ("train", "valid", "test")),
        "",
    ]


def _parent_line(parent_ref: Any, parent: Mapping[str, Any] | None) -> str:
    """What the figures compare with: no parent, an unreadable one, or its own test window."""
    if parent_ref is None:
        return "First model: no parent version to compare with."
    if parent is None:
        return f"Replaces `{parent_ref}`, whose manifest could not be read: no comparison."
    parent_section = _section(parent.get("metrics") or {})
    parent_days = _days(((parent.get("data_window") or {}).get("test")) or [])
    return (
        f"Replaces `{parent_ref}`; its figures are from its own manifest ("
        f"{parent_section[0] if parent_section else 'no'} split, test days {parent_days}), "
        "so they compare windows as well as models."
    )


def _metrics(manifest: Mapping[str, Any], parent: Mapping[str, Any] | None) -> list[str]:
    """The metrics table against the parent's figures, then the calibration section."""
    metrics = manifest.get("metrics") or {}
    section = _section(metrics)
    if section is None:
        return ["", "The manifest records no offline metrics."]
    split, scores = section
    lines = [
        "",
        f"Split: {split}; best epoch {metrics.get('best_epoch', 'n/a')}. `oracle` is the "
        "Bayes-optimal predictor (the log's true expectations, simulated logs only); "
        "`captured` = (model - constant) / (oracle - constant).",
        "",
        "| task | metric | value | oracle | captured | parent | change |",
        "|---|---|---|---|---|---|---|",
    ]
    parent_section = _section((parent or {}).get("metrics") or {}) if parent else None
    before = parent_section[1] if parent_section else {}
    for task in [t["name"] for t in manifest.get("tasks") or []]:
        task_scores = scores.get(task)
        if isinstance(task_scores, Mapping):
            previous = before.get(task)
            lines += _task_rows(
                task, task_scores, previous if isinstance(previous, Mapping) else None
            )
    return [*lines, "", "## Calibration", "", _calibration(split, scores.get("click"))]


def _calibration(split: str, click: Any) -> str:
    if not (isinstance(click, Mapping) and "calibration" in click):
        return "No probability task with a calibration figure."
    oracle = (
        f"; oracle {_fmt(click['oracle_calibration'])}." if "oracle_calibration" in click else "."
    )
    return (
        f"click: mean prediction / observed rate = {_fmt(click['calibration'])} on the "
        f"{split} split (1 is calibrated on average)" + oracle
    )


def _tasks_and_use(manifest: Mapping[str, Any]) -> list[str]:
    tasks = manifest.get("tasks") or []
    return [
        "",
        "## Tasks and outputs",
        "",
        "| output | task kind | loss |",
        "|---|---|---|",
        *(f"| {t['name']} | {t.get('kind', '')} | {t.get('loss', '')} |" for t in tasks),
        "",
        "Inputs: "
        + "; ".join(f"{g}: {', '.join(v)}" for g, v in (manifest.get("inputs") or {}).items()),
        "",
        "## Intended use and limits",
        "",
        "- Intended use: scoring candidates for one request (one user, N items) inside the "
        "ranking service, whose score formula combines the outputs above.",
        "- The offline figures hold for traffic like the data window; they are not an online "
        "result. Promote through an experiment arm and judge on served traffic.",
        "- Features outside the training window's distribution (new categories, shifted dense "
        "statistics) fall back to the spec's defaults and buckets; the model has not seen them.",
        "- Outputs are predictions of logged behaviour under the logging policy, not causal "
        "effects of showing an item.",
        "",
    ]
