"""Exact evaluation metrics of a streamed split in bounded memory: rows spilled to disk by group.

`evaluate_predictions` needs a split's rows at once: AUC sorts them all, GAUC groups them by user,
NDCG@10 by request. On a streamed split that is O(split) memory (at 20M log rows, 1.4M rows a day:
~75 MB of kept columns plus several times that in sort temporaries). Here each chunk's predictions,
labels and oracle values are appended to files on disk, partitioned by a hash of the task's group
(click and completion by user, watch time by request) into parts of about `PART_ROWS` rows, so
every group lies whole in one part. After the pass, part by part:
- per-group metrics (GAUC, NDCG@10) are computed with `ranker.metrics` and merged with their
  weights (impressions per user; one per request), as the whole-split functions weight them;
- sums (logloss, RMSE, MAE, calibration, the label spread) add up;
- the global AUC counts, for every part's positives, the negatives below them in every part
  (sorted negatives, binary search; ties count half): the Mann-Whitney count, exactly.
The constant predictor (`constant_*`) predicts the split's mean label, known after the pass.
Memory: two parts' columns at a time, whatever the split's size.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ranker import metrics
from ranker.features import category_hashes, mix64
from training.data import EncodedData
from training.evaluate import ORACLE_OF, SHARED_METRICS, early_stopping_score

PART_ROWS = 262_144  # rows per part file (expected): what one metric call holds at once
# What each task's per-group metric groups by; a part holds whole groups.
GROUP_OF = {"click": "user", "watch_time": "request", "completion": "user"}
ROW = np.dtype([("label", "f8"), ("model", "f8"), ("oracle", "f8"), ("group", "i8")])


def group_keys(ids: np.ndarray) -> np.ndarray:
    """int64 group keys: integer ids as they are, other ids (text) by their stable 64-bit hash."""
    if ids.dtype.kind in "iu":
        return ids.astype(np.int64, copy=False)
    return category_hashes(ids, "id").view(np.int64)


@dataclass
class _Sums:
    """Additive parts of one predictor's metrics on one task."""

    rows: int = 0
    sq_error: float = 0.0
    abs_error: float = 0.0
    log_loss: float = 0.0
    pred_sum: float = 0.0
    label_sum: float = 0.0
    grouped: float = 0.0  # sum of weighted per-group values (GAUC, NDCG@10)
    group_weight: float = 0.0

    def add(self, task: str, labels: np.ndarray, preds: np.ndarray, groups: np.ndarray) -> None:
        self.rows += len(labels)
        diff = preds - labels
        self.sq_error += float(diff @ diff)
        self.pred_sum += float(preds.sum())
        self.label_sum += float(labels.sum())
        if task == "click":
            p = np.clip(preds, 1e-7, 1 - 1e-7)
            self.log_loss += float(-(labels * np.log(p) + (1 - labels) * np.log(1 - p)).sum())
            values, sizes = metrics.grouped_auc(labels, preds, groups)
            valid = ~np.isnan(values)
            self.grouped += float(values[valid] @ sizes[valid])
            self.group_weight += float(sizes[valid].sum())
        elif task == "watch_time":
            self.abs_error += float(np.abs(diff).sum())
            values = metrics.ndcg_per_group(labels, preds, groups, k=10)
            valid = ~np.isnan(values)
            self.grouped += float(values[valid].sum())
            self.group_weight += float(valid.sum())

    def scores(self, task: str, auc: float) -> dict[str, float]:
        """The metrics `training.evaluate.task_metrics` reports, from the sums."""
        n = self.rows
        grouped = self.grouped / self.group_weight if self.group_weight else math.nan
        observed = self.label_sum / n
        calibration = (self.pred_sum / n) / observed if observed > 0 else math.nan
        if task == "click":
            return {
                "auc": auc,
                "gauc": grouped,
                "logloss": self.log_loss / n,
                "calibration": calibration,
            }
        out = {"rmse": math.sqrt(self.sq_error / n), "calibration": calibration}
        if task == "watch_time":
            out["mae"] = self.abs_error / n
            out["ndcg@10"] = grouped
        return out


@dataclass
class _Spill:
    """One task's rows on disk, in `parts` files by a hash of the group key."""

    folder: Path
    parts: int
    has_oracle: bool
    rows: int = 0
    label_sum: float = 0.0
    written: list[bool] = field(default_factory=list)

    def path(self, part: int) -> Path:
        return self.folder / f"part-{part}.bin"

    def append(
        self, labels: np.ndarray, preds: np.ndarray, oracle: np.ndarray | None, keys: np.ndarray
    ) -> None:
        rows = np.empty(len(labels), dtype=ROW)
        rows["label"], rows["model"], rows["group"] = labels, preds, keys
        rows["oracle"] = oracle if oracle is not None else 0.0
        self.rows += len(rows)
        self.label_sum += float(rows["label"].sum())
        part = (mix64(keys) % np.uint64(self.parts)).astype(np.int64)
        order = np.argsort(part, kind="stable")  # rows keep their order inside a part
        bounds = np.searchsorted(part[order], np.arange(self.parts + 1))
        for index in range(self.parts):
            lo, hi = bounds[index], bounds[index + 1]
            if hi > lo:
                with self.path(index).open("ab") as handle:
                    rows[order[lo:hi]].tofile(handle)

    def read(self) -> Iterator[np.ndarray]:
        for index in range(self.parts):
            path = self.path(index)
            if path.exists():
                yield np.fromfile(path, dtype=ROW)


class SpilledMetrics:
    """Collects a split's evaluation rows chunk by chunk, then computes `evaluate_predictions`'
    metrics part by part (see the module docstring)."""

    def __init__(self, tasks: list[str], expected_rows: int, folder: Path) -> None:
        self.parts = max(1, -(-expected_rows // PART_ROWS))
        self.folder = folder
        self.tasks = tasks
        self.spills: dict[str, _Spill] = {}

    def add(self, preds: Mapping[str, np.ndarray], chunk: EncodedData) -> None:
        keys = {
            "user": group_keys(chunk.user_id),
            "request": group_keys(chunk.request_id),
        }
        for task in self.tasks:
            oracle_column = ORACLE_OF.get(task)
            oracle = chunk.oracle.get(oracle_column) if oracle_column else None
            spill = self.spills.get(task)
            if spill is None:
                folder = self.folder / task
                folder.mkdir(parents=True, exist_ok=True)
                spill = self.spills[task] = _Spill(folder, self.parts, oracle is not None)
            if spill.has_oracle and oracle is None:
                raise ValueError(f"a chunk lacks the oracle column {oracle_column!r}")
            spill.append(chunk.labels[task], preds[task], oracle, keys[GROUP_OF[task]])

    def result(self) -> dict[str, dict[str, float]]:
        """{task: {metric: value}} as `evaluate_predictions` returns it, plus `score`."""
        result: dict[str, dict[str, float]] = {}
        for task, spill in self.spills.items():
            mean = spill.label_sum / spill.rows
            predictors = ["model", "oracle", "constant"] if spill.has_oracle else ["model"]
            sums = {name: _Sums() for name in predictors}
            spread = 0.0  # sum of squared deviations from the mean label
            for rows in spill.read():
                labels = rows["label"]
                for name in predictors:
                    preds = np.full(len(rows), mean) if name == "constant" else rows[name]
                    sums[name].add(task, labels, preds, rows["group"])
                spread += float(((labels - mean) ** 2).sum())
            aucs = {name: _auc(spill, name, mean) for name in predictors} if task == "click" else {}
            scores = sums["model"].scores(task, aucs.get("model", math.nan))
            if spill.has_oracle:
                best = sums["oracle"].scores(task, aucs.get("oracle", math.nan))
                constant = sums["constant"].scores(task, aucs.get("constant", math.nan))
                for name, value in best.items():
                    scores[f"oracle_{name}"] = value
                    scores[f"gap_{name}"] = scores[name] - value
                for name in SHARED_METRICS:
                    if name in scores and f"oracle_{name}" in scores:
                        span = scores[f"oracle_{name}"] - constant[name]
                        scores[f"constant_{name}"] = constant[name]
                        scores[f"captured_{name}"] = (
                            (scores[name] - constant[name]) / span if span else math.nan
                        )
            if task != "click":
                baseline = math.sqrt(spread / spill.rows)
                scores["normalised"] = 1.0 - scores["rmse"] / baseline if baseline > 0 else 0.0
            result[task] = scores
        result["score"] = {"value": early_stopping_score(result)}
        return result


def _auc(spill: _Spill, predictor: str, mean: float) -> float:
    """The Mann-Whitney AUC over all parts, two parts in memory at a time: for each part's sorted
    negatives, every part's positives above them count 1, equal ones 1/2."""
    numerator = 0.0
    positives = negatives = 0

    def scores(rows: np.ndarray) -> np.ndarray:
        return np.full(len(rows), mean) if predictor == "constant" else rows[predictor]

    for rows in spill.read():
        below = np.sort(scores(rows)[rows["label"] == 0])
        negatives += len(below)
        for other in spill.read():
            above = scores(other)[other["label"] != 0]
            left = np.searchsorted(below, above, side="left")
            right = np.searchsorted(below, above, side="right")
            numerator += float(left.sum()) + 0.5 * float((right - left).sum())
    for rows in spill.read():
        positives += int((rows["label"] != 0).sum())
    if positives == 0 or negatives == 0:
        return math.nan
    return numerator / (positives * negatives)


def spill_folder() -> tempfile.TemporaryDirectory[str]:
    """A temporary folder for one evaluation's part files (removed when closed)."""
    return tempfile.TemporaryDirectory(prefix="ranker-eval-")
