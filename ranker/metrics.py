"""Offline metrics in numpy (torch-free): shared by evaluation, tuning and A/B analysis.

Grouped metrics (GAUC per user, NDCG per request) are vectorised: one sort, no Python loop over
groups.
"""

from __future__ import annotations

import numpy as np


def run_starts(*keys: np.ndarray) -> np.ndarray:
    """Boolean mask marking the first row of each run of equal keys (keys already sorted)."""
    n = len(keys[0])
    starts = np.zeros(n, dtype=bool)
    if n:
        starts[0] = True
        for key in keys:
            starts[1:] |= key[1:] != key[:-1]
    return starts


def average_ranks(groups: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1-based ranks of scores within each group (ties share their average rank), and the order."""
    order = np.lexsort((scores, groups))
    g, s = groups[order], scores[order]
    group_start = np.flatnonzero(run_starts(g))
    group_id = np.cumsum(run_starts(g)) - 1
    position = np.arange(len(g)) - group_start[group_id] + 1.0
    tie_start = run_starts(g, s)
    tie_id = np.cumsum(tie_start) - 1
    tie_sum = np.bincount(tie_id, weights=position)
    tie_count = np.bincount(tie_id)
    return (tie_sum / tie_count)[tie_id], order


def grouped_auc(
    labels: np.ndarray, scores: np.ndarray, groups: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """AUC per group and each group's size; NaN where a group lacks positives or negatives."""
    labels = np.asarray(labels, dtype=np.float64)
    ranks, order = average_ranks(np.asarray(groups), np.asarray(scores, dtype=np.float64))
    y = labels[order]
    group_id = np.cumsum(run_starts(np.asarray(groups)[order])) - 1
    positives = np.bincount(group_id, weights=y)
    sizes = np.bincount(group_id).astype(np.float64)
    negatives = sizes - positives
    rank_sum = np.bincount(group_id, weights=ranks * y)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)
    auc[(positives == 0) | (negatives == 0)] = np.nan
    return auc, sizes


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (ties count half); NaN when only one class is present."""
    values, _ = grouped_auc(labels, scores, np.zeros(len(labels), dtype=np.int64))
    return float(values[0]) if len(values) else float("nan")


def gauc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> float:
    """Group AUC: per-group AUC averaged with impression weights over groups with both classes."""
    values, sizes = grouped_auc(labels, scores, groups)
    valid = ~np.isnan(values)
    if not valid.any():
        return float("nan")
    return float(np.average(values[valid], weights=sizes[valid]))


def logloss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def calibration(labels: np.ndarray, preds: np.ndarray) -> float:
    """Mean prediction over mean label: 1.0 is calibrated on average."""
    observed = float(np.mean(labels, dtype=np.float64))
    mean = float(np.mean(preds, dtype=np.float64))  # float32 sums drift at 1e-5 over 1e5 rows
    return mean / observed if observed > 0 else float("nan")


def rmse(targets: np.ndarray, preds: np.ndarray) -> float:
    diff = np.asarray(preds, dtype=np.float64) - np.asarray(targets, dtype=np.float64)
    return float(np.sqrt(np.mean(diff * diff)))


def mae(targets: np.ndarray, preds: np.ndarray) -> float:
    diff = np.asarray(preds, dtype=np.float64) - np.asarray(targets, dtype=np.float64)
    return float(np.mean(np.abs(diff)))


def ndcg_per_group(
    relevance: np.ndarray, scores: np.ndarray, groups: np.ndarray, k: int = 10
) -> np.ndarray:
    """NDCG@k of each group (request) ranked by `scores`; NaN for groups with no relevance.

    Gains are the relevance values themselves (e.g. seconds watched); ties in the score break by
    row order, so the result is deterministic.
    """
    groups = np.asarray(groups)
    relevance = np.asarray(relevance, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    rows = np.arange(len(groups))

    def dcg(order: np.ndarray) -> np.ndarray:
        g = groups[order]
        starts = run_starts(g)
        group_id = np.cumsum(starts) - 1
        position = rows - np.flatnonzero(starts)[group_id]
        discount = np.where(position < k, 1.0 / np.log2(position + 2.0), 0.0)
        return np.bincount(group_id, weights=relevance[order] * discount)

    actual = dcg(np.lexsort((rows, -scores, groups)))
    ideal = dcg(np.lexsort((rows, -relevance, groups)))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ideal > 0, actual / ideal, np.nan)


def ndcg_at_k(relevance: np.ndarray, scores: np.ndarray, groups: np.ndarray, k: int = 10) -> float:
    """Mean NDCG@k over groups that have any relevance."""
    values = ndcg_per_group(relevance, scores, groups, k)
    valid = ~np.isnan(values)
    return float(values[valid].mean()) if valid.any() else float("nan")
