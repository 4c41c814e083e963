"""Import the public KuaiRand dataset (Pure, 1K or 27K) as an impression log.

Input: a directory (or its `data/` folder) with KuaiRand's own files, any version suffix:
`log_standard_*.csv`, `log_random_*.csv`, `user_features*.csv`, `video_features_basic*.csv`.
Output: `OUT/day=YYYY-MM-DD/part-NNNNN.parquet` in the impression-log contract of DESIGN.md, and
`OUT/feature_spec.yaml` naming the imported features, each categorical one sized to the values the
import saw (`ranker.table_sizing`: collision-free for low cardinality, 8x headroom for ids; the reason
per feature is in the spec's `extra.bucket_sizing`). Logs are streamed in chunks; the output does not
depend on the chunking.

Rules:
- Request: the impressions of one user on one `date` whose `time_ms` fall into the same tumbling
  window of `request_window_ms` (aligned at the epoch). `request_id` is a 63-bit hash of
  (user_id, date, time_ms // request_window_ms), so a request never spans two day partitions
  (and, for windows that divide a day, never two UTC days either).
  Random and standard impressions of one window share a request: the random videos were inserted
  into the standard feed.
- Labels: click = is_click; watch_time = play_time_ms / 1000 when clicked and 0 otherwise (the
  contract); non-clicks with play time are counted in `notes["watch_time_zeroed_no_click"]` and the
  raw play time stays in `play_time`. duration = duration_ms / 1000, or the video's
  `video_duration` when the log has none (counted in `notes["duration_from_video_features"]`).
- Invalid rows (the checks in `ROW_CHECKS`) raise a DataError naming the file, the column and the
  number of bad rows in the whole file; with `drop_invalid` they are dropped and counted per reason
  in `ImportReport.dropped`, each row under its first failing check.
- Feature values that are missing or unparsable become nulls, so the spec's default applies, and
  are counted in `notes`; so are log rows whose user or video has no features (they are kept).
- `is_rand` is written as a column, not a feature: serving never knows it.
- Partitions follow KuaiRand's `date`, a Beijing (UTC+8) date; rows whose `date` is not the
  Beijing date of `time_ms` are counted in `notes["date_differs_from_time_ms"]`.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv
import pyarrow.parquet as pq

from ranker.progress import progress_bar
from ranker.schema import Feature, FeatureSpec, Side
from ranker.table_sizing import CardinalityCounter, Sizing
from training.errors import DataError

SPEC_FILE = "feature_spec.yaml"

LOG_REQUIRED = (
    "user_id",
    "video_id",
    "date",
    "hourmin",
    "time_ms",
    "is_click",
    "play_time_ms",
    "tab",
)
SIGNALS = (
    "is_like",
    "is_follow",
    "is_comment",
    "is_forward",
    "is_hate",
    "long_view",
    "is_profile_enter",
)
LOG_COLUMNS = (*LOG_REQUIRED, "duration_ms", "is_rand", *SIGNALS)

USER_STR = (
    "user_active_degree",
    "follow_user_num_range",
    "fans_user_num_range",
    "friend_user_num_range",
    "register_days_range",
)
USER_FLAGS = ("is_lowactive_period", "is_live_streamer", "is_video_author")
# Cardinalities of onehot_feat0..17 as documented for KuaiRand.
ONEHOT_SIZES = (2, 7, 50, 1471, 15, 34, 3, 118, 454, 7, 5, 5, 2, 2, 2, 2, 2, 2)
USER_ONEHOT = tuple(f"onehot_feat{i}" for i in range(len(ONEHOT_SIZES)))
USER_COUNTS = ("follow_user_num", "fans_user_num", "friend_user_num", "register_days")
USER_COLUMNS = ("user_id", *USER_STR, *USER_FLAGS, *USER_ONEHOT, *USER_COUNTS)

VIDEO_COLUMNS = (
    "video_id",
    "author_id",
    "video_type",
    "upload_dt",
    "upload_type",
    "video_duration",
    "music_id",
    "music_type",
    "tag",
)

# Row checks in the order they apply: (reason, column, what is wrong).
ROW_CHECKS: tuple[tuple[str, str | None, str], ...] = (
    ("bad_user_id", "user_id", "is missing or not an integer"),
    ("bad_video_id", "video_id", "is missing or not an integer"),
    ("bad_time_ms", "time_ms", "is missing or not an integer"),
    ("bad_date", "date", "is missing or not a YYYYMMDD date"),
    ("bad_is_click", "is_click", "is missing or not 0/1"),
    ("bad_play_time_ms", "play_time_ms", "is missing or not a number"),
    ("negative_play_time_ms", "play_time_ms", "is negative"),
    ("bad_duration", "duration_ms", "is <= 0 or not a number, or missing with no video_duration"),
    ("malformed_row", None, "has the wrong number of fields"),
)

_USER_FIELDS = [
    *[pa.field(c, pa.string()) for c in USER_STR],
    *[pa.field(c, pa.int8()) for c in USER_FLAGS],
    *[pa.field(c, pa.int32()) for c in USER_ONEHOT],
    *[pa.field(c, pa.float32()) for c in USER_COUNTS],
]
_VIDEO_FIELDS = [
    pa.field("author_id", pa.int64()),
    pa.field("video_type", pa.string()),
    pa.field("upload_type", pa.string()),
    pa.field("music_id", pa.int64()),
    pa.field("music_type", pa.int32()),
    pa.field("tag", pa.list_(pa.int64())),
]
OUTPUT_SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.int64(), nullable=False),
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("ts", pa.int64(), nullable=False),
        pa.field("click", pa.int8(), nullable=False),
        pa.field("watch_time", pa.float32(), nullable=False),
        pa.field("duration", pa.float32(), nullable=False),
        pa.field("play_time", pa.float32(), nullable=False),
        pa.field("hour", pa.int8()),
        pa.field("tab", pa.int32()),
        pa.field("is_rand", pa.int8()),
        *_USER_FIELDS,
        *_VIDEO_FIELDS,
        pa.field("upload_age_days", pa.float32()),
        *[pa.field(c, pa.int8()) for c in SIGNALS],
    ]
)
_USER_SCHEMA = pa.schema([pa.field("user_id", pa.int64()), *_USER_FIELDS])
_VIDEO_SCHEMA = pa.schema(
    [
        pa.field("video_id", pa.int64()),
        *_VIDEO_FIELDS,
        pa.field("upload_day", pa.int32()),  # days since 1970-01-01
        pa.field("video_duration", pa.float64()),  # seconds
    ]
)

_NUMBER = r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$"
_EPOCH = date(1970, 1, 1).toordinal()
_DAY_MS = 86_400_000
_BEIJING_OFFSET_MS = 8 * 3_600_000
_CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.zst")  # pyarrow decompresses by suffix
_BYTES_PER_ROW = 160  # a KuaiRand log row is ~110 bytes; sizes CSV blocks from chunk_rows


@dataclass(frozen=True)
class ImportReport:
    """What an import read, wrote and dropped."""

    rows_in: int  # data rows in the logs, malformed ones included
    rows_out: int
    dropped: dict[str, int]  # reason (see ROW_CHECKS) -> rows dropped
    requests: int
    days: list[str]
    files: list[Path]  # Parquet part files written
    spec_path: Path
    # Rows kept but changed or defaulted, and feature-table problems: name -> count.
    notes: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        """Human-readable lines for the CLI."""
        lines = [
            f"rows in: {self.rows_in}, rows out: {self.rows_out}, requests: {self.requests}",
            f"days: {self.days[0]} .. {self.days[-1]} ({len(self.days)})"
            if self.days
            else "days: none",
            f"files: {len(self.files)} Parquet parts, feature spec {self.spec_path}",
        ]
        lines += [f"dropped {reason}: {n}" for reason, n in self.dropped.items()]
        lines += [f"note {name}: {n} ({explain_note(name)})" for name, n in self.notes.items()]
        return "\n".join(lines)


# What each note counts; the rows are kept (see the module docstring).
NOTE_MEANINGS = {
    "watch_time_zeroed_no_click": "rows not clicked but with play time: watch_time written as 0, "
    "the raw play time kept in `play_time`",
    "duration_from_video_features": "rows without duration_ms: duration taken from the video's "
    "video_duration",
    "user_features_missing": "rows whose user_id has no row in user_features: user features take "
    "the spec's defaults",
    "video_features_missing": "rows whose video_id has no row in video_features_basic: item "
    "features take the spec's defaults",
    "date_differs_from_time_ms": "rows whose KuaiRand `date` is not the Beijing (UTC+8) date of "
    "their time_ms: kept in their `date` partition with ts = time_ms unchanged, so their ts falls "
    "on another day than the partition (day splits in training follow ts)",
}


def explain_note(name: str) -> str:
    """What an import note counts, in words."""
    if name in NOTE_MEANINGS:
        return NOTE_MEANINGS[name]
    if name.startswith("missing_"):
        return f"rows with no {name.removeprefix('missing_')} value: written as null"
    for stem in ("user_features", "video_features_basic"):
        kind = name.removeprefix(f"{stem}_")
        if kind == name:
            continue
        return {
            "malformed_rows": f"lines of {stem} with the wrong number of fields, skipped",
            "duplicate_ids": f"ids listed more than once in {stem}: the first row is used",
            "invalid_values": f"unparsable values in {stem}: written as null (spec default)",
            "invalid_ids": f"rows of {stem} with a missing or non-integer id, skipped",
        }.get(kind, "see training/kuairand.py")
    return "see training/kuairand.py"


def kuairand_spec(
    request_window_ms: int = 60_000, sizing: Mapping[str, Sizing] | None = None
) -> FeatureSpec:
    """The feature spec of an imported KuaiRand log. With `sizing` (what the import observed,
    `ranker.table_sizing`) each categorical feature gets its sized bucket count and the reason is
    kept in `extra.bucket_sizing`; without, the fixed sizes below (made for KuaiRand-27K)."""
    cat: list[tuple[str, Side, int]] = [
        ("user_id", "user", 1 << 17),  # 27,285 users
        *[(c, "user", 8) for c in ("user_active_degree", *USER_FLAGS)],
        *[(c, "user", 16) for c in USER_STR[1:]],
        *[(c, "user", _buckets(n)) for c, n in zip(USER_ONEHOT, ONEHOT_SIZES, strict=True)],
        ("hour", "context", 64),
        ("tab", "context", 32),  # 15 tabs
        ("item_id", "item", 1 << 20),  # 32M videos, ~1M of them shown often
        ("author_id", "item", 1 << 19),
        ("video_type", "item", 8),
        ("upload_type", "item", 128),  # ~40 upload types
        ("music_id", "item", 1 << 18),
        ("music_type", "item", 32),
    ]
    sizing = dict(sizing or {})
    features = [
        Feature(name, side, "categorical", buckets=sizing[name].buckets if name in sizing else b)
        for name, side, b in cat
    ]
    tag_buckets = sizing["tag"].buckets if "tag" in sizing else 256
    features.append(Feature("tag", "item", "multi_categorical", buckets=tag_buckets, max_len=4))
    features += [Feature(c, "user", "dense", transform="log1p", default=0.0) for c in USER_COUNTS]
    features.append(Feature("duration", "item", "dense", transform="log1p", default=30.0))
    features.append(Feature("upload_age_days", "item", "dense", transform="log1p", default=0.0))
    extra = {
        "source": "KuaiRand",
        "request_window_ms": request_window_ms,
        "extra_columns": ["play_time", "is_rand", *SIGNALS],
    }
    if sizing:
        extra["bucket_sizing"] = {name: sizing[name].reason for name in sorted(sizing)}
    return FeatureSpec(features=tuple(features), name="kuairand", extra=extra)


def import_kuairand(
    src: Path,
    out_dir: Path,
    *,
    drop_invalid: bool = False,
    chunk_rows: int = 1_000_000,
    progress: bool = False,
    request_window_ms: int = 60_000,
    rows_per_part: int = 10_000_000,
    block_size: int | None = None,
) -> ImportReport:
    """Convert the KuaiRand CSVs in `src` to a day-partitioned impression log in `out_dir`.

    `chunk_rows` bounds the rows processed at once; `block_size` (bytes per CSV read) defaults to
    a size that holds about `chunk_rows` rows. A failed import removes the part files it wrote.
    """
    if min(chunk_rows, request_window_ms, rows_per_part) < 1:
        raise ValueError("chunk_rows, request_window_ms and rows_per_part must be >= 1")
    src, out_dir = Path(src), Path(out_dir)
    if not src.is_dir():
        raise DataError(str(src), "not a directory")
    data = src if any(_logs(src)) or not (src / "data").is_dir() else src / "data"
    logs = _logs(data)
    if not logs:
        raise DataError(str(data), "no KuaiRand logs (log_standard_*.csv, log_random_*.csv) found")
    if out_dir.exists() and (any(out_dir.glob("day=*")) or (out_dir / SPEC_FILE).exists()):
        raise DataError(str(out_dir), "already holds an imported log; choose an empty directory")

    reader = _Reader(
        block_size or min(max(chunk_rows * _BYTES_PER_ROW, 1 << 16), 1 << 30), chunk_rows, progress
    )
    notes: Counter[str] = Counter()
    users = _load_features("user_features", data, reader, notes)
    videos = _load_features("video_features_basic", data, reader, notes)
    writers = _DayWriters(out_dir, rows_per_part)
    job = _Import(users, videos, writers, reader, request_window_ms, drop_invalid, notes)
    try:
        for path in logs:
            job.run_file(path)
        writers.close()
    except BaseException:
        writers.abort()
        raise

    spec_path = out_dir / SPEC_FILE
    out_dir.mkdir(parents=True, exist_ok=True)
    kuairand_spec(request_window_ms, job.cardinality.sizing()).save(spec_path)
    files = sorted(writers.files)
    return ImportReport(
        rows_in=job.rows_in,
        rows_out=job.rows_out,
        dropped={r: job.dropped[r] for r, _, _ in ROW_CHECKS if job.dropped[r]},
        requests=_count_requests(files),
        days=sorted({p.parent.name.removeprefix("day=") for p in files}),
        files=files,
        spec_path=spec_path,
        notes=dict(sorted((+notes).items())),
    )


def request_ids(
    user_id: np.ndarray, day: np.ndarray, time_ms: np.ndarray, window_ms: int
) -> np.ndarray:
    """Non-negative int64 hash of (user_id, day, time_ms // window_ms): the request key."""
    window = np.floor_divide(time_ms, window_ms)
    h = _mix(
        _mix(_mix(user_id.astype(np.uint64)) + day.astype(np.uint64)) + window.astype(np.uint64)
    )
    return (h >> np.uint64(1)).astype(np.int64)


# --- one log file -------------------------------------------------------------------------------


@dataclass
class _Features:
    """A feature table (one row per id, first occurrence wins) and its id index."""

    table: pa.Table
    index: _IdIndex


class _Import:
    """State of one import: feature tables, writers and counters."""

    def __init__(
        self,
        users: _Features,
        videos: _Features,
        writers: _DayWriters,
        reader: _Reader,
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
        self.video_seconds = _floats(video_table.column("video_duration"))
        self.upload_day = _floats(video_table.column("upload_day"))
        self.video_out = video_table.select([f.name for f in _VIDEO_FIELDS])
        self.user_out = users.table.select([f.name for f in _USER_FIELDS])

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
        col = _columns(batch)
        user_id, user_ok = _parse_int(col("user_id"))
        video_id, video_ok = _parse_int(col("video_id"))
        ts, ts_ok = _parse_int(col("time_ms"))
        day, day_ok = _date_days(*_parse_int(col("date")))
        click = _parse_float(col("is_click"))
        play_ms = _parse_float(col("play_time_ms"))
        vpos = self.videos.index.lookup(np.where(video_ok, video_id, -1))
        fallback = ~_valid(col("duration_ms")) & (vpos >= 0)
        duration = _parse_float(col("duration_ms")) / 1000.0
        duration = np.where(fallback, _gather(self.video_seconds, vpos), duration)
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
        keep = np.ones(batch.num_rows, dtype=bool)
        for (reason, _, _), mask in zip(ROW_CHECKS, failing, strict=False):  # not malformed_row
            hit = int(np.count_nonzero(mask & keep))
            if hit:
                bad[reason] += hit
                keep &= ~mask
        if bad and not self.drop_invalid:
            return None

        user_id, video_id, ts, day = user_id[keep], video_id[keep], ts[keep], day[keep]
        clicked = click[keep].astype(np.int8)
        play = play_ms[keep] / 1000.0
        upos, vpos = self.users.index.lookup(user_id), vpos[keep]
        hourmin, hourmin_ok = _parse_int(col("hourmin"))
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
            "duration": pa.array(duration[keep].astype(np.float32)),
            "play_time": pa.array(play.astype(np.float32)),
            "hour": _ints(hourmin // 100, hourmin_ok, np.int8, keep),
            "tab": _ints(*_parse_int(col("tab")), np.int32, keep),
            "is_rand": _ints(*_parse_int(is_rand), np.int8, keep),
        }
        users = self.user_out.take(_positions(upos))
        videos = self.video_out.take(_positions(vpos))
        columns.update({name: users.column(name) for name in users.column_names})
        columns.update({name: videos.column(name) for name in videos.column_names})
        age = np.maximum(day - _gather(self.upload_day, vpos), 0.0)
        columns["upload_age_days"] = pa.array(age.astype(np.float32), from_pandas=True)
        for name in SIGNALS:
            columns[name] = _ints(*_parse_int(col(name)), np.int8, keep)

        notes = self.notes
        notes["watch_time_zeroed_no_click"] += int(np.count_nonzero((clicked == 0) & (play > 0)))
        notes["duration_from_video_features"] += int(np.count_nonzero(fallback[keep]))
        notes["user_features_missing"] += int(np.count_nonzero(upos < 0))
        notes["video_features_missing"] += int(np.count_nonzero(vpos < 0))
        beijing_day = (ts + _BEIJING_OFFSET_MS) // _DAY_MS  # KuaiRand's dates are Beijing dates
        notes["date_differs_from_time_ms"] += int(np.count_nonzero(beijing_day != day))
        for name in ("hour", "tab", "is_rand", *SIGNALS):
            notes[f"missing_{name}"] += columns[name].null_count
        return pa.Table.from_pydict(columns, schema=OUTPUT_SCHEMA), day


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


# --- reading --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Reader:
    """Streams CSV files as chunks of string columns (the parsing into numbers is ours)."""

    block_size: int
    chunk_rows: int
    progress: bool

    def batches(
        self,
        path: Path,
        wanted: Sequence[str],
        required: Sequence[str],
        counts: Counter[str],
        malformed: str,
    ) -> Iterator[pa.RecordBatch]:
        """Chunks of `path`'s columns in `wanted`; rows with a wrong field count go to
        `counts[malformed]`. Raises DataError now when a `required` column is missing."""
        header = _read_header(path)
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError(
                str(path),
                f"missing required column (the header has {len(header)})",
                column=missing[0],
            )
        names = [c for c in wanted if c in header]
        return self._stream(path, names, counts, malformed)

    def _stream(
        self, path: Path, names: list[str], counts: Counter[str], malformed: str
    ) -> Iterator[pa.RecordBatch]:
        def skip(_row: object) -> str:
            counts[malformed] += 1
            return "skip"

        convert = pv.ConvertOptions(
            column_types={c: pa.string() for c in names},
            include_columns=names,
            strings_can_be_null=True,
        )
        try:
            reader = pv.open_csv(
                str(path),
                read_options=pv.ReadOptions(block_size=self.block_size),
                parse_options=pv.ParseOptions(invalid_row_handler=skip),
                convert_options=convert,
            )
            with progress_bar(desc=path.name, unit=" rows", enabled=self.progress) as bar:
                for batch in reader:
                    for start in range(0, batch.num_rows, self.chunk_rows):
                        chunk = batch.slice(start, self.chunk_rows)
                        bar.update(chunk.num_rows)
                        yield chunk
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(str(path), f"cannot parse CSV: {exc}") from None


def _read_header(path: Path) -> list[str]:
    try:
        with pa.input_stream(str(path), compression="detect") as stream:
            head = stream.read(1 << 16)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(str(path), f"cannot read: {exc}") from None
    line = head.split(b"\n", 1)[0].rstrip(b"\r")
    if not line.strip():
        raise DataError(str(path), "cannot parse CSV: no header line")
    try:
        return next(csv.reader([line.decode("utf-8-sig")]))
    except UnicodeDecodeError:
        raise DataError(str(path), "cannot parse CSV: the header is not UTF-8 text") from None


def _csv_files(folder: Path, prefix: str) -> list[Path]:
    return sorted(p for p in folder.glob(f"{prefix}*") if p.name.endswith(_CSV_SUFFIXES))


def _logs(folder: Path) -> list[Path]:
    return sorted([*_csv_files(folder, "log_standard_"), *_csv_files(folder, "log_random_")])


def _tables(folder: Path, stem: str) -> list[Path]:
    paths = _csv_files(folder, stem)
    if not paths:
        raise DataError(str(folder), f"no {stem}*.csv found")
    return paths


def _columns(batch: pa.RecordBatch) -> Callable[[str], pa.Array]:
    """Column getter that gives an all-null column for a column the file lacks."""
    names = set(batch.schema.names)

    def get(name: str) -> pa.Array:
        return batch.column(name) if name in names else pa.nulls(batch.num_rows, pa.string())

    return get


# --- feature tables ------------------------------------------------------------------------------


class _IdIndex:
    """Maps ids to row positions (-1 when absent): a direct-address table for dense ids (KuaiRand
    re-indexes its ids from 0), binary search otherwise. The first row of a repeated id wins."""

    def __init__(self, ids: np.ndarray) -> None:
        self.ids, self.first = np.unique(ids, return_index=True)
        self.duplicates = len(ids) - len(self.ids)
        self.table: np.ndarray | None = None
        if len(self.ids) and self.ids[0] >= 0 and self.ids[-1] < 4 * len(self.ids) + (1 << 20):
            self.table = np.full(int(self.ids[-1]) + 1, -1, dtype=np.int64)
            self.table[self.ids] = self.first

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        out = np.full(len(keys), -1, dtype=np.int64)
        if self.table is not None:
            inside = (keys >= 0) & (keys < len(self.table))
            out[inside] = self.table[keys[inside]]
        elif len(self.ids):
            at = np.minimum(np.searchsorted(self.ids, keys), len(self.ids) - 1)
            hit = self.ids[at] == keys
            out[hit] = self.first[at[hit]]
        return out


def _load_features(stem: str, folder: Path, reader: _Reader, notes: Counter[str]) -> _Features:
    """Read a feature table fully (compacted chunk by chunk) and index it by its id column."""
    columns, schema, convert = (
        (USER_COLUMNS, _USER_SCHEMA, _user_block)
        if stem == "user_features"
        else (VIDEO_COLUMNS, _VIDEO_SCHEMA, _video_block)
    )
    blocks = [
        convert(batch, notes, stem)
        for path in _tables(folder, stem)
        for batch in reader.batches(path, columns, columns, notes, f"{stem}_malformed_rows")
    ]
    table = pa.Table.from_batches(blocks, schema=schema).combine_chunks()
    index = _IdIndex(table.column(0).to_numpy())
    if index.duplicates:
        notes[f"{stem}_duplicate_ids"] += index.duplicates
    return _Features(table.drop_columns(schema.names[0]), index)


def _user_block(batch: pa.RecordBatch, notes: Counter[str], stem: str) -> pa.RecordBatch:
    ids, ok = _parse_int(batch.column("user_id"))
    arrays = [pa.array(ids), *[batch.column(c) for c in USER_STR]]
    arrays += [_ints(*_parse_int(batch.column(c)), np.int8) for c in USER_FLAGS]
    arrays += [_ints(*_parse_int(batch.column(c)), np.int32) for c in USER_ONEHOT]
    arrays += [
        pa.array(_parse_float(batch.column(c)).astype(np.float32), from_pandas=True)
        for c in USER_COUNTS
    ]
    return _finish_block(batch, arrays, ok, _USER_SCHEMA, notes, stem)


def _video_block(batch: pa.RecordBatch, notes: Counter[str], stem: str) -> pa.RecordBatch:
    ids, ok = _parse_int(batch.column("video_id"))
    seconds = _parse_float(batch.column("video_duration")) / 1000.0
    seconds[~(seconds > 0)] = np.nan
    tags, bad_tags = _parse_tags(batch.column("tag"))
    notes[f"{stem}_invalid_values"] += bad_tags
    upload = pc.utf8_slice_codeunits(batch.column("upload_dt"), 0, 10)
    upload = pc.strptime(upload, format="%Y-%m-%d", unit="s", error_is_null=True)
    arrays = [
        pa.array(ids),
        _ints(*_parse_int(batch.column("author_id")), np.int64),
        batch.column("video_type"),
        batch.column("upload_type"),
        _ints(*_parse_int(batch.column("music_id")), np.int64),
        _ints(*_parse_int(batch.column("music_type")), np.int32),
        tags,
        upload.cast(pa.date32()).cast(pa.int32()),
        pa.array(seconds, from_pandas=True),
    ]
    return _finish_block(batch, arrays, ok, _VIDEO_SCHEMA, notes, stem)


def _finish_block(
    batch: pa.RecordBatch,
    arrays: list[pa.Array],
    ok: np.ndarray,
    schema: pa.Schema,
    notes: Counter[str],
    stem: str,
) -> pa.RecordBatch:
    """Keep rows with a valid id; count values that were present but unusable."""
    block = pa.RecordBatch.from_arrays(arrays, schema=schema)
    source = {"upload_day": "upload_dt", "video_duration": "video_duration"}
    for name in schema.names[1:]:
        raw = batch.column(source.get(name, name))
        if name != "tag":
            notes[f"{stem}_invalid_values"] += block.column(name).null_count - raw.null_count
    notes[f"{stem}_invalid_ids"] += int(np.count_nonzero(~ok))
    return block.filter(pa.array(ok))


# --- writing --------------------------------------------------------------------------------------


class _DayWriters:
    """One open Parquet writer per day partition; a part file holds at most `rows_per_part` rows,
    so the files do not depend on how the input was chunked."""

    def __init__(self, root: Path, rows_per_part: int) -> None:
        self.root, self.rows_per_part = root, rows_per_part
        self.open: dict[str, tuple[pq.ParquetWriter, int]] = {}
        self.parts: Counter[str] = Counter()
        self.files: list[Path] = []

    def write(self, day: str, table: pa.Table) -> None:
        while table.num_rows:
            if day not in self.open:
                path = self.root / f"day={day}" / f"part-{self.parts[day]:05d}.parquet"
                path.parent.mkdir(parents=True, exist_ok=True)
                self.parts[day] += 1
                self.files.append(path)
                self.open[day] = (pq.ParquetWriter(path, OUTPUT_SCHEMA), 0)
            writer, rows = self.open[day]
            n = min(table.num_rows, self.rows_per_part - rows)
            writer.write_table(table.slice(0, n))
            table = table.slice(n)
            if rows + n >= self.rows_per_part:
                writer.close()
                del self.open[day]
            else:
                self.open[day] = (writer, rows + n)

    def close(self) -> None:
        for writer, _ in self.open.values():
            writer.close()
        self.open.clear()

    def abort(self) -> None:
        """Close and remove everything written."""
        self.close()
        for path in self.files:
            path.unlink(missing_ok=True)
            if path.parent.exists() and not any(path.parent.iterdir()):
                path.parent.rmdir()
        self.files.clear()


def _count_requests(files: list[Path]) -> int:
    """Distinct request ids, per day (a request never spans two days)."""
    by_day: dict[Path, list[Path]] = {}
    for path in files:
        by_day.setdefault(path.parent, []).append(path)
    total = 0
    for paths in by_day.values():
        tables = [pq.read_table(p, columns=["request_id"]) for p in paths]
        ids = pa.chunked_array([c for t in tables for c in t.column(0).chunks], pa.int64())
        total += pc.count_distinct(ids).as_py()
    return total


# --- vectorised parsing -----------------------------------------------------------------------------


def _valid(array: pa.Array) -> np.ndarray:
    return np.asarray(array.is_valid().to_numpy(zero_copy_only=False), dtype=bool)


def _parse_float(array: pa.Array) -> np.ndarray:
    """float64 values; NaN where missing or not a number."""
    try:
        values = pc.cast(array, pa.float64())
    except pa.ArrowInvalid:  # some text is not a number: null it, then cast
        text = pc.utf8_trim_whitespace(array)
        number = pc.match_substring_regex(text, _NUMBER)
        values = pc.cast(pc.if_else(number, text, pa.scalar(None, pa.string())), pa.float64())
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64)


def _parse_int(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """int64 values (0 where invalid) and validity; integral text such as "3.0" is accepted."""
    try:
        values = pc.cast(array, pa.int64())
        return values.fill_null(0).to_numpy(), _valid(values)
    except pa.ArrowInvalid:
        floats = _parse_float(array)
        ok = np.isfinite(floats) & (np.abs(floats) < 2.0**53)
        floats = np.where(ok, floats, 0.0)
        ok &= floats == np.trunc(floats)
        return np.where(ok, floats, 0.0).astype(np.int64), ok


def _ints(
    values: np.ndarray, ok: np.ndarray, dtype: type[np.integer], keep: np.ndarray | None = None
) -> pa.Array:
    """A nullable integer column; values outside `dtype` become null."""
    if keep is not None:
        values, ok = values[keep], ok[keep]
    info = np.iinfo(dtype)
    ok = ok & (values >= info.min) & (values <= info.max)
    return pa.array(np.where(ok, values, 0).astype(dtype), mask=~ok)


def _date_days(yyyymmdd: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
    return day.toordinal() - _EPOCH if 1970 <= day.year <= 2100 else -1


def _parse_tags(text: pa.Array) -> tuple[pa.Array, int]:
    """ "12,65" -> [12, 65]; empty or missing -> []. Also returns the count of unparsable tags."""
    lists = pc.split_pattern(text.fill_null(""), ",")
    flat = pc.utf8_trim_whitespace(pc.list_flatten(lists))
    present = np.asarray(pc.not_equal(flat, "").to_numpy(zero_copy_only=False), dtype=bool)
    parent = pc.list_parent_indices(lists).to_numpy()[present]
    values, ok = _parse_int(flat.filter(pa.array(present)))
    counts = np.bincount(parent[ok], minlength=len(text))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    tags = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values[ok], pa.int64()))
    return tags, int(np.count_nonzero(~ok))


def _floats(column: pa.ChunkedArray) -> np.ndarray:
    return np.asarray(column.cast(pa.float64()).to_numpy(), dtype=np.float64)


def _gather(values: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """values[positions] as float64, NaN where the position is -1."""
    if not len(values):
        return np.full(len(positions), np.nan)
    return np.where(positions >= 0, values[np.maximum(positions, 0)], np.nan)


def _positions(positions: np.ndarray) -> pa.Array:
    """Take indices; a null index gives a null row (the spec default applies)."""
    return pa.array(positions, mask=positions < 0)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a bijective, well-spread uint64 hash."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    out: np.ndarray = x ^ (x >> np.uint64(31))
    return out


def _buckets(cardinality: int) -> int:
    """A power of two at least twice the number of values."""
    return max(4, 1 << (2 * cardinality - 1).bit_length())
