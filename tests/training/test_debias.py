"""Position debiasing in training: the data path carries `position`, `debias.position=pal` trains
the tower, and the export holds the model alone (no position input; equal to the model at the
top position)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from ranker.features import FeatureEncoder
from ranker.models.losses import task_output
from ranker.models.position import PositionBias
from ranker.registry import load_manifest
from ranker.schema import load_default_spec
from tests.training.conftest import tiny_overrides
from training.checkpoint import CHECKPOINT, load_best
from training.config import ConfigError, load_config
from training.data import encode_log, read_log
from training.errors import DataError
from training.evaluate import evaluate_model
from training.export import export_run
from training.prepare import prepare_data
from training.trainer import Trainer, build_training
from training.tune import onnx_predict


def with_positions(log: Path, out: Path, change=None) -> Path:
    """A copy of a simulated log with each row's place in its request as `position` (0 first);
    `change(table) -> table` edits each file's table before it is written."""
    for file in sorted(log.rglob("*.parquet")):
        table = pq.read_table(file, partitioning=None)
        request = table["request_id"].to_numpy()
        starts = np.r_[0, np.flatnonzero(request[1:] != request[:-1]) + 1]
        position = np.arange(len(request)) - np.repeat(starts, np.diff(np.r_[starts, len(request)]))
        table = table.append_column("position", pa.array(position, pa.int64()))
        target = out / file.relative_to(log)
        target.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(change(table) if change else table, target)
    return out


@pytest.fixture(scope="module")
def positioned_log(tiny_log: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return with_positions(tiny_log, tmp_path_factory.mktemp("positioned"))


def test_the_data_path_carries_positions(positioned_log: Path, tiny_log: Path) -> None:
    spec = load_default_spec()
    log = read_log(positioned_log, spec)
    data = encode_log(log, FeatureEncoder(spec))
    assert data.position is not None and data.position.dtype == np.int64
    np.testing.assert_array_equal(data.position, log.column("position"))
    assert data.position.min() == 0 and (data.position > 0).any()
    index = np.arange(data.rows)[::-3]
    np.testing.assert_array_equal(data.take(index).position, data.position[index])
    first = next(data.slices(100))
    np.testing.assert_array_equal(first.position, data.position[:100])
    assert encode_log(read_log(tiny_log, spec), FeatureEncoder(spec)).position is None


def test_bad_positions_name_the_column(tiny_log: Path, tmp_path: Path) -> None:
    def negative(table: pa.Table) -> pa.Table:
        column = table.schema.get_field_index("position")
        return table.set_column(column, "position", pc.subtract(table["position"], 2))

    bad = with_positions(tiny_log, tmp_path / "bad", negative)
    spec = load_default_spec()
    with pytest.raises(DataError, match="position") as info:
        read_log(bad, spec)
    assert "negative" in str(info.value)
    kept = read_log(bad, spec, drop_invalid=True)
    assert kept.rows > 0 and (kept.column("position") >= 0).all()
    assert any("position" in reason for reason in kept.dropped)


def test_config_refuses_unknown_methods_and_streaming() -> None:
    with pytest.raises(ConfigError, match=r"debias\.position"):
        load_config(None, ["debias.position=ips"])
    with pytest.raises(ConfigError, match="streaming"):
        load_config(None, ["debias.position=pal", "data.stream=true"])
    with pytest.raises(ConfigError, match=r"debias\.max_positions"):
        load_config(None, ["debias.max_positions=1"])
    with pytest.raises(ConfigError, match=r"debias\.lr"):
        load_config(None, ["debias.lr=0"])


def test_pal_needs_a_position_column(tiny_log: Path, tmp_path: Path) -> None:
    config = load_config(None, tiny_overrides(tiny_log, tmp_path, "debias.position=pal"))
    with pytest.raises(ConfigError, match="no `position` column"):
        Trainer(config, prepare_data(config), tmp_path, progress=False)


def test_pal_trains_the_tower_and_exports_the_model_alone(
    positioned_log: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    overrides = tiny_overrides(positioned_log, run, "debias.position=pal", "train.epochs=1")
    config = load_config(None, overrides)
    data = prepare_data(config)
    Trainer(config, data, run, progress=False).fit()

    metrics = json.loads((run / "metrics.json").read_text())
    curve = metrics["examination"]
    # Validated as trained: the model x the tower at the served positions, whose predictions sit
    # below the position-0 model's (P(seen) <= 1).
    assert metrics["evaluated_at"].startswith("served positions")
    alone = evaluate_model(load_best(run / "best.pt"), data.valid)
    assert metrics["valid"]["click"]["calibration"] < alone["click"]["calibration"]
    assert len(curve) == 64 and curve[0] == 1.0 and all(0 < v <= 1 for v in curve)
    # The tower learnt at the positions the log holds (1 .. 29) and nowhere else.
    logits = torch.load(run / CHECKPOINT, weights_only=True)["wrapper_state"]
    moved = logits["position.not_seen_logit"] != PositionBias(64).not_seen_logit.detach()
    shown = np.unique(data.train.position)
    assert moved[shown[shown > 0]].all() and not moved[shown.max() + 1 :].any()

    manifest = export_run(run, tmp_path / "models", "ranker")
    folder = tmp_path / "models" / "ranker" / manifest.version
    graph = onnx.load(folder / "model.onnx").graph
    names = [i.name for i in graph.input]
    assert names == ["user_cat", "item_cat", "item_multi", "item_dense"]
    everything = names + [t.name for t in graph.initializer] + [n.name for n in graph.node]
    assert not [n for n in everything if "position" in n.lower() or "not_seen" in n.lower()]

    # The one epoch's checkpoint is the best model plus the tower: at position 0 the training
    # wrapper predicts exactly what the exported graph serves.
    wrapper, _ = build_training(config, data.spec)
    state = torch.load(run / CHECKPOINT, weights_only=True)["wrapper_state"]
    wrapper.load_state_dict(state)
    wrapper.eval()
    assert wrapper.position is not None
    assert not any("position" in k for k in wrapper.model.state_dict())
    rows = data.valid.take(np.arange(300))
    served = onnx_predict(folder, load_manifest(folder), rows)
    top = torch.zeros(rows.rows, dtype=torch.long)
    with torch.no_grad():
        raw = wrapper.model.forward_parts({k: torch.from_numpy(v) for k, v in rows.inputs.items()})
        for task in wrapper.model.tasks:
            at_top = wrapper.position.observed_raw(task, raw.raw[task.name], top)
            want = task_output(task, at_top).numpy()
            scale = np.maximum(1.0, np.abs(want))
            np.testing.assert_array_less(np.abs(served[task.name] - want) / scale, 1e-4)


def test_the_gate_maps_expected_outcomes_to_the_served_positions(tmp_path: Path) -> None:
    from training.retrain.positions import at_served_positions, examination_curve

    curve = np.array([1.0, 0.5, 0.25])
    predictions = {"click": np.array([0.4, 0.4, 0.4, 0.4], np.float32), "watch_time": np.ones(4)}
    position = np.array([0, 1, 2, 7])  # past the curve: its last entry
    mapped = at_served_positions(predictions, position, curve)
    np.testing.assert_allclose(mapped["click"], [0.4, 0.2, 0.1, 0.1])
    np.testing.assert_allclose(mapped["watch_time"], [1.0, 0.5, 0.25, 0.25])
    assert mapped["click"].dtype == np.float32
    (tmp_path / "metrics.json").write_text(json.dumps({"examination": [1.0, 0.6]}))
    np.testing.assert_array_equal(examination_curve(tmp_path), [1.0, 0.6])
    (tmp_path / "metrics.json").write_text(json.dumps({"valid": {}}))
    assert examination_curve(tmp_path) is None
