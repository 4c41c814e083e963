"""Day-partitioned Parquet parts of the imported log, removed again when an import fails."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from training.datasets.kuairand.columns import OUTPUT_SCHEMA


class DayWriters:
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


def count_requests(files: list[Path]) -> int:
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
