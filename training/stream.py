"""Training on Parquet logs larger than memory: row groups streamed, never the whole log at once.

`StreamingLog` opens the log as a `pyarrow.dataset`. The days of the split become a filter on `ts`
that is pushed down: row groups whose `ts` statistics miss the days are never read, and the rows of
the others are filtered while reading. The training split is read row group by row group in an
order shuffled per epoch (the same order on every rank; rank r takes every size-th group, so ranks
read disjoint parts), encoded chunk by chunk, and mixed in a shuffle buffer of `buffer_rows` rows
from which batches are cut. Memory is bounded by the buffer plus one read chunk, not by the log.

Dense statistics are fitted in one streaming pass (Chan's parallel mean/variance over chunks, the
same values as `fit_dense_stats` on the whole column). Evaluation streams the features too and
spills the rows its metrics need to disk by user/request (training/stream_eval.py): exact metrics,
memory bounded by a part file, not by the evaluated days.

Shuffle quality is that of a buffer: rows mix within `buffer_rows`, row groups mix across the
epoch. A buffer at least as large as a row group gives each batch rows from several groups.

Peak memory is the buffer (twice, while it is shuffled), one decoded batch of `READ_ROWS` rows and
the model: row groups are decoded page by page, evaluation spills to disk, and large arrays get
their own memory mappings (`bound_heap`), so glibc's heap does not fragment as steps go by.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import torch

from ranker.features import FeatureEncoder, dense_values, transform_dense
from ranker.models import MultiTaskModel, task_loss
from ranker.schema import ID_COLUMNS, LABEL_COLUMNS, ORACLE_COLUMNS, DenseStats, FeatureSpec
from training.data import (
    MS_PER_DAY,
    DaySplit,
    EncodedData,
    day_name,
    day_number,
    encode_table,
    log_files,
    required_columns,
    split_days,
    validate_rows,
)
from training.errors import DataError
from training.stream_eval import SpilledMetrics, spill_folder

READ_ROWS = 65_536  # rows decoded at once inside a row group
READ_BUFFER = 1 << 20  # bytes read ahead per column chunk (pages stream through it)
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = 1 << 20  # allocations from 1 MB up get their own mapping (bound_heap)


@dataclass(frozen=True)
class StreamSplit:
    """One split of a streaming log: its days' row groups, read on demand."""

    log: StreamingLog
    days: tuple[str, ...]
    groups: tuple[ds.ParquetFileFragment, ...]
    rows: int  # rows in the split (after the day filter and row validation)

    def chunks(
        self, encoder: FeatureEncoder, order: Sequence[int] | None = None
    ) -> Iterator[EncodedData]:
        """Encoded chunks of at most `READ_ROWS` rows, row group by row group (in `order`)."""
        for index in order if order is not None else range(len(self.groups)):
            for table in self.log.read(self.groups[index], self.days):
                yield encode_table(table, encoder)

    def shuffled_batches(
        self,
        encoder: FeatureEncoder,
        batch_size: int,
        seed: int,
        buffer_rows: int,
        rank: int = 0,
        size: int = 1,
    ) -> Iterator[EncodedData]:
        """One epoch of this rank's batches: its row groups in an order drawn from `seed`, rows
        mixed in a buffer of `buffer_rows`; the last batch may be short."""
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(self.groups))[rank::size]
        buffer: list[EncodedData] = []
        held = 0
        for chunk in self.chunks(encoder, order.tolist()):
            buffer.append(chunk)
            held += chunk.rows
            if held >= max(buffer_rows, batch_size):
                whole = concat(buffer)
                buffer.clear()  # the chunks go before the shuffled copy is made: 2x, not 3x
                mixed = whole.take(rng.permutation(held))
                del whole
                full = held // batch_size * batch_size
                yield from mixed.take(np.arange(full)).slices(batch_size)
                buffer = [mixed.take(np.arange(full, held))]
                held -= full
        if held:
            yield from concat(buffer).take(rng.permutation(held)).slices(batch_size)


class StreamingLog:
    """A Parquet log (a directory or files) read through `pyarrow.dataset`, validated per chunk."""

    def __init__(
        self,
        path: str | Path | Sequence[str | Path],
        spec: FeatureSpec,
        *,
        drop_invalid: bool = False,
    ) -> None:
        files = log_files(path)
        not_parquet = [str(f) for f in files if f.suffix != ".parquet"]
        if not_parquet:
            raise DataError(not_parquet[0], "the streaming path reads Parquet only")
        self.spec = spec
        self.drop_invalid = drop_invalid
        self.source = str(path)
        try:
            self.dataset = ds.dataset([str(f) for f in files], format="parquet")
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(self.source, f"cannot open the log: {exc}") from None
        names = self.dataset.schema.names
        missing = [c for c in required_columns(spec) if c not in names]
        if missing:
            raise DataError(self.source, "missing column", column=missing[0])
        self.columns = [c for c in [*required_columns(spec), *ORACLE_COLUMNS] if c in names]
        self.dropped: dict[str, int] = {}

    def days(self) -> list[str]:
        """Distinct days, from row-group `ts` statistics where a group holds one day, else by
        reading that group's `ts` column (one group at a time)."""
        found: set[int] = set()
        for group in self._groups(None):
            stats = group.row_groups[0].statistics.get("ts") if group.row_groups else None
            if stats and stats["min"] // MS_PER_DAY == stats["max"] // MS_PER_DAY:
                found.add(int(stats["min"] // MS_PER_DAY))
                continue
            for batch in self._batches(group, ["ts"]):
                ts = batch.column(0).drop_null().to_numpy()
                found.update(np.unique(ts // MS_PER_DAY).tolist())
        return [day_name(d) for d in sorted(found)]

    def split(self, days: Sequence[str]) -> StreamSplit:
        """The row groups that can hold `days` (statistics pushdown) and their row count (from
        the metadata where a group lies inside the days, else by reading its `ts`; rows that
        `drop_invalid` drops later are counted)."""
        groups = tuple(self._groups(_day_filter(days)))
        return StreamSplit(self, tuple(days), groups, sum(self._rows(g, days) for g in groups))

    def read(
        self,
        group: ds.ParquetFileFragment,
        days: Sequence[str],
        columns: Sequence[str] | None = None,
    ) -> Iterator[pa.Table]:
        """The rows of `group` on `days` in chunks of at most `READ_ROWS`, validated (ids and
        labels are always read for that). Rows dropped by `drop_invalid` are counted in
        `dropped` when reading every column (`columns=None`, the training and evaluation reads)."""
        wanted = (
            self.columns
            if columns is None
            else list(dict.fromkeys([*columns, *ID_COLUMNS, *LABEL_COLUMNS]))
        )
        try:
            for batch in self._batches(group, wanted):
                table = pa.Table.from_batches([batch]).filter(_day_filter(days))
                if not table.num_rows:
                    continue
                table, dropped = validate_rows(table, group.path, drop_invalid=self.drop_invalid)
                if columns is None:
                    for reason, count in dropped.items():
                        self.dropped[reason] = self.dropped.get(reason, 0) + count
                if table.num_rows:
                    yield table
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(group.path, f"cannot read the row group: {exc}") from None

    def _batches(
        self, group: ds.ParquetFileFragment, columns: Sequence[str]
    ) -> Iterator[pa.RecordBatch]:
        """The group's rows in batches of `READ_ROWS`, decoded page by page: the dataset
        scanner decodes a whole row group at once (300 MB for a 1.4M-row group), this reader
        holds one batch plus a `READ_BUFFER`-byte read buffer per column. Columns are cast to
        the dataset's schema, as the scanner would."""
        file = pq.ParquetFile(group.path, buffer_size=READ_BUFFER, pre_buffer=False)
        target = pa.schema([self.dataset.schema.field(c) for c in columns])
        ids = [g.id for g in group.row_groups]
        for batch in file.iter_batches(batch_size=READ_ROWS, row_groups=ids, columns=columns):
            yield batch if batch.schema == target else batch.cast(target)

    def _rows(self, group: ds.ParquetFileFragment, days: Sequence[str]) -> int:
        wanted = {day_number(d) for d in days}
        info = group.row_groups[0] if group.row_groups else None
        stats = info.statistics.get("ts") if info is not None else None
        if info is not None and stats:
            first, last = stats["min"] // MS_PER_DAY, stats["max"] // MS_PER_DAY
            if all(d in wanted for d in range(first, last + 1)):
                return int(info.num_rows)
        return sum(t.num_rows for t in self.read(group, days, columns=["ts"]))

    def _groups(self, expression: ds.Expression | None) -> Iterator[ds.ParquetFileFragment]:
        for fragment in self.dataset.get_fragments(filter=expression):
            yield from fragment.split_by_row_group(expression)


def _day_filter(days: Sequence[str]) -> ds.Expression:
    """`ts` inside any of `days` (UTC), consecutive days merged into one range."""
    numbers = sorted({day_number(d) for d in days})
    if not numbers:
        raise ValueError("no days to select")
    ranges: list[list[int]] = []
    for day in numbers:
        if ranges and ranges[-1][1] == day:
            ranges[-1][1] = day + 1
        else:
            ranges.append([day, day + 1])
    ts = ds.field("ts")
    expression: ds.Expression | None = None
    for low, high in ranges:
        part = (ts >= low * MS_PER_DAY) & (ts < high * MS_PER_DAY)
        expression = part if expression is None else expression | part
    assert expression is not None
    return expression


def concat(parts: Sequence[EncodedData]) -> EncodedData:
    """Rows of several encoded chunks, in order."""
    if len(parts) == 1:
        return parts[0]

    def join(name: str) -> dict[str, np.ndarray]:
        keys = getattr(parts[0], name)
        return {k: np.concatenate([getattr(p, name)[k] for p in parts]) for k in keys}

    return EncodedData(
        join("inputs"),
        join("labels"),
        np.concatenate([p.request_id for p in parts]),
        np.concatenate([p.user_id for p in parts]),
        join("oracle"),
    )


def fit_dense_stats_streaming(spec: FeatureSpec, split: StreamSplit) -> FeatureSpec:
    """`fit_dense_stats` in one pass over the split: per chunk count, mean and sum of squared
    deviations, merged with Chan et al.'s pairwise update (stable in float64)."""
    dense = [f for f in spec.features if f.kind == "dense"]
    if not dense:
        return spec
    count = 0
    mean = np.zeros(len(dense))
    m2 = np.zeros(len(dense))
    names = [f.name for f in dense]
    for group in split.groups:
        for table in split.log.read(group, split.days, columns=names):
            values = np.stack(
                [transform_dense(dense_values(table[f.name], f), f) for f in dense], axis=1
            )
            n = len(values)
            chunk_mean = values.mean(axis=0)
            chunk_m2 = ((values - chunk_mean) ** 2).sum(axis=0)
            delta = chunk_mean - mean
            total = count + n
            mean = mean + delta * n / total
            m2 = m2 + chunk_m2 + delta**2 * count * n / total
            count = total
    if count == 0:
        raise DataError(split.log.source, f"no rows on the training days {list(split.days)}")
    stats = {}
    for j, f in enumerate(dense):
        std = math.sqrt(m2[j] / count)
        stats[f.name] = DenseStats(mean=float(mean[j]), std=std if std > 1e-6 else 1.0)
    return spec.with_stats(stats)


@dataclass
class StreamingData:
    """A log split by day for the streaming path: dense stats fitted on the training days."""

    spec: FeatureSpec
    split: DaySplit
    train: StreamSplit
    valid: StreamSplit
    test: StreamSplit | None
    log: StreamingLog

    @property
    def dropped(self) -> dict[str, int]:
        return dict(self.log.dropped)


def bound_heap(threshold: int = MMAP_THRESHOLD) -> bool:
    """Serve allocations of at least `threshold` bytes from their own mappings (glibc).

    By default glibc raises its mmap threshold to the size of each large block freed (up to
    32 MB), after which the shuffle buffer's and each batch's arrays come from the heap, whose
    freed holes fragment: peak RSS then crept up with the number of steps, i.e. with the log
    (+120 MB over 250 steps of 8192 rows; flat with a fixed threshold). A fixed threshold keeps
    it flat; each large array costs fresh page faults instead. False where there is no glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False


def prepare_stream(
    paths: Sequence[str | Path],
    spec: FeatureSpec,
    *,
    valid_days: int,
    test_days: int,
    window_days: int | None = None,
    drop_invalid: bool = False,
) -> StreamingData:
    """Open, split by day (from row-group statistics) and fit dense stats in one pass; large
    allocations get their own mappings from here on (`bound_heap`)."""
    bound_heap()
    log = StreamingLog(list(paths), spec, drop_invalid=drop_invalid)
    split = split_days(log.days(), valid_days=valid_days, test_days=test_days)
    if window_days is not None:
        split = DaySplit(split.train[-window_days:], split.valid, split.test)
    train = log.split(split.train)
    fitted = fit_dense_stats_streaming(spec, train)
    log.spec = fitted
    return StreamingData(
        spec=fitted,
        split=split,
        train=train,
        valid=log.split(split.valid),
        test=log.split(split.test) if split.test else None,
        log=log,
    )


@torch.no_grad()
def evaluate_stream(
    model: MultiTaskModel, split: StreamSplit, encoder: FeatureEncoder, device: str = "cpu"
) -> dict[str, dict[str, float]]:
    """`evaluate_model` over a streamed split in bounded memory: features chunk by chunk, the
    rows the metrics need spilled to disk by group (training/stream_eval.py, exact metrics);
    each task's mean loss (main heads) under `task.loss` and their sum under `loss.value`, as
    `evaluate_model` reports them."""
    was_training = model.training
    model.eval()
    sums = dict.fromkeys(model.task_names, 0.0)
    rows = 0
    with spill_folder() as folder:
        spilled = SpilledMetrics(list(model.task_names), split.rows, Path(folder))
        for chunk in split.chunks(encoder):
            inputs = {k: torch.from_numpy(v).to(device) for k, v in chunk.inputs.items()}
            raw = model.forward_parts(inputs).raw
            preds = {t: v.float().cpu().numpy() for t, v in model.predictions(raw).items()}
            for task in model.tasks:
                label = torch.from_numpy(chunk.labels[task.name]).to(device)
                sums[task.name] += float(task_loss(task, raw[task.name], label)) * chunk.rows
            spilled.add(preds, chunk)
            rows += chunk.rows
        model.train(was_training)
        if not rows:
            raise DataError(split.log.source, f"no rows on the days {list(split.days)}")
        result = spilled.result()
    for name, total in sums.items():
        result[name]["loss"] = total / rows
    result["loss"] = {"value": float(sum(total / rows for total in sums.values()))}
    return result
