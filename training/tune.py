"""`ranker tune`: search the ranking-score weights on held-out requests with the exported model.

The exported ONNX model (real ONNX Runtime, as served) predicts every task for the tuning days;
optuna's TPE sampler searches the score weights to maximise a per-request objective (default: mean
NDCG@10 of watch time) subject to constraints on other tasks (default: click NDCG@10 at least 98% of
the click-only ranking). Output: the best weights as an experiment variant, the Pareto front of
objective vs constraint (CSV + PNG), and the hand-picked default's values for comparison. With
oracle columns, each point also gets the true expected watch time of its top 10 per request.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

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
    manifest = verify(model_dir)
    tasks = manifest.task_names
    parse_metric(objective, tasks)  # validates the objective before any work
    parsed = [parse_constraint(c, tasks) for c in constraints]
    data = _load_days(manifest, data_paths, days)
    tuner = Tuner(onnx_predict(model_dir, manifest, data), data)
    search = _Search(tuner, objective, parsed, _thresholds(tuner, parsed), tasks, max_weight)
    history = search.run(trials, seed, progress)

    feasible = [h for h in history if h[2]]
    best = max(feasible, key=lambda h: h[1].values[objective]) if feasible else None
    closest = None
    if best is None and history:
        closest_entry = min(history, key=lambda h: max(search.slack(h[1])))
        closest = (closest_entry[0], closest_entry[1])
    return TuneResult(
        objective=objective,
        constraints=parsed,
        thresholds=search.thresholds,
        best=best[0] if best else None,
        best_eval=best[1] if best else None,
        default_eval=tuner.evaluate(search.default, search.names),
        closest=closest,
        trials=history,
    )


class _Search:
    """Optuna's TPE over the free tasks' weights, the constraints as optuna constraints; the
    default formula is the first trial. `history` keeps every trial: formula, figures, feasible."""

    def __init__(
        self,
        tuner: Tuner,
        objective: str,
        constraints: list[Constraint],
        thresholds: dict[str, float],
        tasks: Sequence[str],
        max_weight: float,
    ) -> None:
        self.tuner, self.objective, self.max_weight = tuner, objective, max_weight
        self.constraints, self.thresholds = constraints, thresholds
        self.names = [objective, *(c.metric for c in constraints)]
        self.free = [t for t in tasks if t != "click"] if "click" in tasks else list(tasks[1:])
        self.fixed = {"click": 1.0} if "click" in tasks else {tasks[0]: 1.0}
        self.default = _default_formula(tasks, self.fixed)
        self.history: list[tuple[ScoreFormula, Evaluation, bool]] = []

    def slack(self, evaluation: Evaluation) -> list[float]:
        """Constraint violations (<= 0 means satisfied), optuna's convention."""
        return [self.thresholds[str(c)] - evaluation.values[c.metric] for c in self.constraints]

    def trial(self, trial: Any) -> float:
        weights = dict(self.fixed)
        for task in self.free:
            weights[task] = trial.suggest_float(task, 0.0, self.max_weight)
        formula = ScoreFormula(weights=weights)
        evaluation = self.tuner.evaluate(formula, self.names)
        violations = self.slack(evaluation)
        for constraint, violation in zip(self.constraints, violations, strict=True):
            trial.set_constraint(str(constraint), violation)
        self.history.append((formula, evaluation, all(v <= 0 for v in violations)))
        return evaluation.values[self.objective]

    def run(
        self, trials: int, seed: int, progress: bool
    ) -> list[tuple[ScoreFormula, Evaluation, bool]]:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = optuna.samplers.TPESampler(seed=seed)  # reads the constraints each trial sets
        study = optuna.create_study(direction="maximize", sampler=sampler)
        default = self.default.weights
        study.enqueue_trial({t: default.get(t, 0.0) / default.get("click", 1.0) for t in self.free})
        # Optuna's bar is tqdm without `disable=None`: show it only where a person sees it.
        study.optimize(self.trial, n_trials=trials, show_progress_bar=progress and on_terminal())
        return self.history


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
