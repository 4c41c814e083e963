"""Paired bootstrap over requests: the sampling noise of a metric difference between two models.

Both models are scored on the same rows. A replicate resamples the requests with replacement
(a request's rows stay together, since they were shown together and are correlated) and
recomputes every metric of both models on that resample, so their difference keeps the pairing.
A resample is a vector of per-request counts, so each metric is a weighted metric with integer
row weights: no rows are copied, and sorts (AUC ranks) are done once per model, not per
replicate. Replicates are processed in chunks as (chunk, rows) weight matrices.

Metric names and definitions follow `training.evaluate` (a test checks that full-data values
match): click auc, gauc (per user), logloss; regression rmse, mae, normalised (1 - rmse / std);
watch_time ndcg@10 (per request); `score` = mean of click auc and each regression task's
normalised score.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ranker.metrics import ndcg_per_group, run_starts

EPS = 1e-7  # logloss clipping, as ranker.metrics.logloss


@dataclass(frozen=True)
class Replicates:
    """One metric of both models: full-data values and one value per bootstrap replicate."""

    candidate: float
    production: float
    candidate_b: np.ndarray  # (B,)
    production_b: np.ndarray  # (B,)


class _GroupedAuc:
    """Weighted AUC per group for any row weights, with the sort done once.

    Rows are sorted by (group, score); tied scores share credit (half a pair), as in
    ranker.metrics.grouped_auc.
    """

    def __init__(self, labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> None:
        self.order = np.lexsort((scores, groups))
        g, s = groups[self.order], scores[self.order]
        self.y = labels[self.order].astype(np.float64)
        self.tie_starts = np.flatnonzero(run_starts(g, s))
        group_of_tie = np.cumsum(run_starts(g))[self.tie_starts] - 1
        # First tie of each group, as an index into the ties.
        self.group_starts = np.flatnonzero(run_starts(group_of_tie))
        self.group_of_tie = group_of_tie

    def __call__(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """AUC (chunk, groups), NaN without both classes, and each group's weight."""
        w = weights[:, self.order]
        pos = np.add.reduceat(w * self.y, self.tie_starts, axis=1)
        neg = np.add.reduceat(w, self.tie_starts, axis=1) - pos
        below = np.cumsum(neg, axis=1) - neg  # negatives ranked below each tie, all groups
        below -= below[:, self.group_starts][:, self.group_of_tie]  # ... within its group
        credit = np.add.reduceat(pos * (below + 0.5 * neg), self.group_starts, axis=1)
        pos_g = np.add.reduceat(pos, self.group_starts, axis=1)
        neg_g = np.add.reduceat(neg, self.group_starts, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            auc = credit / (pos_g * neg_g)
        auc[(pos_g == 0) | (neg_g == 0)] = np.nan
        return auc, pos_g + neg_g


def _gauc(auc: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    valid = ~np.isnan(auc)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(valid, auc * sizes, 0.0).sum(1) / np.where(valid, sizes, 0.0).sum(1)


class _ModelMetrics:
    """Everything about one model's predictions that does not depend on the weights."""

    def __init__(
        self,
        preds: Mapping[str, np.ndarray],
        labels: Mapping[str, np.ndarray],
        request_index: np.ndarray,
        user_id: np.ndarray,
        requests: int,
    ) -> None:
        self.tasks = list(preds)
        self.row_terms: dict[str, np.ndarray] = {}
        self.auc: _GroupedAuc | None = None
        self.gauc: _GroupedAuc | None = None
        self.ndcg: tuple[np.ndarray, np.ndarray] | None = None
        for task, raw in preds.items():
            p = np.asarray(raw, dtype=np.float64)
            y = np.asarray(labels[task], dtype=np.float64)
            if task == "click":
                self.auc = _GroupedAuc(y, p, np.zeros(len(p), dtype=np.int64))
                self.gauc = _GroupedAuc(y, p, user_id)
                q = np.clip(p, EPS, 1 - EPS)
                self.row_terms["click.logloss"] = -(y * np.log(q) + (1 - y) * np.log(1 - q))
                continue
            diff = p - y
            self.row_terms[f"{task}.sq"] = diff * diff
            self.row_terms[f"{task}.abs"] = np.abs(diff)
            self.row_terms[f"{task}.y"] = y
            self.row_terms[f"{task}.y2"] = y * y
            if task == "watch_time":
                per_request = ndcg_per_group(y, p, request_index, k=10)
                valid = ~np.isnan(per_request)
                values = np.zeros(requests)
                values[: len(per_request)] = np.where(valid, per_request, 0.0)
                mask = np.zeros(requests)
                mask[: len(per_request)] = valid
                self.ndcg = (values, mask)
        names = list(self.row_terms)
        self._names = names
        self._matrix = np.stack([self.row_terms[n] for n in names], axis=1) if names else None

    def compute(self, weights: np.ndarray, counts: np.ndarray) -> dict[str, np.ndarray]:
        """Every metric for a chunk of replicates: weights (chunk, rows), counts (chunk, requests)."""
        out: dict[str, np.ndarray] = {}
        total = weights.sum(1)
        means: dict[str, np.ndarray] = {}
        if self._matrix is not None:
            sums = weights @ self._matrix
            means = {n: sums[:, i] / total for i, n in enumerate(self._names)}
        for task in self.tasks:
            if task == "click":
                assert self.auc is not None and self.gauc is not None
                out["click.auc"] = self.auc(weights)[0][:, 0]
                out["click.gauc"] = _gauc(*self.gauc(weights))
                out["click.logloss"] = means["click.logloss"]
                continue
            rmse = np.sqrt(means[f"{task}.sq"])
            std = np.sqrt(np.maximum(means[f"{task}.y2"] - means[f"{task}.y"] ** 2, 0.0))
            out[f"{task}.rmse"] = rmse
            with np.errstate(invalid="ignore", divide="ignore"):
                out[f"{task}.normalised"] = np.where(std > 0, 1.0 - rmse / std, 0.0)
            if task == "watch_time":
                out["watch_time.mae"] = means["watch_time.abs"]
                assert self.ndcg is not None
                values, mask = self.ndcg
                with np.errstate(invalid="ignore", divide="ignore"):
                    out["watch_time.ndcg@10"] = (counts @ values) / (counts @ mask)
        parts = [out["click.auc"]] if "click.auc" in out else []
        parts += [out[f"{t}.normalised"] for t in self.tasks if t != "click"]
        out["score"] = np.mean(parts, axis=0) if parts else np.full(len(weights), np.nan)
        return out


def resample_counts(requests: int, replicates: int, seed: int) -> np.ndarray:
    """(replicates, requests) counts of each request in each resample (each row sums to requests)."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, requests, size=(replicates, requests))
    offsets = np.arange(replicates)[:, None] * requests
    flat = np.bincount((draws + offsets).ravel(), minlength=replicates * requests)
    return flat.reshape(replicates, requests).astype(np.float64)


def paired_bootstrap(
    labels: Mapping[str, np.ndarray],
    candidate: Mapping[str, np.ndarray],
    production: Mapping[str, np.ndarray],
    request_id: np.ndarray,
    user_id: np.ndarray,
    metrics: Sequence[str],
    *,
    replicates: int = 200,
    seed: int = 0,
    chunk: int = 32,
) -> dict[str, Replicates]:
    """`metrics` of both models on the full rows and on `replicates` paired request resamples.

    Metrics either model cannot compute (a task it lacks) are left out of the result.
    """
    if replicates < 1:
        raise ValueError(f"replicates: must be >= 1, got {replicates}")
    _, request_index = np.unique(np.asarray(request_id), return_inverse=True)
    requests = int(request_index.max()) + 1 if len(request_index) else 0
    if requests < 2:
        raise ValueError(f"a paired bootstrap over requests needs >= 2 requests, got {requests}")
    users = np.unique(np.asarray(user_id), return_inverse=True)[1]
    models = [
        _ModelMetrics(preds, labels, request_index, users, requests)
        for preds in (candidate, production)
    ]
    full_counts = np.ones((1, requests))
    full = [m.compute(full_counts[:, request_index], full_counts) for m in models]
    wanted = [k for k in metrics if k in full[0] and k in full[1]]
    counts = resample_counts(requests, replicates, seed)
    parts: list[list[dict[str, np.ndarray]]] = [[], []]
    for start in range(0, replicates, chunk):
        block = counts[start : start + chunk]
        weights = block[:, request_index]
        for side, model in enumerate(models):
            parts[side].append(model.compute(weights, block))
    return {
        key: Replicates(
            float(full[0][key][0]),
            float(full[1][key][0]),
            np.concatenate([p[key] for p in parts[0]]),
            np.concatenate([p[key] for p in parts[1]]),
        )
        for key in wanted
    }
