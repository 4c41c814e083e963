"""The report of `ranker evaluate`: what it measured (Evaluation), report.json, report.md and
one reliability plot per task. Apart from training/offline.py, which scores and measures."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# The metrics report.md shows per task (report.json holds them all).
HEADLINE = {
    "click": ("auc", "gauc", "logloss", "calibration"),
    "watch_time": ("rmse", "mae", "ndcg@10"),
    "completion": ("rmse",),
}


@dataclass
class Evaluation:
    """What `ranker evaluate` measured; `to_dict` is report.json."""

    model: str
    days: list[str]
    rows: int
    metrics: dict[str, dict[str, float]]
    # Segment ("users: new", ...) -> rows and metrics; empty when no training rows were found.
    segments: dict[str, dict[str, Any]] = field(default_factory=dict)
    seen_rule: str = ""
    reliability: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "days": self.days,
            "rows": self.rows,
            "metrics": self.metrics,
            "segments": self.segments,
            "seen_rule": self.seen_rule,
            "reliability": self.reliability,
            "notes": self.notes,
        }


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if np.isnan(value) else f"{value:.4g}"
    return str(value)


def render(evaluation: Evaluation) -> str:
    """report.md: headline metrics (with oracle and captured share when known) and segments."""
    lines = [
        f"# Offline evaluation of {evaluation.model}",
        "",
        f"{evaluation.rows:,} impressions on {len(evaluation.days)} days "
        f"({evaluation.days[0]} .. {evaluation.days[-1]}).",
        "",
        "| task | metric | model | oracle | constant | captured |",
        "|---|---|---|---|---|---|",
    ]
    for task, scores in evaluation.metrics.items():
        if task in ("score", "loss"):
            continue
        for name in [*HEADLINE.get(task, ()), "mean_predicted", "mean_observed"]:
            if name not in scores:
                continue
            lines.append(
                f"| {task} | {name} | {_fmt(scores[name])} | {_fmt(scores.get('oracle_' + name, ''))} "
                f"| {_fmt(scores.get('constant_' + name, ''))} "
                f"| {_fmt(scores.get('captured_' + name, ''))} |"
            )
    if evaluation.segments:
        lines += ["", f"New vs seen ({evaluation.seen_rule}):", ""]
        lines += ["| segment | rows | click auc | watch_time rmse | completion rmse |"]
        lines += ["|---|---|---|---|---|"]
        for name, entry in evaluation.segments.items():
            m = entry.get("metrics", {})
            cells = [
                _fmt(m.get(task, {}).get(metric, ""))
                for task, metric in (
                    ("click", "auc"),
                    ("watch_time", "rmse"),
                    ("completion", "rmse"),
                )
            ]
            lines.append(f"| {name} | {entry['rows']:,} | " + " | ".join(cells) + " |")
    lines += ["", *[f"Note: {n}" for n in evaluation.notes]]
    return "\n".join(lines).rstrip() + "\n"


def write_report(evaluation: Evaluation, out_dir: Path) -> dict[str, Path]:
    """report.json, report.md and one reliability_<task>.png per task."""
    written = {"json": out_dir / "report.json", "markdown": out_dir / "report.md"}
    written["json"].write_text(
        json.dumps(evaluation.to_dict(), indent=2, default=_json_default, allow_nan=True)
    )
    written["markdown"].write_text(render(evaluation))
    for task, curve in evaluation.reliability.items():
        written[task] = plot_reliability(task, curve, out_dir / f"reliability_{task}.png")
    return written


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(type(value).__name__)


def plot_reliability(task: str, curve: Mapping[str, list[float]], path: Path) -> Path:
    """Mean observed vs mean predicted per prediction bin, with the diagonal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    top = max([*curve["predicted"], *curve["observed"], 1e-9])
    ax.plot([0, top], [0, top], color="gray", linestyle="--", linewidth=1, label="calibrated")
    ax.plot(curve["predicted"], curve["observed"], marker="o", markersize=3, label="model")
    unit = " (s)" if task == "watch_time" else ""
    ax.set_xlabel(f"mean predicted {task}{unit}")
    ax.set_ylabel(f"mean observed {task}{unit}")
    ax.set_title(f"reliability: {task} ({len(curve['rows'])} quantile bins)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
