"""The retraining report: what one run did (report.json) and a readable report.md with the
candidate's and production's metrics side by side."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Outcome:
    """What one run did; `to_dict` is report.json."""

    run_id: str
    started_at: str
    # The command's exit code (training.exit_codes).
    exit_code: int
    decision: str = "failed"  # publish | keep | failed
    reason: str = ""
    model_name: str = ""
    run_dir: str = ""
    report_dir: str = ""
    window: dict[str, list[str]] = field(default_factory=dict)
    production: str | None = None
    published: str | None = None
    candidate_metrics: dict[str, Any] | None = None
    production_metrics: dict[str, Any] | None = None
    checks: list[dict[str, Any]] = field(default_factory=list)
    # The gate's sample: rows and requests of the gate day, bootstrap replicates, confidence.
    gate_sample: dict[str, Any] = field(default_factory=dict)
    rollout: str = ""
    experiments: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # What the start-of-run cleanup removed or found (debris of killed runs).
    cleanup: list[str] = field(default_factory=list)
    seconds: float = 0.0
    # The effective retrain config (after environment and overrides).
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def write_report(out: Outcome, report_dir: Path) -> None:
    (report_dir / "report.json").write_text(
        json.dumps(_json_safe(out.to_dict()), indent=2, allow_nan=False) + "\n"
    )
    (report_dir / "report.md").write_text(render(out))


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _json_safe(value.item())
    return value


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else str(value)
    return str(value)


def render(out: Outcome) -> str:
    """report.md: decision first, then candidate vs production side by side."""
    lines = [*_summary(out), *_gate(out), *_all_metrics(out)]
    return "\n".join(lines) + "\n"


def _summary(out: Outcome) -> list[str]:
    lines = [
        f"# Retraining run {out.run_id}: {out.decision}",
        "",
        f"- model: {out.model_name}; production: {out.production or 'none'}; "
        f"published: {out.published or 'nothing'}",
        f"- reason: {out.reason}",
        f"- exit code: {out.exit_code}; took {out.seconds:.1f} s; run directory: {out.run_dir or '-'}",
    ]
    if out.window:
        lines.append(
            f"- days: train {', '.join(out.window['train'])}; valid {', '.join(out.window['valid'])}; "
            f"gate {', '.join(out.window['gate'])}"
        )
    if out.rollout:
        lines.append(f"- rollout: {out.rollout}")
    if out.experiments:
        lines.append(
            "- experiment config: "
            + "; ".join(f"{k} {_fmt(v)}" for k, v in out.experiments.items())
        )
    lines.extend(f"- warning: {w}" for w in out.warnings)
    lines.extend(f"- cleanup: {c}" for c in out.cleanup)
    return lines


def _gate(out: Outcome) -> list[str]:
    """The gate's checks, one row each, then how the intervals were drawn and read."""
    if not out.checks:
        return []
    sample = out.gate_sample
    level = f"{sample['confidence']:.0%} " if sample else ""
    lines = [
        "",
        "## Gate",
        "",
        f"| metric | role | candidate | production | change | {level}interval | limit | pass |",
        "|---|---|---|---|---|---|---|---|",
        *(_check_row(c) for c in out.checks),
        "",
    ]
    if sample:
        lines.append(
            f"Intervals: paired bootstrap over the gate day's {sample['requests']} requests "
            f"({sample['rows']} rows), {sample['bootstrap']} resamples, two-sided "
            f"{sample['confidence']:.0%}. "
        )
    lines.append(
        "Primary change: absolute improvement in the metric's direction; it passes when the "
        "interval's lower bound exceeds the limit. Guard change: relative degradation "
        "(positive = worse); it refuses when the interval's lower bound exceeds the "
        "tolerance (worse beyond it with confidence). The candidate is scored with its "
        "PyTorch model (its export must match ONNX Runtime within 1e-4), production with its "
        "published ONNX model through ONNX Runtime, as served, on the same rows."
    )
    if sample.get("at_served_positions"):
        lines.append(
            "The candidate is position-debiased: both models' predictions were scored at the "
            "served positions, each multiplied by the candidate's learnt P(seen | position), so "
            "the position helps neither side (training/retrain/positions.py)."
        )
    return lines


def _check_row(c: dict[str, Any]) -> str:
    # Primary: absolute, in the metric's unit; guards: relative, in percent.
    shown = "{:+.4g}" if c["role"] == "primary" else "{:+.2%}"
    change = "-" if c["change"] is None else shown.format(c["change"])
    interval = (
        "-"
        if c["low"] is None or c["high"] is None
        else f"[{shown.format(c['low'])}, {shown.format(c['high'])}]"
    )
    limit = f"{c['limit']:g}" if c["role"] == "primary" else f"{c['limit']:.2%}"
    return (
        f"| {c['metric']} | {c['role']} | {_fmt(c['candidate'])} | {_fmt(c['production'])} "
        f"| {change} | {interval} | {limit} | {'yes' if c['passed'] else 'NO'} |"
    )


def _all_metrics(out: Outcome) -> list[str]:
    if not out.candidate_metrics:
        return []
    lines = ["", "## All metrics on the gate day", ""]
    lines += ["| metric | candidate | production |", "|---|---|---|"]
    prod = out.production_metrics or {}
    for task, scores in out.candidate_metrics.items():
        for name, value in scores.items():
            if name.startswith(("oracle_", "gap_")):
                continue
            key = "score" if task == "score" else f"{task}.{name}"
            other = prod.get(task, {}).get(name)
            lines.append(f"| {key} | {_fmt(value)} | {_fmt(other)} |")
    return lines
