"""One chunk of a KuaiRand log -> rows of the impression-log contract: validated, labelled,
joined with the user and video features, grouped into requests."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from ranker.table_sizing import CardinalityCounter
from training.datasets.kuairand.columns import (
    BEIJING_OFFSET_MS,
    DAY_MS,
    LOG_COLUMNS,
    LOG_REQUIRED,
    OUTPUT_SCHEMA,
    ROW_CHECKS,
    SIGNALS,
    USER_FIELDS,
    VIDEO_FIELDS,
    kuairand_spec,
)
from training.datasets.kuairand.parse import (
    date_days,
    gather,
    is_valid,
    parse_float,
    parse_int,
    take_positions,
    to_floats,
    to_int_array,
)
from training.datasets.kuairand.read import CsvReader, FeatureTable, column_getter
from training.datasets.kuairand.write import DayWriters
from training.errors import DataError


def request_ids(
    user_id: np.ndarray, day: np.ndarray, time_ms: np.ndarray, window_ms: int
) -> np.ndarray:
    """Non-negative int64 hash of (user_id, day, time_ms // window_ms): the request key."""
    window = np.floor_divide(time_ms, window_ms)
    h = _mix(
        _mix(_mix(user_id.astype(np.uint64)) + day.astype(np.uint64)) + window.astype(np.uint64)
    )
    return (h >> np.uint64(1)).astype(np.int64)


class LogConverter:
    """State of one import: feature tables, writers and counters."""

    def __init__(
        self,
        users: FeatureTable,
        videos: FeatureTable,
        writers: DayWriters,
        reader: CsvReader,
        window_ms: int,
        drop_invalid: bool,
        notes: Counter[str],
    ) -> None:
        self.users, self.videos, self.writers, self.reader = users, videos, writers, reader
        self.window_ms, self.drop_invalid, self.notes = window_ms, drop_invalid, notes
        self.rows_in = self.rows_out = 0
        self.dropped: Counter[str] = Counter()
        spec = kuairand_spec(window_ms)
        self.cardinality = CardinalityCounter(
            {f.name: f for f in spec.features if f.kind != "dense"}
        )
        video_table = videos.table
        self.video_seconds = to_floats(video_table.column("video_duration"))
        self.upload_day = to_floats(video_table.column("upload_day"))
        self.video_out = video_table.select([f.name for f in VIDEO_FIELDS])
        self.user_out = users.table.select([f.name for f in USER_FIELDS])

    def run_file(self, path: Path) -> None:
        bad: Counter[str] = Counter()
        random_log = path.name.startswith("log_random")
        for batch in self.reader.batches(path, LOG_COLUMNS, LOG_REQUIRED, bad, "malformed_row"):
            self.rows_in += batch.num_rows
            converted = self._convert(batch, random_log, bad)
            if converted is None:
                continue  # the file has bad rows: only count the rest, for the error message
            table, days = converted
            if not len(days):
                continue
            if np.any(days[1:] < days[:-1]):  # one take, then a slice per day
                order = np.argsort(days, kind="stable")
                table, days = table.take(order), days[order]
            starts = np.flatnonzero(np.diff(days, prepend=-1))
            for start, end in zip(starts, [*starts[1:], len(days)], strict=True):
                day = str(np.datetime64(int(days[start]), "D"))
                self.writers.write(day, table.slice(start, end - start))
            self.rows_out += len(table)
            self.cardinality.add_table(table)
        self.rows_in += bad["malformed_row"]
        if bad and not self.drop_invalid:
            raise _invalid_rows(path, bad)
        self.dropped.update(bad)

    def _convert(
        self, batch: pa.RecordBatch, random_log: bool, bad: Counter[str]
    ) -> tuple[pa.Table, np.ndarray] | None:
        """Validate a chunk, counting bad rows into `bad`; its kept rows and their days, or None
        when the file has bad rows and they are not to be dropped."""
        col = column_getter(batch)
        checked = self._check(col, batch.num_rows, bad)
        if bad and not self.drop_invalid:
            return None
        return self._rows(col, batch, random_log, checked), checked.day[checked.keep]

    def _check(self, col: Callable[[str], pa.Array], rows: int, bad: Counter[str]) -> _Checked:
        """Parse the label and key columns; rows failing a check (ROW_CHECKS order) are counted
        in `bad` under their first failing check and left out of `keep`."""
        user_id, user_ok = parse_int(col("user_id"))
        video_id, video_ok = parse_int(col("video_id"))
        ts, ts_ok = parse_int(col("time_ms"))
        day, day_ok = date_days(*parse_int(col("date")))
        click = parse_float(col("is_click"))
        play_ms = parse_float(col("play_time_ms"))
        vpos = self.videos.index.lookup(np.where(video_ok, video_id, -1))
        fallback = ~is_valid(col("duration_ms")) & (vpos >= 0)
        duration = parse_float(col("duration_ms")) / 1000.0
        duration = np.where(fallback, gather(self.video_seconds, vpos), duration)
        failing = (
            ~user_ok,
            ~video_ok,
            ~ts_ok,
            ~day_ok,
            (click != 0) & (click != 1),
            ~np.isfinite(play_ms),
            play_ms < 0,
            ~(duration > 0) | ~np.isfinite(duration),
        )
        keep = np.ones(rows, dtype=bool)
        for (reason, _, _), mask in zip(ROW_CHECKS, failing, strict=False):  # not malformed_row
            hit = int(np.count_nonzero(mask & keep))
            if hit:
                bad[reason] += hit
                keep &= ~mask
        return _Checked(keep, user_id, video_id, ts, day, click, play_ms, vpos, fallback, duration)

    def _rows(
        self, col: Callable[[str], pa.Array], batch: pa.RecordBatch, random_log: bool, c: _Checked
    ) -> pa.Table:
        """The kept rows in the output schema, joined with the feature tables; notes counted."""
        keep = c.keep
        user_id, video_id, ts, day = c.user_id[keep], c.video_id[keep], c.ts[keep], c.day[keep]
        clicked = c.click[keep].astype(np.int8)
        play = c.play_ms[keep] / 1000.0
        upos, vpos = self.users.index.lookup(user_id), c.vpos[keep]
        hourmin, hourmin_ok = parse_int(col("hourmin"))
        hourmin_ok &= (hourmin >= 0) & (hourmin < 2400) & (hourmin % 100 < 60)
        is_rand = col("is_rand")
        if "is_rand" not in batch.schema.names:
            is_rand = pa.array(np.full(batch.num_rows, str(int(random_log))))
        columns: dict[str, pa.Array | pa.ChunkedArray] = {
            "request_id": pa.array(request_ids(user_id, day, ts, self.window_ms)),
            "user_id": pa.array(user_id),
            "item_id": pa.array(video_id),
            "ts": pa.array(ts),
            "click": pa.array(clicked),
            "watch_time": pa.array(np.where(clicked == 1, play, 0.0).astype(np.float32)),
            "duration": pa.array(c.duration[keep].astype(np.float32)),
            "play_time": pa.array(play.astype(np.float32)),
            "hour": to_int_array(hourmin // 100, hourmin_ok, np.int8, keep),
            "tab": to_int_array(*parse_int(col("tab")), np.int32, keep),
            "is_rand": to_int_array(*parse_int(is_rand), np.int8, keep),
        }
        users = self.user_out.take(take_positions(upos))
        videos = self.video_out.take(take_positions(vpos))
        columns.update({name: users.column(name) for name in users.column_names})
        columns.update({name: videos.column(name) for name in videos.column_names})
        age = np.maximum(day - gather(self.upload_day, vpos), 0.0)
        columns["upload_age_days"] = pa.array(age.astype(np.float32), from_pandas=True)
        for name in SIGNALS:
            columns[name] = to_int_array(*parse_int(col(name)), np.int8, keep)

        notes = self.notes
        notes["watch_time_zeroed_no_click"] += int(np.count_nonzero((clicked == 0) & (play > 0)))
        notes["duration_from_video_features"] += int(np.count_nonzero(c.fallback[keep]))
        notes["user_features_missing"] += int(np.count_nonzero(upos < 0))
        notes["video_features_missing"] += int(np.count_nonzero(vpos < 0))
        beijing_day = (ts + BEIJING_OFFSET_MS) // DAY_MS  # KuaiRand's dates are Beijing dates
        notes["date_differs_from_time_ms"] += int(np.count_nonzero(beijing_day != day))
        for name in ("hour", "tab", "is_rand", *SIGNALS):
            notes[f"missing_{name}"] += columns[name].null_count
        return pa.Table.from_pydict(columns, schema=OUTPUT_SCHEMA)


@dataclass(frozen=True)
class _Checked:
    """A chunk's parsed key and label columns (all rows) and which rows passed every check."""

    keep: np.ndarray
    user_id: np.ndarray
    video_id: np.ndarray
    ts: np.ndarray
    day: np.ndarray
    click: np.ndarray
    play_ms: np.ndarray
    vpos: np.ndarray  # row of the video in the video table, -1 when absent
    fallback: np.ndarray  # duration taken from the video table
    duration: np.ndarray


def _invalid_rows(path: Path, bad: Counter[str]) -> DataError:
    found = [(reason, column, what) for reason, column, what in ROW_CHECKS if bad[reason]]
    detail = "; ".join(f"{bad[r]} rows where {c or 'the row'} {w}" for r, c, w in found)
    column = found[0][1]
    count = sum(bad[r] for r, c, _ in found if c == column)
    return DataError(
        str(path),
        f"invalid rows ({detail}); pass drop_invalid (--drop-invalid) to drop and count them",
        column=column,
        bad_rows=count,
    )


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a bijective, well-spread uint64 hash."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    out: np.ndarray = x ^ (x >> np.uint64(31))
    return out
