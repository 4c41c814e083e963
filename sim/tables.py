"""What the offline simulator (sim/simulate.py) and the traffic driver (sim/traffic.py) both write:
the impression-log and oracle schemas, the tag-list column, and the atomic Parquet write."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

LOG_SCHEMA = pa.schema(
    [
        ("request_id", pa.int64()),
        ("user_id", pa.int64()),
        ("item_id", pa.int64()),
        ("ts", pa.int64()),
        ("user_active_degree", pa.string()),
        ("device", pa.string()),
        ("follower_bucket", pa.int64()),
        ("user_code_0", pa.int64()),
        ("user_code_1", pa.int64()),
        ("user_code_2", pa.int64()),
        ("hour", pa.int64()),
        ("tab", pa.int64()),
        ("author_id", pa.int64()),
        ("category", pa.int64()),
        ("tags", pa.list_(pa.int64())),
        ("duration", pa.float32()),
        ("upload_age_days", pa.float32()),
        ("click", pa.int8()),
        ("watch_time", pa.float32()),
    ]
)
ORACLE_SCHEMA = pa.schema(
    [(name, pa.float32()) for name in ("oracle_click", "oracle_watch_time", "oracle_completion")]
)


def tags_array(tags: np.ndarray) -> pa.ListArray:
    """List array from a -1 padded (n, MAX_TAGS) matrix (padding is always at the end)."""
    valid = tags >= 0
    offsets = np.zeros(len(tags) + 1, dtype=np.int32)
    np.cumsum(valid.sum(axis=1), out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(tags[valid]))


def write_parquet(table: pa.Table, path: Path) -> None:
    """Write atomically, so a reader never sees a half-written partition."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
