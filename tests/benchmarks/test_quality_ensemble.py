"""The quality benchmark's seed-ensemble row: its members train with their own seeds (the base
configuration's run of the same world reused as the first), and the row's figures are those of
their averaged predictions, not of any one member."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import quality
from ranker.models.ensemble import MeanOfModels
from tests.conftest import tiny_overrides
from training.checkpoint import BEST, load_best
from training.config import load_config
from training.data import EncodedData
from training.evaluate import evaluate_predictions, predict
from training.prepare import PreparedData, prepare_data

SPLIT = ["data.valid_days=1", "data.test_days=1"]


def test_an_ensemble_row_is_the_mean_of_its_members(
    tiny_log: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = [o for o in tiny_overrides(tiny_log, tmp_path) if not o.startswith(("data.", "out="))]
    monkeypatch.setattr(quality, "SPLIT", SPLIT)
    monkeypatch.setitem(quality.CONFIGS, "tiny", (None, small))
    monkeypatch.setitem(quality.ENSEMBLES, "tiny-x2", ("tiny", 2))
    data = prepare_data(load_config(None, [*SPLIT, f"data.paths=[{tiny_log}]"]))
    assert isinstance(data, PreparedData)

    base = quality.run_config("tiny", data, tiny_log, 0, tmp_path, threads=1)
    members = [tmp_path / "runs" / "tiny-seed0", tmp_path / "runs" / "tiny-seed0-member100"]
    trained = (members[0] / BEST).stat().st_mtime_ns

    row = quality.run_config("tiny-x2", data, tiny_log, 0, tmp_path, 1, done={"tiny": base})

    assert (members[0] / BEST).stat().st_mtime_ns == trained  # the base run reused, not retrained
    assert row["config"] == "tiny-x2" and row["epochs"] == "2,2"
    test = data.test
    assert isinstance(test, EncodedData)
    mean = MeanOfModels([load_best(m / BEST) for m in members])
    want = evaluate_predictions(predict(mean, test), test)
    assert row["test.click.auc"] == pytest.approx(want["click"]["auc"])
    assert row["test.watch_time.rmse"] == pytest.approx(want["watch_time"]["rmse"])
    single = json.loads((members[0] / "metrics.json").read_text())["test"]
    assert not np.isclose(row["test.watch_time.rmse"], single["watch_time"]["rmse"])
