"""sim/tables.py: the tag-list column keeps each row's tags in order and drops only the padding;
the Parquet write leaves no temporary file behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sim.tables import LOG_SCHEMA, tags_array, write_parquet


def test_tags_array_drops_the_padding_and_keeps_the_order() -> None:
    padded = np.array([[3, 1, -1], [-1, -1, -1], [7, 8, 9]], dtype=np.int64)
    assert tags_array(padded).to_pylist() == [[3, 1], [], [7, 8, 9]]


def test_write_parquet_writes_the_table_and_no_temporary_file(tmp_path: Path) -> None:
    table = pa.table({"tags": tags_array(np.array([[5, -1]], dtype=np.int64))})
    path = tmp_path / "day=2024-01-01" / "part-0.parquet"
    write_parquet(table, path)
    assert pq.read_table(path).equals(table)
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    assert LOG_SCHEMA.field("tags").type == pa.list_(pa.int64())
