"""Offline evaluation: predict a split with a model and compute every task's metrics.

Metrics (all in natural units):
- click: AUC, GAUC (per user), logloss, calibration (mean prediction / observed rate);
- watch_time: RMSE and MAE in seconds, NDCG@10 of watch time per request (ranked by the prediction);
- completion: RMSE.
When the data carries oracle columns, the same metrics are computed for the true expectations
(the Bayes-optimal predictor) and reported with the gap. The early-stopping `score` is the mean of
click AUC and, for each regression task, 1 - RMSE / RMSE of the best constant (an R^2-like scale).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from ranker import metrics
from training.data import EncodedData

ORACLE_OF = {
    "click": "oracle_click",
    "watch_time": "oracle_watch_time",
    "completion": "oracle_completion",
}
# Metrics where lower is better (the gap to the oracle is reported as model - oracle either way).
LOWER_IS_BETTER = {"logloss", "rmse", "mae"}


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
    out = {"rmse": metrics.rmse(labels, preds)}
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
        if task != "click":
            baseline = float(labels.astype(np.float64).std())
            scores["normalised"] = 1.0 - scores["rmse"] / baseline if baseline > 0 else 0.0
        result[task] = scores
    result["score"] = {"value": early_stopping_score(result)}
    return result


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
    """A metric by key: `score` or `task.metric` (e.g. `click.auc`)."""
    if key == "score":
        return result["score"]["value"]
    task, _, name = key.partition(".")
    try:
        return result[task][name]
    except KeyError:
        raise KeyError(f"unknown metric {key!r}") from None


def higher_is_better(key: str) -> bool:
    return key.rpartition(".")[2] not in LOWER_IS_BETTER


def evaluate_model(
    model: torch.nn.Module, data: EncodedData, device: str = "cpu"
) -> dict[str, dict[str, float]]:
    return evaluate_predictions(predict(model, data, device=device), data)
