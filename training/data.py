"""Impression-log loading: read columns once into contiguous arrays, validate, split by day, batch.

A log is a directory of Parquet files (partitioned by day or not), a single Parquet/CSV file, or a
list of those. Every file is validated on its own so an error names the file, the column and the
number of bad rows. `drop_invalid=True` drops such rows and counts them, per reason, instead.

Over 400 lines on purpose: reading, validating, splitting and batching the in-memory log are one
path whose steps hand the same contiguous arrays along (the streaming path is training/stream.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from ranker.features import FeatureEncoder
from ranker.schema import ID_COLUMNS, LABEL_COLUMNS, ORACLE_COLUMNS, FeatureSpec, SpecError
from ranker.tasks import labels_from_columns
from training.errors import DataError

MS_PER_DAY = 86_400_000
LOG_SUFFIXES = (".parquet", ".csv")
# The feature spec an importer writes next to the log it made (e.g. `ranker import-kuairand`).
LOG_SPEC_FILE = "feature_spec.yaml"
# Served position (0 = top), in logs built from served traffic (ranker build-log, simulate-traffic
# --log-dir): read when present, for position debiasing in training (never a model input).
POSITION_COLUMN = "position"
# Day partitions of a log directory: `day=YYYY-MM-DD/part-0.parquet`.
DAY_PARTITION = "day"
DAY_PARTITIONING = ds.partitioning(pa.schema([(DAY_PARTITION, pa.string())]), flavor="hive")


@dataclass
class ImpressionLog:
    """Validated impression rows as one Arrow table (columns contiguous after `combine_chunks`)."""

    table: pa.Table
    source: str
    # Rows dropped by `drop_invalid`, per reason ("file: column: rule" -> count).
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return self.table.num_rows

    @property
    def has_oracle(self) -> bool:
        return all(c in self.table.column_names for c in ORACLE_COLUMNS)

    def day_index(self) -> np.ndarray:
        """Day number (days since the epoch, UTC) of every row."""
        return self.table["ts"].to_numpy() // MS_PER_DAY

    def days(self) -> list[str]:
        """Distinct days present, ascending, as YYYY-MM-DD."""
        return [day_name(d) for d in np.unique(self.day_index())]

    def filter_days(self, days: Sequence[str]) -> ImpressionLog:
        wanted = np.array([day_number(d) for d in days], dtype=np.int64)
        mask = np.isin(self.day_index(), wanted)
        return ImpressionLog(self.table.filter(pa.array(mask)), self.source, dict(self.dropped))

    def column(self, name: str) -> np.ndarray:
        return self.table[name].to_numpy()


def day_name(day: int) -> str:
    return str(np.datetime64(int(day), "D"))


def day_number(name: str) -> int:
    try:
        return int(np.datetime64(name, "D").astype(np.int64))
    except ValueError:
        raise ValueError(f"not a date (YYYY-MM-DD): {name!r}") from None


def log_files(
    path: str | Path | Sequence[str | Path], days: Sequence[str] | None = None
) -> list[Path]:
    """The Parquet/CSV files of a log: a file, a directory (searched recursively) or a list.

    With `days`, day partitions (`day=YYYY-MM-DD` directories, as the simulator and build-log
    write them) outside those days are pruned by pyarrow.dataset's hive partitioning before any
    file is opened; files outside a day partition are kept (their rows are filtered after reading).
    """
    paths = [Path(path)] if isinstance(path, str | Path) else [Path(p) for p in path]
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix in LOG_SUFFIXES and f.is_file())
            if not found:
                raise DataError(str(p), "no .parquet or .csv files in this directory")
            files.extend(_in_days(found, p, days) if days is not None else found)
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(str(p), "no such file or directory")
    return files


def _in_days(files: Sequence[Path], base: Path, days: Sequence[str]) -> list[Path]:
    """The files whose hive partition (relative to `base`) may hold one of `days`."""
    keep: set[str] = set()
    wanted = pc.field(DAY_PARTITION).isin(pa.array(list(days), pa.string()))
    for suffix in LOG_SUFFIXES:  # one dataset per format: discovery never opens a file
        group = [str(f) for f in files if f.suffix == suffix]
        if group:
            dataset = ds.dataset(
                group,
                format=suffix.lstrip("."),
                partitioning=DAY_PARTITIONING,
                partition_base_dir=str(base),
                schema=pa.schema([(DAY_PARTITION, pa.string())]),
            )
            keep.update(fragment.path for fragment in dataset.get_fragments(filter=wanted))
    return [f for f in files if str(f) in keep]


def find_log_spec(paths: str | Path | Sequence[str | Path]) -> Path | None:
    """The feature_spec.yaml written next to a log: in a log directory or its parent, or beside a
    log file (or in its partition's parent). None when there is none; DataError when the paths
    carry different ones."""
    given = [Path(paths)] if isinstance(paths, str | Path) else [Path(p) for p in paths]
    found: set[Path] = set()
    for path in given:
        folder = path if path.is_dir() else path.parent
        for candidate in (folder / LOG_SPEC_FILE, folder.parent / LOG_SPEC_FILE):
            if candidate.is_file():
                found.add(candidate.resolve())
                break
    if len(found) > 1:
        raise DataError(
            str([str(p) for p in given]),
            f"the logs carry different feature specs {sorted(map(str, found))}; pass one "
            "(data.spec= for ranker train)",
        )
    return found.pop() if found else None


def _missing_column(file: Path, column: str, spec: FeatureSpec) -> DataError:
    hint = ""
    if spec.name == "simulator":
        hint = (
            " (read with the simulator's feature spec: no feature_spec.yaml next to the log; "
            "pass the log's own spec, data.spec=PATH for ranker train, --spec for others)"
        )
    return DataError(str(file), "missing column" + hint, column=column)


def read_table(
    file: Path, columns: Sequence[str] | None = None, dictionary: Sequence[str] = ()
) -> pa.Table:
    """One file as an Arrow table; unreadable files raise DataError naming the file.

    Text columns named in `dictionary` stay dictionary-encoded as Parquet stores them, so the
    encoder hashes each distinct value once without re-encoding millions of strings.
    """
    try:
        if file.suffix == ".csv":
            table = pacsv.read_csv(file)
            return (
                table.select([c for c in columns if c in table.column_names]) if columns else table
            )
        present = pq.read_schema(file).names
        wanted = [c for c in columns if c in present] if columns else None
        return pq.read_table(
            file, columns=wanted, partitioning=None, read_dictionary=list(dictionary) or None
        )
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
        raise DataError(str(file), f"cannot parse the file: {exc}") from None


def required_columns(spec: FeatureSpec) -> list[str]:
    """Columns a log must carry for this spec (ids, labels, features)."""
    names = [*ID_COLUMNS, *LABEL_COLUMNS]
    names += [n for n in spec.names if n not in names]
    return names


def categorical_columns(spec: FeatureSpec) -> list[str]:
    return [f.name for f in spec.features if f.kind == "categorical"]


def read_log(
    path: str | Path | Sequence[str | Path],
    spec: FeatureSpec,
    *,
    drop_invalid: bool = False,
    oracle: bool = True,
    days: Sequence[str] | None = None,
) -> ImpressionLog:
    """Read and validate a log for a feature spec; only the needed columns are read. With `days`,
    only those days' rows: other day partitions are never opened (`log_files`)."""
    files = log_files(path, days)
    if not files:
        raise DataError(str(path), f"no day partition holds the days {list(days or [])}")
    wanted = required_columns(spec) + (list(ORACLE_COLUMNS) if oracle else []) + [POSITION_COLUMN]
    tables: list[pa.Table] = []
    dropped: dict[str, int] = {}
    for file in files:
        table = read_table(file, wanted, categorical_columns(spec))
        missing = [c for c in required_columns(spec) if c not in table.column_names]
        if missing:
            raise _missing_column(file, missing[0], spec)
        table, file_dropped = validate_rows(table, str(file), drop_invalid=drop_invalid)
        dropped.update(file_dropped)
        tables.append(table)
    schemas = {tuple(t.column_names) for t in tables}
    if len(schemas) > 1:  # oracle columns present in some files only: keep the common part
        common = [c for c in tables[0].column_names if all(c in t.column_names for t in tables)]
        tables = [t.select(common) for t in tables]
    try:
        table = pa.concat_tables(tables, promote_options="permissive").combine_chunks()
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise DataError(str(path), f"files have incompatible column types: {exc}") from None
    log = ImpressionLog(table, str(path), dropped)
    return log.filter_days(days) if days is not None else log


# Row rules on labels and ids: (column, description, predicate that is True for a BAD row).
def _label_rules(table: pa.Table) -> list[tuple[str, str, np.ndarray]]:
    def floats(name: str) -> np.ndarray:
        column = table[name]
        if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
            try:
                column = pc.cast(column, pa.float64())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise DataError("", "expected numbers", column=name) from None
        return column.to_numpy(zero_copy_only=False).astype(np.float64)

    click = floats("click")
    watch = floats("watch_time")
    duration = floats("duration")
    ts = floats("ts")
    rules = [
        ("click", "not 0 or 1 (or missing)", ~np.isin(click, (0.0, 1.0))),
        ("watch_time", "missing or not finite", ~np.isfinite(watch)),
        ("watch_time", "negative", watch < 0),
        ("watch_time", "positive without a click", (click == 0) & (watch > 0)),
        ("duration", "missing, not finite or <= 0", ~(np.isfinite(duration) & (duration > 0))),
        ("ts", "missing or negative", ~(np.isfinite(ts) & (ts >= 0))),
    ]
    for name in ("request_id", "user_id", "item_id"):
        rules.append((name, "missing", table[name].is_null().to_numpy(zero_copy_only=False)))
    if POSITION_COLUMN in table.column_names:
        position = floats(POSITION_COLUMN)
        whole = np.isfinite(position) & (position >= 0) & (position == np.round(position))
        rules.append((POSITION_COLUMN, "missing, negative or not a whole number", ~whole))
    return rules


def validate_rows(
    table: pa.Table, file: str, *, drop_invalid: bool
) -> tuple[pa.Table, dict[str, int]]:
    """Check label and id rules; raise naming file/column/count, or drop and count the rows."""
    try:
        rules = _label_rules(table)
    except DataError as exc:
        raise DataError(file, "expected numbers", column=exc.column) from None
    bad_any = np.zeros(table.num_rows, dtype=bool)
    dropped: dict[str, int] = {}
    for column, rule, bad in rules:
        count = int(bad.sum())
        if count == 0:
            continue
        if not drop_invalid:
            raise DataError(file, rule, column=column, bad_rows=count)
        dropped[f"{file}: {column}: {rule}"] = int((bad & ~bad_any).sum())
        bad_any |= bad
    if bad_any.any():
        table = table.filter(pa.array(~bad_any))
    return table, dropped


@dataclass(frozen=True)
class DaySplit:
    """Which days train, validate and test; days are YYYY-MM-DD strings."""

    train: list[str]
    valid: list[str]
    test: list[str]


def split_days(days: Sequence[str], valid_days: int = 1, test_days: int = 1) -> DaySplit:
    """Time split: the last `test_days` test, the `valid_days` before them validate, the rest train."""
    days = sorted(days)
    if valid_days < 0 or test_days < 0:
        raise ValueError("valid_days and test_days must be >= 0")
    if len(days) <= valid_days + test_days:
        raise ValueError(
            f"need more than {valid_days + test_days} days to keep {valid_days} valid and "
            f"{test_days} test days, the log has {len(days)}: {days}"
        )
    cut_test = len(days) - test_days
    cut_valid = cut_test - valid_days
    return DaySplit(days[:cut_valid], days[cut_valid:cut_test], days[cut_test:])


@dataclass
class EncodedData:
    """Model inputs and labels of a log as contiguous numpy arrays, one row per impression."""

    inputs: dict[str, np.ndarray]
    # Task labels in natural units: click (0/1), watch_time (s), completion ([0, 1]).
    labels: dict[str, np.ndarray]
    request_id: np.ndarray
    user_id: np.ndarray
    # Ground-truth expectations when the log carries them (simulator `--oracle`).
    oracle: dict[str, np.ndarray] = field(default_factory=dict)
    # int64 served position (0 = top) when the log has a `position` column; training only.
    position: np.ndarray | None = None
    # int64 day number (ts // MS_PER_DAY) of each row: calibration under drift fits per day.
    day: np.ndarray | None = None

    @property
    def rows(self) -> int:
        return len(self.request_id)

    def take(self, index: np.ndarray) -> EncodedData:
        """Rows `index` (a permutation or subset), copied contiguously."""

        def pick(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            return {k: np.ascontiguousarray(v[index]) for k, v in arrays.items()}

        return EncodedData(
            pick(self.inputs),
            pick(self.labels),
            self.request_id[index],
            self.user_id[index],
            pick(self.oracle),
            None if self.position is None else self.position[index],
            None if self.day is None else self.day[index],
        )

    def slices(self, batch_size: int) -> Iterator[EncodedData]:
        """Consecutive batches as views (no copies)."""
        for start in range(0, self.rows, batch_size):
            part = slice(start, start + batch_size)
            yield EncodedData(
                {k: v[part] for k, v in self.inputs.items()},
                {k: v[part] for k, v in self.labels.items()},
                self.request_id[part],
                self.user_id[part],
                {k: v[part] for k, v in self.oracle.items()},
                None if self.position is None else self.position[part],
                None if self.day is None else self.day[part],
            )

    def shuffled_batches(self, batch_size: int, seed: int) -> Iterator[EncodedData]:
        """One epoch: permute all rows once (one gather per array), then slice batches."""
        order = np.random.default_rng(seed).permutation(self.rows)
        return self.take(order).slices(batch_size)


def encode_table(table: pa.Table, encoder: FeatureEncoder) -> EncodedData:
    """Encode an Arrow table of impressions (all features, labels, ids and oracle columns)."""
    columns = {name: table[name] for name in encoder.spec.names if name in table.column_names}
    try:
        inputs = encoder.encode(columns, table.num_rows)
    except SpecError as exc:
        raise DataError("log", str(exc)) from None
    labels = labels_from_columns(
        *(
            table[name].to_numpy(zero_copy_only=False)
            for name in ("click", "watch_time", "duration")
        )
    )
    oracle = {
        name: table[name].to_numpy(zero_copy_only=False).astype(np.float32)
        for name in ORACLE_COLUMNS
        if name in table.column_names
    }
    position = None
    if POSITION_COLUMN in table.column_names:
        position = table[POSITION_COLUMN].to_numpy(zero_copy_only=False).astype(np.int64)
    return EncodedData(
        inputs,
        labels,
        table["request_id"].to_numpy(zero_copy_only=False),
        table["user_id"].to_numpy(zero_copy_only=False),
        oracle,
        position,
        table["ts"].to_numpy(zero_copy_only=False).astype(np.int64) // MS_PER_DAY,
    )


def encode_log(log: ImpressionLog, encoder: FeatureEncoder) -> EncodedData:
    return encode_table(log.table, encoder)


def iter_encoded(
    path: str | Path | Sequence[str | Path],
    encoder: FeatureEncoder,
    *,
    batch_rows: int = 262_144,
    drop_invalid: bool = False,
) -> Iterator[EncodedData]:
    """Stream a log larger than memory: read Parquet row groups (or CSV blocks), validate, encode.

    Yields chunks of at most `batch_rows` rows in file order; shuffle within a buffer if needed.
    """
    wanted = required_columns(encoder.spec) + list(ORACLE_COLUMNS) + [POSITION_COLUMN]
    for file in log_files(path):
        for batch in _iter_file_batches(file, wanted, batch_rows):
            table = pa.Table.from_batches([batch])
            missing = [c for c in required_columns(encoder.spec) if c not in table.column_names]
            if missing:
                raise _missing_column(file, missing[0], encoder.spec)
            table, _ = validate_rows(table, str(file), drop_invalid=drop_invalid)
            if table.num_rows:
                yield encode_table(table, encoder)


def _iter_file_batches(
    file: Path, wanted: Sequence[str], batch_rows: int
) -> Iterator[pa.RecordBatch]:
    try:
        if file.suffix == ".csv":
            reader = pacsv.open_csv(file)
            for batch in reader:
                keep = [c for c in wanted if c in batch.schema.names]
                yield batch.select(keep)
            return
        parquet = pq.ParquetFile(file)
        keep = [c for c in wanted if c in parquet.schema_arrow.names]
        yield from parquet.iter_batches(batch_size=batch_rows, columns=keep)
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
        raise DataError(str(file), f"cannot parse the file: {exc}") from None
