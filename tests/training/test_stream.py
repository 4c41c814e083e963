"""Streaming path: day filters pushed down to row groups, one epoch covers every training row once
(ranks disjoint), dense stats and evaluation equal the in-memory path, runs resume bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch

from ranker.features import FeatureEncoder, fit_dense_stats
from ranker.schema import load_default_spec
from tests.conftest import tiny_overrides
from training.checkpoint import CHECKPOINT, load_best
from training.config import load_config
from training.data import read_log, split_days
from training.errors import DataError
from training.evaluate import evaluate_predictions, predict
from training.prepare import prepare_data
from training.stream import StreamingLog, fit_dense_stats_streaming, prepare_stream
from training.trainer import Trainer


def _keys(parts: list) -> list[tuple[int, int]]:  # type: ignore[type-arg]
    """(request_id, watch time) of every row, sorted: a multiset to compare row coverage."""
    return sorted(
        (int(r), float(w))
        for p in parts
        for r, w in zip(p.request_id, p.labels["watch_time"], strict=True)
    )


def test_day_filter_reads_only_the_split_days_row_groups(tiny_log: Path) -> None:
    spec = load_default_spec()
    log = StreamingLog(tiny_log, spec)
    days = log.days()
    memory = read_log(tiny_log, spec)
    assert days == memory.days()
    split = split_days(days)
    train = log.split(split.train)
    assert len(train.groups) == len(split.train)  # one row group per simulated day file
    assert train.rows == memory.filter_days(split.train).rows
    assert all(Path(g.path).parent.name.removeprefix("day=") in split.train for g in train.groups)


def test_an_epoch_covers_each_row_once_and_ranks_read_disjoint_groups(tiny_log: Path) -> None:
    data = prepare_stream([tiny_log], load_default_spec(), valid_days=1, test_days=1)
    encoder = FeatureEncoder(data.spec)
    whole = list(data.train.chunks(encoder))
    batches = list(data.train.shuffled_batches(encoder, 256, seed=3, buffer_rows=700))
    assert all(b.rows == 256 for b in batches[:-1]) and 0 < batches[-1].rows <= 256
    assert _keys(batches) == _keys(whole)
    again = list(data.train.shuffled_batches(encoder, 256, seed=3, buffer_rows=700))
    assert all(
        np.array_equal(a.request_id, b.request_id) for a, b in zip(batches, again, strict=True)
    )
    other = list(data.train.shuffled_batches(encoder, 256, seed=4, buffer_rows=700))
    assert not np.array_equal(batches[0].request_id, other[0].request_id)
    ranks = [
        list(data.train.shuffled_batches(encoder, 128, seed=3, buffer_rows=700, rank=r, size=2))
        for r in (0, 1)
    ]
    assert sorted(_keys(ranks[0]) + _keys(ranks[1])) == _keys(whole)
    requests = [{int(r) for b in rank for r in b.request_id} for rank in ranks]
    assert requests[0] and requests[1] and not requests[0] & requests[1]  # a day is one group


def test_streamed_stats_and_evaluation_equal_the_in_memory_path(
    tiny_log: Path, tmp_path: Path
) -> None:
    config = load_config(None, tiny_overrides(tiny_log, tmp_path, "train.epochs=1"))
    memory = prepare_data(config)
    streamed = prepare_data(
        load_config(None, tiny_overrides(tiny_log, tmp_path, "data.stream=true"))
    )
    for a, b in zip(memory.spec.features, streamed.spec.features, strict=True):
        if a.stats is not None:
            assert b.stats is not None
            assert b.stats.mean == pytest.approx(a.stats.mean, rel=1e-12)
            assert b.stats.std == pytest.approx(a.stats.std, rel=1e-12)
    Trainer(config, memory, tmp_path, progress=False).fit()
    model = load_best(tmp_path / "best.pt")
    trainer = Trainer(config, streamed, tmp_path / "s", progress=False)
    got = trainer._evaluate(model, streamed.test)
    want = evaluate_predictions(predict(model, memory.test), memory.test)
    for task, metrics in want.items():
        for name, value in metrics.items():
            assert got[task][name] == pytest.approx(value, rel=1e-6, abs=1e-9), f"{task}.{name}"


def test_streaming_run_resumes_bit_for_bit(tiny_log: Path, tmp_path: Path) -> None:
    extra = ("data.stream=true", "data.shuffle_buffer_rows=500", "model.config.dropout=0.2")

    def run(run_dir: Path, *more: str, resume: bool = False) -> dict:  # type: ignore[type-arg]
        config = load_config(None, tiny_overrides(tiny_log, run_dir, *extra, *more))
        trainer = Trainer(config, prepare_data(config), run_dir, progress=False)
        if resume:
            trainer.load_checkpoint(run_dir / CHECKPOINT)
        return trainer.fit()

    whole = run(tmp_path / "whole")
    run(tmp_path / "parts", "train.epochs=1")
    parts = run(tmp_path / "parts", resume=True)
    assert whole["steps"] == parts["steps"] == 8 and whole["test"] == parts["test"]
    a = torch.load(tmp_path / "whole" / CHECKPOINT, weights_only=True)["wrapper_state"]
    b = torch.load(tmp_path / "parts" / CHECKPOINT, weights_only=True)["wrapper_state"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    doc = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    assert doc["rows"]["train"] == 3171 and np.isfinite(doc["test"]["click"]["auc"])


def test_streaming_refuses_csv_and_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    pacsv.write_csv(pa.table({"ts": [1]}), path)
    with pytest.raises(DataError, match=r"log\.csv.*Parquet only"):
        StreamingLog(path, load_default_spec())


def test_streamed_stats_match_fit_dense_stats_over_many_chunks(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = 200_000
    spec = load_default_spec()
    names = [f.name for f in spec.features]
    day0 = 20_000 * 86_400_000
    columns = {
        "request_id": np.arange(rows),
        "user_id": rng.integers(0, 50, rows),
        "item_id": rng.integers(0, 90, rows),
        "ts": day0 + rng.integers(0, 86_400_000, rows),
        "click": np.zeros(rows, dtype=np.int8),
        "watch_time": np.zeros(rows, dtype=np.float32),
        "duration": rng.lognormal(3, 1, rows).astype(np.float32),
        "upload_age_days": rng.exponential(30, rows).astype(np.float32),
    }
    for name in names:
        if name not in columns and spec[name].kind == "categorical":
            columns[name] = rng.integers(0, 5, rows)
    columns["tags"] = pa.array([[1]] * rows)  # type: ignore[assignment]
    pq.write_table(pa.table(columns), tmp_path / "log.parquet", row_group_size=30_000)
    log = StreamingLog(tmp_path / "log.parquet", spec)
    split = log.split(log.days())
    assert len(split.groups) == 7 and split.rows == rows
    streamed = fit_dense_stats_streaming(spec, split)
    whole = fit_dense_stats(spec, {n: columns[n] for n in ("duration", "upload_age_days")})
    for name in ("duration", "upload_age_days"):
        a, b = whole[name].stats, streamed[name].stats
        assert a is not None and b is not None
        assert b.mean == pytest.approx(a.mean, rel=1e-12) and b.std == pytest.approx(
            a.std, rel=1e-12
        )


def test_per_id_l2_counts_a_streamed_log_as_the_in_memory_path_does(
    tiny_log: Path, tmp_path: Path
) -> None:
    """optimizer.l2_per_id counts each row's reads over the training days: chunk by chunk when
    streaming, over the whole array in memory, with the same read weights."""
    extra = ("optimizer.embedding_l2=0.1", "optimizer.l2_per_id=0.5", "model.config.factor_rank=2")
    memory = load_config(None, tiny_overrides(tiny_log, tmp_path, *extra))
    streamed = load_config(None, tiny_overrides(tiny_log, tmp_path, *extra, "data.stream=true"))
    a = Trainer(memory, prepare_data(memory), tmp_path / "m", progress=False).wrapper.id_weights
    b = Trainer(streamed, prepare_data(streamed), tmp_path / "s", progress=False).wrapper.id_weights
    assert len(a) == len(b) == 4  # both groups' input tables and factor tables
    for (_, want), (_, got) in zip(a, b, strict=True):
        torch.testing.assert_close(got, want)
        assert (want > 0).any()


def test_per_id_l2_outside_zero_to_one_names_the_key() -> None:
    from training.config import ConfigError

    with pytest.raises(ConfigError, match=r"optimizer\.l2_per_id: must be in \[0, 1\]"):
        load_config(None, ["optimizer.l2_per_id=2"])
