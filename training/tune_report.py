"""What `ranker tune` writes: variant.yaml (the best weights as an experiment variant),
trials.csv, pareto.csv, pareto.png, summary.json and the printed summary. Apart from
training/tune.py, which searches."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ranker.scoring import DEFAULT_FORMULA
from training.tune import TOP_K, Evaluation, TuneResult


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (both maximised)."""
    front = []
    for i, (a, b) in enumerate(points):
        if not any(
            (c >= a and d >= b) and (c > a or d > b) for j, (c, d) in enumerate(points) if j != i
        ):
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def write_outputs(
    result: TuneResult, out_dir: Path, model_ref: Mapping[str, str]
) -> dict[str, Path]:
    """variant.yaml, trials.csv, pareto.csv, pareto.png and summary.json in out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    second = result.constraints[0].metric if result.constraints else result.objective
    rows = _trial_rows(result)
    written = _write_csvs(rows, result.objective, second, out_dir)
    written["png"] = _plot_pareto(result, rows, second, out_dir / "pareto.png")
    chosen = result.best or (result.closest[0] if result.closest else None)
    if chosen is not None:
        variant = {
            "name": "tuned",
            "buckets": [0, 1000],
            "model": dict(model_ref),
            "score": chosen.to_dict(),
        }
        written["variant"] = out_dir / "variant.yaml"
        written["variant"].write_text(yaml.safe_dump(variant, sort_keys=False))
    written["summary"] = out_dir / "summary.json"
    written["summary"].write_text(json.dumps(_summary(result), indent=2))
    return written


def _trial_rows(result: TuneResult) -> list[dict[str, Any]]:
    """One row per trial: its weights, metric values, feasibility (and oracle watch time)."""
    rows = []
    for formula, evaluation, ok in result.trials:
        row: dict[str, Any] = {f"w_{t}": w for t, w in formula.weights.items()}
        row.update(evaluation.values)
        row["feasible"] = ok
        if evaluation.expected_watch_time is not None:
            row["expected_watch_time_top10"] = evaluation.expected_watch_time
        rows.append(row)
    return rows


def _write_csvs(
    rows: list[dict[str, Any]], objective: str, second: str, out_dir: Path
) -> dict[str, Path]:
    """trials.csv (every trial) and pareto.csv (the non-dominated ones)."""
    written: dict[str, Path] = {}
    fields = list(dict.fromkeys(k for row in rows for k in row))
    for name, subset in (
        ("trials", rows),
        (
            "pareto",
            [rows[i] for i in pareto_front([(r[objective], r[second]) for r in rows])],
        ),
    ):
        path = out_dir / f"{name}.csv"
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(subset)
        written[name] = path
    return written


def _plot_pareto(result: TuneResult, rows: list[dict[str, Any]], second: str, path: Path) -> Path:
    """Objective vs the first constraint's metric: trials, front, default, tuned, threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    xs = [r[second] for r in rows]
    ys = [r[result.objective] for r in rows]
    ax.scatter(
        xs,
        ys,
        s=10,
        c=["tab:blue" if r["feasible"] else "tab:gray" for r in rows],
        alpha=0.6,
        label="trials",
    )
    front = pareto_front([(r[result.objective], r[second]) for r in rows])
    ax.plot([xs[i] for i in front], [ys[i] for i in front], color="tab:red", label="Pareto front")
    d = result.default_eval.values
    ax.scatter(
        [d[second]],
        [d[result.objective]],
        marker="*",
        s=160,
        color="black",
        label="hand-picked default",
    )
    if result.best_eval is not None:
        b = result.best_eval.values
        ax.scatter(
            [b[second]], [b[result.objective]], marker="D", s=60, color="tab:green", label="tuned"
        )
    for c in result.constraints:
        if c.metric == second:
            ax.axvline(
                result.thresholds[str(c)], color="gray", linestyle="--", label=f"constraint {c}"
            )
    ax.set_xlabel(second)
    ax.set_ylabel(result.objective)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _summary(result: TuneResult) -> dict[str, Any]:
    return {
        "objective": result.objective,
        "constraints": [str(c) for c in result.constraints],
        "thresholds": result.thresholds,
        "feasible": result.feasible,
        "best": result.best.to_dict() if result.best else None,
        "best_values": result.best_eval.values if result.best_eval else None,
        "best_expected_watch_time_top10": result.best_eval.expected_watch_time
        if result.best_eval
        else None,
        "default": DEFAULT_FORMULA.to_dict(),
        "default_values": result.default_eval.values,
        "default_expected_watch_time_top10": result.default_eval.expected_watch_time,
        "closest": (
            {"score": result.closest[0].to_dict(), "values": result.closest[1].values}
            if result.closest
            else None
        ),
        "trials": len(result.trials),
    }


def render(result: TuneResult) -> str:
    """A few readable lines: tuned vs default on every metric, or why nothing was feasible."""
    lines = []
    names = [result.objective, *(c.metric for c in result.constraints)]

    def describe(label: str, evaluation: Evaluation) -> str:
        parts = [f"{n} {evaluation.values[n]:.4f}" for n in names]
        if evaluation.expected_watch_time is not None:
            parts.append(
                f"true E[watch time of top {TOP_K}] {evaluation.expected_watch_time:.1f} s"
            )
        return f"{label:<9} " + ", ".join(parts)

    lines.append(describe("default", result.default_eval))
    if result.best is not None and result.best_eval is not None:
        lines.append(describe("tuned", result.best_eval))
        lines.append(
            "weights: " + ", ".join(f"{t} {w:.3f}" for t, w in result.best.weights.items())
        )
    else:
        text = ", ".join(f"{c} (needs {result.thresholds[str(c)]:.4f})" for c in result.constraints)
        lines.append(f"no trial met the constraints: {text}")
        if result.closest is not None:
            lines.append(describe("closest", result.closest[1]))
            lines.append(
                "closest weights: "
                + ", ".join(f"{t} {w:.3f}" for t, w in result.closest[0].weights.items())
            )
    return "\n".join(lines)
