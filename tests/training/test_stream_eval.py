"""Spilled evaluation (training/stream_eval.py): the metrics of a split spilled to many part files
equal `evaluate_predictions` on the whole split, ties, text ids and oracle columns included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training import stream_eval
from training.data import EncodedData
from training.evaluate import evaluate_predictions
from training.stream_eval import SpilledMetrics


def _split(rows: int, text_ids: bool, oracle: bool) -> tuple[EncodedData, dict[str, np.ndarray]]:
    rng = np.random.default_rng(3)
    users = rng.integers(0, 400, rows)
    requests = np.repeat(np.arange(rows // 10 + 1), 10)[:rows]
    click = (rng.random(rows) < 0.3).astype(np.float32)
    watch = (click * rng.exponential(20, rows)).astype(np.float32)
    labels = {"click": click, "watch_time": watch, "completion": np.minimum(watch / 30, 1)}
    # Rounded predictions: many ties, inside and across parts. (rel 1e-6: the whole-split path
    # averages float32 predictions in float32, the spilled one in float64.)
    preds = {
        "click": np.round(rng.random(rows), 2).astype(np.float32),
        "watch_time": np.round(rng.exponential(10, rows)).astype(np.float32),
        "completion": np.round(rng.random(rows), 1).astype(np.float32),
    }
    truth = {}
    if oracle:
        truth = {
            "oracle_click": rng.random(rows).astype(np.float32),
            "oracle_watch_time": rng.exponential(8, rows).astype(np.float32),
            "oracle_completion": rng.random(rows).astype(np.float32),
        }
    user_id = np.array([f"u{u}" for u in users], dtype=object) if text_ids else users
    return EncodedData({}, labels, requests, user_id, truth), preds


@pytest.mark.parametrize(("text_ids", "oracle"), [(False, True), (True, False)])
def test_spilled_metrics_equal_the_whole_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text_ids: bool, oracle: bool
) -> None:
    monkeypatch.setattr(stream_eval, "PART_ROWS", 250)
    data, preds = _split(3001, text_ids, oracle)
    spilled = SpilledMetrics(list(preds), data.rows, tmp_path)
    assert spilled.parts == 13
    for start in range(0, data.rows, 700):  # chunks cut across users and requests
        rows = np.arange(start, min(start + 700, data.rows))
        spilled.add({t: p[rows] for t, p in preds.items()}, data.take(rows))
    assert len(list((tmp_path / "click").iterdir())) > 10  # many parts hold rows
    got = spilled.result()
    want = evaluate_predictions(preds, data)
    assert got.keys() == want.keys()
    for task, values in want.items():
        assert got[task].keys() == values.keys(), task
        for name, value in values.items():
            assert got[task][name] == pytest.approx(value, rel=1e-6, abs=1e-7), f"{task}.{name}"
