"""Loader: validation errors name file/column/count, drop_invalid counts, splits, batches, streaming."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from ranker.features import FeatureEncoder
from ranker.schema import load_default_spec
from training.data import (
    encode_log,
    iter_encoded,
    log_files,
    read_log,
    split_days,
)
from training.errors import DataError

DAY0 = 20454 * 86_400_000  # 2026-01-01 in ms


def make_table(rows: int, day: int = 0, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    click = rng.integers(0, 2, rows).astype(np.int8)
    duration = rng.uniform(5, 100, rows).astype(np.float32)
    watch = (click * duration * rng.uniform(0, 1, rows)).astype(np.float32)
    return pa.table(
        {
            "request_id": np.arange(rows, dtype=np.int64) // 5 + day * 10_000,
            "user_id": rng.integers(0, 50, rows),
            "item_id": rng.integers(0, 500, rows),
            "ts": DAY0 + day * 86_400_000 + np.arange(rows, dtype=np.int64) * 1000,
            "user_active_degree": rng.choice(["high", "low"], rows),
            "device": rng.choice(["ios", "android"], rows),
            "follower_bucket": rng.integers(0, 5, rows),
            "user_code_0": rng.integers(0, 9, rows),
            "user_code_1": rng.integers(0, 9, rows),
            "user_code_2": rng.integers(0, 9, rows),
            "hour": rng.integers(0, 24, rows),
            "tab": rng.integers(0, 3, rows),
            "author_id": rng.integers(0, 40, rows),
            "category": rng.integers(0, 10, rows),
            "tags": pa.array([list(rng.integers(0, 30, rng.integers(1, 4))) for _ in range(rows)]),
            "duration": duration,
            "upload_age_days": rng.uniform(0, 30, rows).astype(np.float32),
            "click": click,
            "watch_time": watch,
        }
    )


def write_days(root: Path, days: int = 3, rows: int = 40) -> Path:
    for day in range(days):
        folder = root / f"day=2026-01-0{day + 1}"
        folder.mkdir(parents=True)
        pq.write_table(make_table(rows, day, seed=day), folder / "part-0.parquet")
    return root


def with_column(table: pa.Table, name: str, values: list | np.ndarray) -> pa.Table:
    index = table.column_names.index(name)
    return table.set_column(index, name, pa.array(values))


def test_reads_partitioned_directory(tmp_path: Path) -> None:
    log = read_log(write_days(tmp_path), load_default_spec())
    assert log.rows == 120
    assert log.days() == ["2026-01-01", "2026-01-02", "2026-01-03"]
    assert not log.has_oracle
    assert log.filter_days(["2026-01-02"]).rows == 40


def test_days_prune_day_partitions_before_reading(tmp_path: Path) -> None:
    root = write_days(tmp_path)
    # A file outside any day partition may hold any day: kept, its rows filtered after reading.
    pq.write_table(make_table(10, 2, seed=9), root / "extra.parquet")
    # A broken file in a pruned partition is never opened.
    (root / "day=2026-01-01" / "broken.parquet").write_bytes(b"not parquet")
    files = log_files(root, ["2026-01-02", "2026-01-03"])
    assert [f.relative_to(root).as_posix() for f in files] == [
        "day=2026-01-02/part-0.parquet",
        "day=2026-01-03/part-0.parquet",
        "extra.parquet",
    ]
    log = read_log(root, load_default_spec(), days=["2026-01-03"])
    assert log.days() == ["2026-01-03"] and log.rows == 50
    assert log.table["ts"].to_pylist() == (
        read_log(files, load_default_spec()).filter_days(["2026-01-03"]).table["ts"].to_pylist()
    )
    with pytest.raises(DataError, match=r"broken\.parquet"):
        read_log(root, load_default_spec())  # without days the broken file is read, and named


def test_days_that_no_partition_holds_are_named(tmp_path: Path) -> None:
    root = write_days(tmp_path)
    with pytest.raises(DataError, match=r"no day partition holds the days \['2027-05-01'\]"):
        read_log(root, load_default_spec(), days=["2027-05-01"])


def test_split_days() -> None:
    days = [f"2026-01-0{i}" for i in range(1, 8)]
    split = split_days(days, valid_days=1, test_days=2)
    assert split.test == ["2026-01-06", "2026-01-07"]
    assert split.valid == ["2026-01-05"]
    assert split.train == days[:4]
    with pytest.raises(ValueError, match="need more than 2 days"):
        split_days(days[:2])


@pytest.mark.parametrize(
    ("column", "values", "rule"),
    [
        ("watch_time", [-1.0, -2.0], "negative"),
        ("click", [np.nan, 3], "not 0 or 1"),
        ("duration", [0.0, -5.0], "<= 0"),
        ("watch_time", [np.nan, np.inf], "not finite"),
    ],
)
def test_bad_labels_name_file_column_count(
    tmp_path: Path, column: str, values: list, rule: str
) -> None:
    table = make_table(10)
    data = table[column].to_numpy().astype(np.float64)
    data[:2] = values
    if column == "watch_time":
        click = np.ones(10, dtype=np.int8)  # keep the rows clicked so only this rule fires
        table = with_column(table, "click", click)
    table = with_column(table, column, data)
    file = tmp_path / "log.parquet"
    pq.write_table(table, file)
    with pytest.raises(DataError) as info:
        read_log(file, load_default_spec())
    message = str(info.value)
    assert str(file) in message and repr(column) in message and "(2 bad rows)" in message
    assert rule in message

    log = read_log(file, load_default_spec(), drop_invalid=True)
    assert log.rows == 8
    assert sum(log.dropped.values()) == 2
    assert any(column in reason for reason in log.dropped)


def test_overlapping_bad_rows_are_counted_once(tmp_path: Path) -> None:
    table = make_table(10)
    click = np.ones(10, dtype=np.int8)
    watch = np.full(10, 5.0)
    watch[0] = -1.0
    duration = np.full(10, 10.0)
    duration[0] = 0.0  # same row breaks two rules
    duration[1] = 0.0
    for name, values in (("click", click), ("watch_time", watch), ("duration", duration)):
        table = with_column(table, name, values)
    pq.write_table(table, tmp_path / "log.parquet")
    log = read_log(tmp_path, load_default_spec(), drop_invalid=True)
    assert log.rows == 8
    assert sum(log.dropped.values()) == 2


def test_missing_column_and_unparsable_file(tmp_path: Path) -> None:
    pq.write_table(make_table(5).drop_columns(["device"]), tmp_path / "a.parquet")
    with pytest.raises(DataError, match=r"a\.parquet: column 'device': missing column"):
        read_log(tmp_path, load_default_spec())
    broken = tmp_path / "b" / "broken.parquet"
    broken.parent.mkdir()
    broken.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match=r"broken\.parquet: cannot parse"):
        read_log(broken, load_default_spec())
    with pytest.raises(DataError, match="no such file"):
        read_log(tmp_path / "nope", load_default_spec())


def test_csv_logs_with_text_tags(tmp_path: Path) -> None:
    table = make_table(12)
    tags = [",".join(str(t) for t in row) for row in table["tags"].to_pylist()]
    table = with_column(table, "tags", tags)
    pacsv.write_csv(table, tmp_path / "log.csv")
    parquet_version = make_table(12)
    encoder = FeatureEncoder(load_default_spec())
    from_csv = encode_log(read_log(tmp_path / "log.csv", encoder.spec), encoder)
    pq.write_table(parquet_version, tmp_path / "log.parquet")
    from_parquet = encode_log(read_log(tmp_path / "log.parquet", encoder.spec), encoder)
    for name, array in from_parquet.inputs.items():
        # CSV holds float32 durations as text: equal to float32 precision, not bit for bit
        np.testing.assert_allclose(from_csv.inputs[name], array, rtol=1e-6, err_msg=name)


def test_encoded_batches_cover_every_row_once(tmp_path: Path) -> None:
    encoder = FeatureEncoder(load_default_spec())
    data = encode_log(read_log(write_days(tmp_path), encoder.spec), encoder)
    assert data.inputs["user_cat"].flags.c_contiguous
    seen = np.concatenate([b.labels["watch_time"] for b in data.shuffled_batches(16, seed=1)])
    assert len(seen) == data.rows
    np.testing.assert_allclose(np.sort(seen), np.sort(data.labels["watch_time"]))
    first = next(data.shuffled_batches(16, seed=1)).request_id
    assert (first == next(data.shuffled_batches(16, seed=1)).request_id).all()
    assert not (first == next(data.shuffled_batches(16, seed=2)).request_id).all()


def test_streaming_equals_in_memory(tmp_path: Path) -> None:
    encoder = FeatureEncoder(load_default_spec())
    root = write_days(tmp_path)
    whole = encode_log(read_log(root, encoder.spec), encoder)
    chunks = list(iter_encoded(root, encoder, batch_rows=7))
    assert len(chunks) > 3
    for name, array in whole.inputs.items():
        np.testing.assert_array_equal(np.concatenate([c.inputs[name] for c in chunks]), array)
