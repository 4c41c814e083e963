"""How much an int8 graph loses against the fp32 graph it came from, and whether that is allowed.

Both graphs score the same held-out requests the way the service does (user inputs batch 1, the
request's items batch N, one run per request): dynamic quantisation picks its activation scale per
run, so scoring all rows at once would measure a different model from the one served. The report
holds each task's metric against the labels for both graphs, their difference, and how well the
int8 ranking agrees with the fp32 ranking per request (NDCG@k with the fp32 ranking as the ideal).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from ranker import metrics
from ranker.metrics import run_starts
from ranker.scoring import DEFAULT_FORMULA, ScoreFormula, score
from training.data import EncodedData
from training.quantize_config import QualityBound

# Rank agreement depth: the top of a feed is what a user sees.
AGREEMENT_K = 10


class Session(Protocol):
    """What is needed of an onnxruntime.InferenceSession (kept structural for typing)."""

    def run(self, output_names: Sequence[str] | None, input_feed: Mapping[str, Any]) -> Any: ...


def request_feeds(
    data: EncodedData, index: np.ndarray, user_inputs: Sequence[str]
) -> dict[str, np.ndarray]:
    """The served layout of one request's rows `index`: user inputs from its first row (batch 1),
    item inputs of every row (batch N)."""
    return {
        name: np.ascontiguousarray(values[index[:1]] if name in user_inputs else values[index])
        for name, values in data.inputs.items()
    }


def request_rows(data: EncodedData, limit: int | None = None) -> list[np.ndarray]:
    """Row indices of each request in first-seen order (at most `limit` requests)."""
    _, first, inverse = np.unique(data.request_id, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")[:limit]
    by_request = np.argsort(inverse, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(inverse))])
    return [by_request[bounds[r] : bounds[r + 1]] for r in order]


def predict_requests(
    session: Session,
    outputs: Sequence[str],
    data: EncodedData,
    requests: Sequence[np.ndarray],
    user_inputs: Sequence[str],
) -> dict[str, np.ndarray]:
    """Per-task predictions [rows of `requests`, concatenated], one session run per request."""
    parts: dict[str, list[np.ndarray]] = {task: [] for task in outputs}
    for index in requests:
        got = session.run(list(outputs), request_feeds(data, index, user_inputs))
        for task, values in zip(outputs, got, strict=True):
            parts[task].append(np.asarray(values, dtype=np.float64).reshape(-1))
    return {task: np.concatenate(chunks) for task, chunks in parts.items()}


def _task_metrics(
    preds: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray]
) -> dict[str, float]:
    out: dict[str, float] = {}
    for task, values in preds.items():
        if task == "click":
            out["click_auc"] = metrics.auc(labels[task], values)
        else:
            out[f"{task}_rmse"] = metrics.rmse(labels[task], values)
    return out


def ranking_agreement(
    reference: np.ndarray, candidate: np.ndarray, groups: np.ndarray, k: int = AGREEMENT_K
) -> np.ndarray:
    """NDCG@k per group of the `candidate` ranking, graded by the `reference` ranking: the
    reference's i-th item (i < k) has gain k - i, the rest 0; 1.0 means the same top k in order."""
    rows = np.arange(len(groups))
    order = np.lexsort((rows, -reference, groups))
    starts = run_starts(groups[order])
    position = rows - np.flatnonzero(starts)[np.cumsum(starts) - 1]
    gain = np.empty(len(groups), dtype=np.float64)
    gain[order] = np.maximum(k - position, 0)
    return metrics.ndcg_per_group(gain, candidate, groups, k)


def parity_report(
    fp32: Session,
    int8: Session,
    outputs: Sequence[str],
    data: EncodedData,
    user_inputs: Sequence[str],
    *,
    max_requests: int | None = None,
    formula: ScoreFormula = DEFAULT_FORMULA,
) -> dict[str, Any]:
    """fp32 vs int8 on `data` (held-out rows), per request in the served layout."""
    requests = request_rows(data, max_requests)
    if not requests:
        raise ValueError("parity check: no held-out requests to score")
    index = np.concatenate(requests)
    labels = {task: data.labels[task][index] for task in outputs}
    want = predict_requests(fp32, outputs, data, requests, user_inputs)
    got = predict_requests(int8, outputs, data, requests, user_inputs)
    before, after = _task_metrics(want, labels), _task_metrics(got, labels)
    delta = {
        name: after[name] - value if name.endswith("_auc") else after[name] / value - 1.0
        for name, value in before.items()
    }
    groups = np.repeat(np.arange(len(requests)), [len(r) for r in requests])
    used = ScoreFormula(
        kind=formula.kind,
        weights={t: w for t, w in formula.weights.items() if t in outputs},
        transforms={t: f for t, f in formula.transforms.items() if t in outputs},
        biases={t: b for t, b in formula.biases.items() if t in outputs},
        allow_negative=formula.allow_negative,
    )
    agreement = ranking_agreement(score(used, want, groups), score(used, got, groups), groups)
    agreement = agreement[~np.isnan(agreement)]
    return {
        "layout": "one run per request: user inputs batch 1, items batch N",
        "requests": len(requests),
        "rows": len(index),
        "fp32": before,
        "int8": after,
        # click_auc: int8 - fp32; *_rmse: int8 / fp32 - 1 (relative).
        "delta": delta,
        "max_abs_diff": {t: float(np.max(np.abs(got[t] - want[t]))) for t in outputs},
        "ranking": {
            "metric": f"ndcg@{AGREEMENT_K} of the int8 ranking, graded by the fp32 ranking",
            "formula": {"kind": used.kind, "weights": dict(used.weights)},
            "mean": float(agreement.mean()) if agreement.size else float("nan"),
            "p05": float(np.quantile(agreement, 0.05)) if agreement.size else float("nan"),
            "min": float(agreement.min()) if agreement.size else float("nan"),
        },
    }


def violations(report: Mapping[str, Any], bound: QualityBound) -> list[str]:
    """Each way the report exceeds the bound, in words; [] when the int8 version may be published."""
    out = []
    for name, change in report["delta"].items():
        if name.endswith("_auc") and not -change <= bound.max_auc_drop:  # NaN refuses too
            out.append(f"{name} drops by {-change:.5f} > {bound.max_auc_drop:g}")
        elif name.endswith("_rmse") and not change <= bound.max_rmse_rise:
            out.append(f"{name} rises by {change:+.3%} > {bound.max_rmse_rise:.3%}")
    return out
