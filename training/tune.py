"""`ranker tune`: search the ranking-score weights on held-out requests with the exported model.

The exported ONNX model (real ONNX Runtime, as served) predicts every task for the tuning days;
optuna's TPE sampler searches the score weights to maximise a per-request objective (default: mean
NDCG@10 of watch time) subject to constraints on other tasks (default: click NDCG@10 at least 98% of
the click-only ranking). Output: the best weights as an experiment variant, the Pareto front of
objective vs constraint (CSV + PNG), and the hand-picked default's values for comparison. With
oracle columns, each point also gets the true expected watch time of its top 10 per request.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ranker import metrics
from ranker.features import FeatureEncoder
from ranker.progress import on_terminal
from ranker.registry import Manifest, verify
from ranker.scoring import DEFAULT_FORMULA, ScoreFormula, score
from training.data import EncodedData, encode_log, read_log
from training.errors import DataError

METRIC = re.compile(r"^(?P<task>[a-z_]+)\.ndcg@(?P<k>\d+)$")
CONSTRAINT = re.compile(
    r"^(?P<metric>[a-z_]+\.ndcg@\d+)\s*>=\s*(?P<value>[0-9.]+)(?P<relative>x?)$"
)
TOP_K = 10


class TuneError(ValueError):
    """Bad tuning input (unknown task, malformed constraint, model/data mismatch)."""


@dataclass(frozen=True)
class Constraint:
    metric: str
    value: float
    # True: `value` is a fraction of the metric under the ranking by that task's prediction alone.
    relative: bool

    def __str__(self) -> str:
        return f"{self.metric}>={self.value}{'x' if self.relative else ''}"


def parse_metric(text: str, tasks: Sequence[str]) -> tuple[str, int]:
    match = METRIC.match(text.strip())
    if not match:
        raise TuneError(f"objective {text!r}: expected TASK.ndcg@K, e.g. watch_time.ndcg@10")
    task = match["task"]
    if task not in tasks:
        raise TuneError(
            f"objective {text!r}: unknown task {task!r}; the model predicts {list(tasks)}"
        )
    return task, int(match["k"])


def parse_constraint(text: str, tasks: Sequence[str]) -> Constraint:
    match = CONSTRAINT.match(text.strip())
    if not match:
        raise TuneError(
            f"constraint {text!r}: expected TASK.ndcg@K>=VALUE or TASK.ndcg@K>=FRACTIONx"
        )
    parse_metric(match["metric"], tasks)
    return Constraint(match["metric"], float(match["value"]), bool(match["relative"]))


def onnx_predict(
    model_dir: Path, manifest: Manifest, data: EncodedData, batch: int = 16384
) -> dict[str, np.ndarray]:
    """Per-task predictions of the exported model for every row (user inputs one row per item),
    from the verified registry bytes, as the service scores them (`ranker.onnx_model`)."""
    from ranker.onnx_model import OnnxModel

    verified, model = OnnxModel.load(model_dir)
    if verified.sha256 != manifest.sha256:
        raise TuneError(
            f"{model_dir}: holds model sha256 {verified.sha256[:12]}, not {manifest.name}/"
            f"{manifest.version}'s {manifest.sha256[:12]}"
        )
    missing = [n for n in model.input_names if n not in data.inputs]
    if missing:
        raise TuneError(
            f"the data encodes no {missing} input for model {manifest.name}/{manifest.version}"
        )
    return model.predict_rows(data.inputs, batch=batch, dtype=np.float64)


@dataclass
class Evaluation:
    """Per-request metrics of one score formula."""

    values: dict[str, float]
    expected_watch_time: float | None = None


@dataclass
class TuneResult:
    objective: str
    constraints: list[Constraint]
    thresholds: dict[str, float]
    best: ScoreFormula | None
    best_eval: Evaluation | None
    default_eval: Evaluation
    closest: tuple[ScoreFormula, Evaluation] | None
    trials: list[tuple[ScoreFormula, Evaluation, bool]] = field(default_factory=list)

    @property
    def feasible(self) -> bool:
        return self.best is not None


class Tuner:
    """Evaluates score formulas on fixed predictions of the tuning requests."""

    def __init__(self, predictions: Mapping[str, np.ndarray], data: EncodedData) -> None:
        self.predictions = predictions
        self.data = data
        self.groups = data.request_id

    def metric(self, name: str, scores: np.ndarray) -> float:
        match = METRIC.match(name)
        assert match is not None
        return metrics.ndcg_at_k(
            self.data.labels[match["task"]], scores, self.groups, k=int(match["k"])
        )

    def evaluate(self, formula: ScoreFormula, names: Sequence[str]) -> Evaluation:
        scores = score(formula, self.predictions, self.groups)
        values = {name: self.metric(name, scores) for name in names}
        expected = None
        if "oracle_watch_time" in self.data.oracle:
            expected = top_k_sum(self.data.oracle["oracle_watch_time"], scores, self.groups, TOP_K)
        return Evaluation(values, expected)


def top_k_sum(values: np.ndarray, scores: np.ndarray, groups: np.ndarray, k: int) -> float:
    """Mean over requests of the sum of `values` over each request's top-k by score."""
    order = np.lexsort((np.arange(len(scores)), -scores, groups))
    g = groups[order]
    starts = metrics.run_starts(g)
    group_id = np.cumsum(starts) - 1
    position = np.arange(len(g)) - np.flatnonzero(starts)[group_id]
    kept = np.bincount(group_id, weights=np.where(position < k, values[order], 0.0))
    return float(kept.mean()) if len(kept) else math.nan


def _thresholds(tuner: Tuner, parsed: Sequence[Constraint]) -> dict[str, float]:
    """Each constraint's bound; a relative one is a fraction of its task's ranking alone."""
    thresholds = {}
    for c in parsed:
        if c.relative:
            task = c.metric.split(".")[0]
            alone = tuner.evaluate(ScoreFormula(weights={task: 1.0}), [c.metric]).values[c.metric]
            thresholds[str(c)] = c.value * alone
        else:
            thresholds[str(c)] = c.value
    return thresholds


def _default_formula(tasks: Sequence[str], fixed: Mapping[str, float]) -> ScoreFormula:
    """The hand-picked default when the model has its tasks, else the fixed task alone."""
    if all(t in tasks for t in DEFAULT_FORMULA.weights):
        return DEFAULT_FORMULA
    return ScoreFormula(weights=dict(fixed))


def tune(
    model_dir: Path,
    data_paths: Sequence[str],
    *,
    days: Sequence[str] | None = None,
    objective: str = "watch_time.ndcg@10",
    constraints: Sequence[str] = ("click.ndcg@10>=0.98x",),
    trials: int = 150,
    seed: int = 0,
    max_weight: float = 5.0,
    progress: bool = True,
) -> TuneResult:
    """Search weighted-sum weights (click fixed at 1: the score's scale does not change rankings)."""
    import optuna

    manifest = verify(model_dir)
    tasks = manifest.task_names
    parse_metric(objective, tasks)  # validates the objective before any work
    parsed = [parse_constraint(c, tasks) for c in constraints]
    data = _load_days(manifest, data_paths, days)
    tuner = Tuner(onnx_predict(model_dir, manifest, data), data)
    names = [objective, *(c.metric for c in parsed)]

    thresholds = _thresholds(tuner, parsed)

    def slack(evaluation: Evaluation) -> list[float]:
        """Constraint violations (<= 0 means satisfied), optuna's convention."""
        return [thresholds[str(c)] - evaluation.values[c.metric] for c in parsed]

    free = [t for t in tasks if t != "click"] if "click" in tasks else tasks[1:]
    fixed = {"click": 1.0} if "click" in tasks else {tasks[0]: 1.0}
    history: list[tuple[ScoreFormula, Evaluation, bool]] = []

    def objective_fn(trial: optuna.Trial) -> float:
        weights = dict(fixed)
        for task in free:
            weights[task] = trial.suggest_float(task, 0.0, max_weight)
        formula = ScoreFormula(weights=weights)
        evaluation = tuner.evaluate(formula, names)
        violations = slack(evaluation)
        for constraint, violation in zip(parsed, violations, strict=True):
            trial.set_constraint(str(constraint), violation)
        history.append((formula, evaluation, all(v <= 0 for v in violations)))
        return evaluation.values[objective]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=seed)  # reads the constraints each trial sets
    study = optuna.create_study(direction="maximize", sampler=sampler)
    default = _default_formula(tasks, fixed)
    study.enqueue_trial(
        {t: default.weights.get(t, 0.0) / default.weights.get("click", 1.0) for t in free}
    )
    # Optuna's bar is tqdm without `disable=None`: show it only where a person sees it.
    study.optimize(objective_fn, n_trials=trials, show_progress_bar=progress and on_terminal())

    feasible = [h for h in history if h[2]]
    best = max(feasible, key=lambda h: h[1].values[objective]) if feasible else None
    closest = None
    if best is None and history:
        closest_entry = min(history, key=lambda h: max(slack(h[1])))
        closest = (closest_entry[0], closest_entry[1])
    return TuneResult(
        objective=objective,
        constraints=parsed,
        thresholds=thresholds,
        best=best[0] if best else None,
        best_eval=best[1] if best else None,
        default_eval=tuner.evaluate(default, names),
        closest=closest,
        trials=history,
    )


def _load_days(manifest: Manifest, paths: Sequence[str], days: Sequence[str] | None) -> EncodedData:
    spec = manifest.spec()
    try:
        log = read_log(list(paths), spec)
    except DataError as exc:
        if "missing column" in str(exc):
            raise TuneError(
                f"the data does not match model {manifest.name}/{manifest.version}'s feature spec: {exc}"
            ) from None
        raise
    available = log.days()
    wanted = (
        list(days) if days else [d for d in manifest.data_window.get("valid", []) if d in available]
    )
    if not wanted:
        wanted = available[-1:]
    unknown = [d for d in wanted if d not in available]
    if unknown:
        raise TuneError(f"days {unknown} are not in the data; it has {available}")
    return encode_log(log.filter_days(wanted), FeatureEncoder(spec))


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
