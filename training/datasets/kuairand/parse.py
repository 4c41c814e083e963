"""KuaiRand's CSV strings into typed arrays: integers, floats, dates and tag lists, with a
validity mask each (a bad value becomes a null or a counted bad row, never a guess)."""

from __future__ import annotations

from datetime import date

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from training.datasets.kuairand.columns import EPOCH

NUMBER_PATTERN = r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$"


def is_valid(array: pa.Array) -> np.ndarray:
    return np.asarray(array.is_valid().to_numpy(zero_copy_only=False), dtype=bool)


def parse_float(array: pa.Array) -> np.ndarray:
    """float64 values; NaN where missing or not a number."""
    try:
        values = pc.cast(array, pa.float64())
    except pa.ArrowInvalid:  # some text is not a number: null it, then cast
        text = pc.utf8_trim_whitespace(array)
        number = pc.match_substring_regex(text, NUMBER_PATTERN)
        values = pc.cast(pc.if_else(number, text, pa.scalar(None, pa.string())), pa.float64())
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64)


def parse_int(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """int64 values (0 where invalid) and validity; integral text such as "3.0" is accepted."""
    try:
        values = pc.cast(array, pa.int64())
        return values.fill_null(0).to_numpy(), is_valid(values)
    except pa.ArrowInvalid:
        floats = parse_float(array)
        ok = np.isfinite(floats) & (np.abs(floats) < 2.0**53)
        floats = np.where(ok, floats, 0.0)
        ok &= floats == np.trunc(floats)
        return np.where(ok, floats, 0.0).astype(np.int64), ok


def to_int_array(
    values: np.ndarray, ok: np.ndarray, dtype: type[np.integer], keep: np.ndarray | None = None
) -> pa.Array:
    """A nullable integer column; values outside `dtype` become null."""
    if keep is not None:
        values, ok = values[keep], ok[keep]
    info = np.iinfo(dtype)
    ok = ok & (values >= info.min) & (values <= info.max)
    return pa.array(np.where(ok, values, 0).astype(dtype), mask=~ok)


def date_days(yyyymmdd: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """YYYYMMDD integers to days since 1970-01-01 (years 1970-2100), and validity."""
    if not ok.any():
        return np.zeros(len(ok), dtype=np.int64), ok
    low, high = int(yyyymmdd[ok].min()), int(yyyymmdd[ok].max())
    values = np.where(ok, yyyymmdd, low)
    if high - low < 1 << 16:  # a log spans few dates: a lookup table beats np.unique
        table = np.array([_one_date(v) for v in range(low, high + 1)], dtype=np.int64)
        days = table[values - low]
    else:
        unique, inverse = np.unique(values, return_inverse=True)
        days = np.array([_one_date(int(v)) for v in unique], dtype=np.int64)[inverse.reshape(-1)]
    return days, ok & (days >= 0)


def _one_date(value: int) -> int:
    try:
        day = date(value // 10000, value // 100 % 100, value % 100)
    except ValueError:
        return -1
    return day.toordinal() - EPOCH if 1970 <= day.year <= 2100 else -1


def parse_tags(text: pa.Array) -> tuple[pa.Array, int]:
    """ "12,65" -> [12, 65]; empty or missing -> []. Also returns the count of unparsable tags."""
    lists = pc.split_pattern(text.fill_null(""), ",")
    flat = pc.utf8_trim_whitespace(pc.list_flatten(lists))
    present = np.asarray(pc.not_equal(flat, "").to_numpy(zero_copy_only=False), dtype=bool)
    parent = pc.list_parent_indices(lists).to_numpy()[present]
    values, ok = parse_int(flat.filter(pa.array(present)))
    counts = np.bincount(parent[ok], minlength=len(text))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    tags = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values[ok], pa.int64()))
    return tags, int(np.count_nonzero(~ok))


def to_floats(column: pa.ChunkedArray) -> np.ndarray:
    return np.asarray(column.cast(pa.float64()).to_numpy(), dtype=np.float64)


def gather(values: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """values[positions] as float64, NaN where the position is -1."""
    if not len(values):
        return np.full(len(positions), np.nan)
    return np.where(positions >= 0, values[np.maximum(positions, 0)], np.nan)


def take_positions(positions: np.ndarray) -> pa.Array:
    """Take indices; a null index gives a null row (the spec default applies)."""
    return pa.array(positions, mask=positions < 0)
