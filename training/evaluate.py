"""Offline evaluation: predict a split with a model and compute every task's metrics.

Metrics (all in natural units):
- click: AUC, GAUC (per user), logloss, calibration (mean prediction / observed rate);
- watch_time: RMSE and MAE in seconds, NDCG@10 of watch time per request (ranked by the prediction),
  calibration (mean prediction / mean label);
- completion: RMSE, calibration.
When the data carries oracle columns, the same metrics are computed for the true expectations
(the Bayes-optimal predictor) and reported with the gap, with the constant predictor's value
(`constant_*`: every row predicted as the evaluated rows' mean label, ties in row order) and the
captured share `captured_* = (model - constant) / (oracle - constant)`: 1 is the oracle, 0 a constant.
`evaluate_model` also reports each task's mean loss (`loss`, the training objective on these rows)
and their sum (`loss.value`), for early stopping on validation loss. The early-stopping `score` is
the mean of click AUC and, for each regression task, 1 - RMSE / RMSE of the best constant (an
R^2-like scale).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ranker import metrics
from ranker.models import MultiTaskModel, task_loss
from training.data import EncodedData

# Metrics with a captured share (calibration has none: 1 is best, not an end of a scale).
SHARED_METRICS = ("auc", "gauc", "logloss", "rmse", "mae", "ndcg@10")
ORACLE_OF = {
    "click": "oracle_click",
    "watch_time": "oracle_watch_time",
    "completion": "oracle_completion",
}
# Metrics where lower is better (the gap to the oracle is reported as model - oracle either way).
LOWER_IS_BETTER = {"logloss", "rmse", "mae", "loss"}


@torch.no_grad()
def predict(
    model: torch.nn.Module, data: EncodedData, batch_size: int = 8192, device: str = "cpu"
) -> dict[str, np.ndarray]:
    """Natural-unit predictions {task: [rows]} of an inference model, in eval mode."""
    was_training = model.training
    model.eval()
    parts: dict[str, list[np.ndarray]] = {}
    for batch in data.slices(batch_size):
        inputs = {k: torch.from_numpy(v).to(device) for k, v in batch.inputs.items()}
        for task, values in model(inputs).items():
            parts.setdefault(task, []).append(values.float().cpu().numpy())
    model.train(was_training)
    return {task: np.concatenate(chunks) for task, chunks in parts.items()}


def task_metrics(
    task: str, preds: np.ndarray, labels: np.ndarray, data: EncodedData
) -> dict[str, float]:
    """The metrics of one task for predictions `preds` against `labels`."""
    if task == "click":
        return {
            "auc": metrics.auc(labels, preds),
            "gauc": metrics.gauc(labels, preds, data.user_id),
            "logloss": metrics.logloss(labels, preds),
            "calibration": metrics.calibration(labels, preds),
        }
    # calibration: mean prediction / mean label, as for click (a mean-unbiased head gives ~1).
    out = {"rmse": metrics.rmse(labels, preds), "calibration": metrics.calibration(labels, preds)}
    if task == "watch_time":
        out["mae"] = metrics.mae(labels, preds)
        out["ndcg@10"] = metrics.ndcg_at_k(labels, preds, data.request_id, k=10)
    return out


def evaluate_predictions(
    preds: Mapping[str, np.ndarray], data: EncodedData
) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} plus, with oracle columns, `oracle` values and `gap` per metric."""
    result: dict[str, dict[str, float]] = {}
    for task, values in preds.items():
        labels = data.labels[task]
        scores = task_metrics(task, values, labels, data)
        oracle_column = ORACLE_OF.get(task)
        if oracle_column in data.oracle:
            best = task_metrics(task, data.oracle[oracle_column], labels, data)
            for name, value in best.items():
                scores[f"oracle_{name}"] = value
                scores[f"gap_{name}"] = scores[name] - value
            scores.update(captured_shares(task, scores, labels, data))
        if task != "click":
            baseline = float(labels.astype(np.float64).std())
            scores["normalised"] = 1.0 - scores["rmse"] / baseline if baseline > 0 else 0.0
        result[task] = scores
    result["score"] = {"value": early_stopping_score(result)}
    return result


def captured_shares(
    task: str, scores: Mapping[str, float], labels: np.ndarray, data: EncodedData
) -> dict[str, float]:
    """`constant_m` and `captured_m` for every metric m of `scores` that has an oracle value.

    The constant predicts the evaluated rows' mean label everywhere: the best constant in
    hindsight for RMSE and logloss, 0.5 AUC. NaN where oracle and constant are equal.
    """
    mean = float(np.mean(labels)) if len(labels) else 0.0
    constant = task_metrics(task, np.full(len(labels), mean, dtype=np.float64), labels, data)
    out: dict[str, float] = {}
    for name in SHARED_METRICS:
        if name not in scores or f"oracle_{name}" not in scores:
            continue
        span = scores[f"oracle_{name}"] - constant[name]
        out[f"constant_{name}"] = constant[name]
        out[f"captured_{name}"] = (scores[name] - constant[name]) / span if span else float("nan")
    return out


def reliability(preds: np.ndarray, labels: np.ndarray, bins: int = 20) -> dict[str, list[float]]:
    """Mean prediction and mean label in `bins` quantile bins of the prediction (a reliability
    curve: calibrated predictions lie on the diagonal), with each bin's row count."""
    preds = np.asarray(preds, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    order = np.argsort(preds, kind="stable")
    chunks = [c for c in np.array_split(order, min(bins, len(order))) if len(c)]
    return {
        "predicted": [float(preds[c].mean()) for c in chunks],
        "observed": [float(labels[c].mean()) for c in chunks],
        "rows": [len(c) for c in chunks],
    }


def early_stopping_score(result: Mapping[str, Mapping[str, float]]) -> float:
    """Mean of click AUC and each regression task's normalised score (higher is better)."""
    parts = []
    for task, scores in result.items():
        if task == "click":
            parts.append(scores["auc"])
        elif "normalised" in scores:
            parts.append(scores["normalised"])
    return float(np.mean(parts)) if parts else float("nan")


def lookup(result: Mapping[str, Mapping[str, float]], key: str) -> float:
    """A metric by key: `score`, `loss` (sum of the task losses) or `task.metric` (e.g.
    `click.auc`, `click.loss`)."""
    if key in ("score", "loss"):
        try:
            return result[key]["value"]
        except KeyError:
            raise KeyError(f"unknown metric {key!r}") from None
    task, _, name = key.partition(".")
    try:
        return result[task][name]
    except KeyError:
        raise KeyError(f"unknown metric {key!r}") from None


# Metrics each task reports on any log (the oracle_, gap_, constant_ and captured_ ones need oracle
# columns), and the whole-model keys.
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "click": ("auc", "gauc", "logloss", "loss"),
    "watch_time": ("rmse", "mae", "ndcg@10", "normalised", "loss"),
    "completion": ("rmse", "normalised", "loss"),
}


def metric_keys(tasks: Sequence[str]) -> list[str]:
    """Keys `lookup` finds on every validation result of a model with these tasks (what early
    stopping may use): `score`, `loss` and `task.metric`."""
    return ["score", "loss", *(f"{t}.{m}" for t in tasks for m in TASK_METRICS.get(t, ()))]


def higher_is_better(key: str) -> bool:
    return key.rpartition(".")[2] not in LOWER_IS_BETTER


@torch.no_grad()
def predict_with_losses(
    model: MultiTaskModel, data: EncodedData, batch_size: int = 8192, device: str = "cpu"
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Natural-unit predictions {task: [rows]} and each task's mean loss over the rows (the
    training objective, main heads only), in one pass, in eval mode."""
    was_training = model.training
    model.eval()
    parts: dict[str, list[np.ndarray]] = {}
    sums = dict.fromkeys(model.task_names, 0.0)
    for batch in data.slices(batch_size):
        inputs = {k: torch.from_numpy(v).to(device) for k, v in batch.inputs.items()}
        raw = model.forward_parts(inputs).raw
        for name, values in model.predictions(raw).items():
            parts.setdefault(name, []).append(values.float().cpu().numpy())
        for task in model.tasks:
            label = torch.from_numpy(batch.labels[task.name]).to(device)
            sums[task.name] += float(task_loss(task, raw[task.name], label)) * batch.rows
    model.train(was_training)
    preds = {task: np.concatenate(chunks) for task, chunks in parts.items()}
    return preds, {task: total / max(data.rows, 1) for task, total in sums.items()}


def evaluate_model(
    model: MultiTaskModel, data: EncodedData, device: str = "cpu"
) -> dict[str, dict[str, float]]:
    """evaluate_predictions plus each task's mean `loss` and their sum under `loss.value`."""
    preds, losses = predict_with_losses(model, data, device=device)
    result = evaluate_predictions(preds, data)
    for task, value in losses.items():
        result[task]["loss"] = value
    result["loss"] = {"value": float(sum(losses.values()))}
    return result
