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

from collections import Counter
from pathlib import Path

from training.datasets.kuairand.columns import ROW_CHECKS, SPEC_FILE, kuairand_spec
from training.datasets.kuairand.convert import LogConverter
from training.datasets.kuairand.read import CsvReader, load_features, log_files
from training.datasets.kuairand.report import ImportReport
from training.datasets.kuairand.write import DayWriters, count_requests
from training.errors import DataError

BYTES_PER_ROW = 160  # a KuaiRand log row is ~110 bytes; sizes CSV blocks from chunk_rows


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
    data = src if any(log_files(src)) or not (src / "data").is_dir() else src / "data"
    logs = log_files(data)
    if not logs:
        raise DataError(str(data), "no KuaiRand logs (log_standard_*.csv, log_random_*.csv) found")
    if out_dir.exists() and (any(out_dir.glob("day=*")) or (out_dir / SPEC_FILE).exists()):
        raise DataError(str(out_dir), "already holds an imported log; choose an empty directory")

    reader = CsvReader(
        block_size or min(max(chunk_rows * BYTES_PER_ROW, 1 << 16), 1 << 30), chunk_rows, progress
    )
    notes: Counter[str] = Counter()
    users = load_features("user_features", data, reader, notes)
    videos = load_features("video_features_basic", data, reader, notes)
    writers = DayWriters(out_dir, rows_per_part)
    job = LogConverter(users, videos, writers, reader, request_window_ms, drop_invalid, notes)
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
        requests=count_requests(files),
        days=sorted({p.parent.name.removeprefix("day=") for p in files}),
        files=files,
        spec_path=spec_path,
        notes=dict(sorted((+notes).items())),
    )
