"""Reading KuaiRand's CSV files in chunks, and its user and video feature tables indexed by id."""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv

from ranker.progress import progress_bar
from training.datasets.kuairand.columns import (
    USER_COLUMNS,
    USER_COUNTS,
    USER_FLAGS,
    USER_ONEHOT,
    USER_SCHEMA,
    USER_STR,
    VIDEO_COLUMNS,
    VIDEO_SCHEMA,
)
from training.datasets.kuairand.parse import parse_float, parse_int, parse_tags, to_int_array
from training.errors import DataError

CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.zst")  # pyarrow decompresses by suffix


@dataclass
class FeatureTable:
    """A feature table (one row per id, first occurrence wins) and its id index."""

    table: pa.Table
    index: IdIndex


@dataclass(frozen=True)
class CsvReader:
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
        header = read_header(path)
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


def read_header(path: Path) -> list[str]:
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


def csv_files(folder: Path, prefix: str) -> list[Path]:
    return sorted(p for p in folder.glob(f"{prefix}*") if p.name.endswith(CSV_SUFFIXES))


def log_files(folder: Path) -> list[Path]:
    return sorted([*csv_files(folder, "log_standard_"), *csv_files(folder, "log_random_")])


def table_files(folder: Path, stem: str) -> list[Path]:
    paths = csv_files(folder, stem)
    if not paths:
        raise DataError(str(folder), f"no {stem}*.csv found")
    return paths


def column_getter(batch: pa.RecordBatch) -> Callable[[str], pa.Array]:
    """Column getter that gives an all-null column for a column the file lacks."""
    names = set(batch.schema.names)

    def get(name: str) -> pa.Array:
        return batch.column(name) if name in names else pa.nulls(batch.num_rows, pa.string())

    return get


class IdIndex:
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


def load_features(stem: str, folder: Path, reader: CsvReader, notes: Counter[str]) -> FeatureTable:
    """Read a feature table fully (compacted chunk by chunk) and index it by its id column."""
    columns, schema, convert = (
        (USER_COLUMNS, USER_SCHEMA, _user_block)
        if stem == "user_features"
        else (VIDEO_COLUMNS, VIDEO_SCHEMA, _video_block)
    )
    blocks = [
        convert(batch, notes, stem)
        for path in table_files(folder, stem)
        for batch in reader.batches(path, columns, columns, notes, f"{stem}_malformed_rows")
    ]
    table = pa.Table.from_batches(blocks, schema=schema).combine_chunks()
    index = IdIndex(table.column(0).to_numpy())
    if index.duplicates:
        notes[f"{stem}_duplicate_ids"] += index.duplicates
    return FeatureTable(table.drop_columns(schema.names[0]), index)


def _user_block(batch: pa.RecordBatch, notes: Counter[str], stem: str) -> pa.RecordBatch:
    ids, ok = parse_int(batch.column("user_id"))
    arrays = [pa.array(ids), *[batch.column(c) for c in USER_STR]]
    arrays += [to_int_array(*parse_int(batch.column(c)), np.int8) for c in USER_FLAGS]
    arrays += [to_int_array(*parse_int(batch.column(c)), np.int32) for c in USER_ONEHOT]
    arrays += [
        pa.array(parse_float(batch.column(c)).astype(np.float32), from_pandas=True)
        for c in USER_COUNTS
    ]
    return _finish_block(batch, arrays, ok, USER_SCHEMA, notes, stem)


def _video_block(batch: pa.RecordBatch, notes: Counter[str], stem: str) -> pa.RecordBatch:
    ids, ok = parse_int(batch.column("video_id"))
    seconds = parse_float(batch.column("video_duration")) / 1000.0
    seconds[~(seconds > 0)] = np.nan
    tags, bad_tags = parse_tags(batch.column("tag"))
    notes[f"{stem}_invalid_values"] += bad_tags
    upload = pc.utf8_slice_codeunits(batch.column("upload_dt"), 0, 10)
    upload = pc.strptime(upload, format="%Y-%m-%d", unit="s", error_is_null=True)
    arrays = [
        pa.array(ids),
        to_int_array(*parse_int(batch.column("author_id")), np.int64),
        batch.column("video_type"),
        batch.column("upload_type"),
        to_int_array(*parse_int(batch.column("music_id")), np.int64),
        to_int_array(*parse_int(batch.column("music_type")), np.int32),
        tags,
        upload.cast(pa.date32()).cast(pa.int32()),
        pa.array(seconds, from_pandas=True),
    ]
    return _finish_block(batch, arrays, ok, VIDEO_SCHEMA, notes, stem)


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
