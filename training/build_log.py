"""`ranker build-log`: served impressions + outcome events -> days of training log (Parquet).

Input: the service's impression records (JSONL files or its Redis stream), each carrying the
features the model was served with (RANKER_LOG_FEATURES), and outcome events in the contract of
`training.log_inputs` (JSONL files or a Redis stream). Output: `OUT/day=YYYY-MM-DD/
part-build-log.parquet` in the impression-log contract that `ranker train` and `ranker retrain`
read (one row per served item: ids, `ts`, the served features, `click`, `watch_time`,
`duration`, plus `position`, `model_version` and `variant`), and `_build-log.json` beside it.

The join, on (request_id, item_id):
- a day (of the impression's `ts`, UTC) is *closed* once `late_window_s` has passed since its
  end; closed days are built once (rerun with `rebuild`), open days only with `open_days`
  (rebuilt by every later run until they close);
- events later than `late_window_s` after their impression, or more than CLOCK_SKEW_MS before
  it, are counted and not joined; a repeated (request_id, item_id, event) is a duplicate (the
  earliest is kept); a watch without a click event implies the click; events naming no served
  item are counted as unknown request or unknown item;
- impression records without features, repeated request ids, and rows without `duration`
  (the label needs it) are counted and left out.
Every count is printed, written to `OUT/_build-log/<run>.json`, and every event that did not join
is written with its reason to `OUT/_build-log/<run>-rejected.jsonl`: nothing is dropped silently.

Over 400 lines on purpose: the join above is one contract; its four steps (build_log) and the day
table they feed each stay short, and read in the order the contract lists them.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from ranker.schema import FeatureSpec, load_default_spec
from training.exit_codes import EXIT_OK
from training.log_inputs import Event, Rejected, parse_event, read_jsonl, read_stream

MS_PER_DAY = 86_400_000
CLOCK_SKEW_MS = 60_000  # an event this much before its impression still joins (clocks differ)
PART = "part-build-log.parquet"
MANIFEST = "_build-log.json"
_INT = re.compile(r"-?(0|[1-9][0-9]{0,17})")


@dataclass(frozen=True)
class Source:
    """JSONL files/directories, or a Redis stream (url + key)."""

    paths: tuple[str, ...] = ()
    redis_url: str | None = None
    stream: str | None = None

    def check(self, what: str) -> None:
        if bool(self.paths) == bool(self.redis_url and self.stream):
            raise ValueError(f"{what}: give JSONL paths or a Redis URL and stream (one of them)")


@dataclass(frozen=True)
class BuildConfig:
    impressions: Source
    events: Source
    out: Path
    spec: FeatureSpec | None = None  # the served model's feature spec; default: the package's
    late_window_s: float = 3600.0
    open_days: bool = False  # also build days still open to late events
    rebuild: bool = False  # rebuild closed days already built
    now_ms: int | None = None  # the clock; None: now


@dataclass
class Shown:
    """One served item of a kept impression record."""

    record: int
    position: int
    click: int = 0
    watch: float = 0.0
    clicked_event: bool = False


@dataclass
class BuildSummary:
    run_id: str
    counts: dict[str, int]
    days: dict[str, dict[str, Any]]  # built days: rows, requests, clicks, closed
    skipped_days: dict[str, str]  # day -> why not built
    files: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"build-log {self.run_id}:"]
        for day, info in sorted(self.days.items()):
            state = "closed" if info["closed"] else "open (rebuilt until it closes)"
            out.append(
                f"  {day}: {info['rows']} rows, {info['requests']} requests, "
                f"{info['clicks']} clicks; {state}"
            )
        out += [f"  {day}: not built ({why})" for day, why in sorted(self.skipped_days.items())]
        out += [f"  {key}: {n}" for key, n in sorted(self.counts.items())]
        return out + [f"{label}: {path}" for label, path in self.files.items()]


def _records(source: Source, field_name: str, counts: Counter[str], kind: str,
             rejects: list[Rejected]) -> Iterator[tuple[str, dict[str, Any]]]:  # fmt: skip
    if source.paths:
        return read_jsonl(source.paths, counts, kind, rejects)
    assert source.redis_url is not None and source.stream is not None
    return read_stream(source.redis_url, source.stream, field_name, counts, kind, rejects)


def _day(ts_ms: int) -> str:
    return str(np.datetime64(ts_ms // MS_PER_DAY, "D"))


def _valid_record(doc: dict[str, Any]) -> str | None:
    """Why an impression record cannot make rows, or None."""
    if type(doc.get("request_id")) not in (str, int):
        return "request_id missing"
    if type(doc.get("ts")) is not int:
        return "ts missing"
    if type(doc.get("user_id")) not in (str, int):
        return "user_id missing"
    items = doc.get("item_ids")
    if not isinstance(items, list):
        return "item_ids missing"
    features = doc.get("features")
    if not isinstance(features, dict):
        return "no features (served with RANKER_LOG_FEATURES off)"
    columns = features.get("items")
    if not isinstance(columns, dict) or any(
        not isinstance(v, list) or len(v) != len(items) for v in columns.values()
    ):
        return "features.items: not one value per served item"
    if not isinstance(features.get("user"), dict) or not isinstance(features.get("context"), dict):
        return "features.user / features.context missing"
    return None


@dataclass
class _Served:
    """The kept impression records and what they showed."""

    records: list[dict[str, Any]]  # first record of each request id, in arrival order
    shown: dict[tuple[str, str], Shown]  # (request id, item id) -> the served item
    requests: set[str]  # the kept request ids
    day_of: list[str]  # the day of each record


def build_log(config: BuildConfig) -> BuildSummary:
    """Join served impressions with outcome events into training days, in four steps: read the
    records, pick the days to build, join the events, write the days and the run's report."""
    config.impressions.check("impressions")
    config.events.check("events")
    spec = config.spec or load_default_spec()
    now = config.now_ms if config.now_ms is not None else datetime.now(UTC).timestamp() * 1000
    window_ms = int(config.late_window_s * 1000)
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    counts: Counter[str] = Counter()
    rejects: list[Rejected] = []
    out = Path(config.out)

    served = _read_impressions(config.impressions, counts, rejects)
    build, skipped = _days_to_build(config, out, served.day_of, now, window_ms)
    _join_events(config.events, served, build, window_ms, counts, rejects)
    days = _write_days(spec, out, served, build, run_id, counts)
    summary = BuildSummary(run_id, dict(sorted(counts.items())), days, skipped)
    _write_report(out / "_build-log", summary, rejects)
    return summary


def _read_impressions(source: Source, counts: Counter[str], rejects: list[Rejected]) -> _Served:
    """1. Impression records, first of each request id kept; served items indexed by key."""
    records: list[dict[str, Any]] = []
    shown: dict[tuple[str, str], Shown] = {}
    requests: set[str] = set()
    for _, doc in _records(source, "record", counts, "impressions", rejects):
        why = _valid_record(doc)
        if why is not None:
            counts[f"impressions.skipped: {why}"] += 1
            continue
        request_id = str(doc["request_id"])
        if request_id in requests:
            counts["impressions.skipped: repeated request_id (first kept)"] += 1
            continue
        requests.add(request_id)
        index = len(records)
        records.append(doc)
        for position, item in enumerate(doc["item_ids"]):
            shown.setdefault((request_id, str(item)), Shown(index, position))
    counts["impressions.records"] = len(records)
    return _Served(records, shown, requests, [_day(r["ts"]) for r in records])


def _days_to_build(
    config: BuildConfig, out: Path, day_of: list[str], now: float, window_ms: int
) -> tuple[dict[str, bool], dict[str, str]]:
    """2. Which days to build (day -> closed to late events), and why the others are not."""
    build: dict[str, bool] = {}
    skipped: dict[str, str] = {}
    for day in sorted(set(day_of)):
        closed = now >= (np.datetime64(day, "D").astype(np.int64) + 1) * MS_PER_DAY + window_ms
        if not closed and not config.open_days:
            skipped[day] = "still open to late events"
        elif closed and (out / f"day={day}" / MANIFEST).is_file() and not config.rebuild:
            previous = orjson.loads((out / f"day={day}" / MANIFEST).read_bytes())
            if previous.get("closed"):
                skipped[day] = "already built"
                continue
            build[day] = True
        else:
            build[day] = bool(closed)
    return build, skipped


def _join_events(
    source: Source,
    served: _Served,
    build: dict[str, bool],
    window_ms: int,
    counts: Counter[str],
    rejects: list[Rejected],
) -> None:
    """3. Events, earliest first, joined to the served items (their click and watch set)."""
    events: list[tuple[str, Event]] = []
    for where, doc in _records(source, "event", counts, "events", rejects):
        parsed = parse_event(doc)
        if isinstance(parsed, str):
            counts[f"events.invalid: {parsed.split(':')[0]}"] += 1
            rejects.append(Rejected(where, parsed, doc))
            continue
        events.append((where, parsed))
    events.sort(key=lambda e: e[1].ts)
    seen: set[tuple[str, str, str]] = set()
    for where, event in events:
        item = served.shown.get((event.request_id, event.item_id))
        reason = None
        if item is None:
            reason = "unknown item" if event.request_id in served.requests else "unknown request"
        elif served.day_of[item.record] not in build:
            counts["events.for days not built in this run"] += 1
            continue
        else:
            lag = event.ts - served.records[item.record]["ts"]
            if lag > window_ms:
                reason = "late (beyond the window)"
            elif lag < -CLOCK_SKEW_MS:
                reason = "before its impression"
            elif (event.request_id, event.item_id, event.event) in seen:
                reason = "duplicate"
        if reason is not None:
            counts[f"events.not joined: {reason}"] += 1
            rejects.append(Rejected(where, reason, event.__dict__))
            continue
        assert item is not None
        seen.add((event.request_id, event.item_id, event.event))
        counts[f"events.joined: {event.event}"] += 1
        item.click = 1
        if event.event == "click":
            item.clicked_event = True
        else:
            item.watch = event.seconds
    counts["events.watch without a click event (click implied)"] = sum(
        1 for s in served.shown.values() if s.watch > 0 and not s.clicked_event
    )


def _write_days(
    spec: FeatureSpec,
    out: Path,
    served: _Served,
    build: dict[str, bool],
    run_id: str,
    counts: Counter[str],
) -> dict[str, dict[str, Any]]:
    """4. Rows per day, each day's part and manifest written atomically; day -> its manifest."""
    by_day: dict[str, list[int]] = defaultdict(list)
    for index, day in enumerate(served.day_of):
        if day in build:
            by_day[day].append(index)
    days: dict[str, dict[str, Any]] = {}
    for day, indices in sorted(by_day.items()):
        records = [served.records[i] for i in indices]
        table, info = _day_table(spec, records, indices, served.shown, counts)
        part = out / f"day={day}" / PART
        _write_parquet(table, part)
        info["closed"] = build[day]
        info["built_at"] = run_id
        _write_bytes(part.with_name(MANIFEST), orjson.dumps(info, option=orjson.OPT_INDENT_2))
        days[day] = info
    return days


def _write_report(report_dir: Path, summary: BuildSummary, rejects: list[Rejected]) -> None:
    """The run's report (and its rejected lines, if any), their paths added to the summary."""
    report_dir.mkdir(parents=True, exist_ok=True)
    if rejects:
        rejected = report_dir / f"{summary.run_id}-rejected.jsonl"
        _write_bytes(rejected, b"".join(
            orjson.dumps(r.__dict__, default=str) + b"\n" for r in rejects))  # fmt: skip
        summary.files["rejected"] = str(rejected)
    report = report_dir / f"{summary.run_id}.json"
    summary.files["report"] = str(report)
    _write_bytes(report, orjson.dumps(summary.__dict__, option=orjson.OPT_INDENT_2))


def _day_table(
    spec: FeatureSpec,
    records: list[dict[str, Any]],
    indices: list[int],
    shown: dict[tuple[str, str], Shown],
    counts: Counter[str],
) -> tuple[pa.Table, dict[str, Any]]:
    """One day's rows in the impression-log contract; rows without a duration are left out."""
    columns: dict[str, list[Any]] = defaultdict(list)
    names = [f.name for f in spec.features if f.name not in ("user_id", "item_id")]
    for record, index in zip(records, indices, strict=True):
        features = record["features"]
        items = record["item_ids"]
        n = len(items)
        request_id = str(record["request_id"])
        outcome = [shown[(request_id, str(i))] for i in items]
        keep = [s.record == index for s in outcome]  # a repeated item: its first position
        per_item = features["items"]
        single = {**features["user"], **features["context"]}
        for name in names:
            if name in per_item:
                columns[name] += per_item[name]
            else:
                columns[name] += [single.get(name)] * n
        columns["request_id"] += [record["request_id"]] * n
        columns["user_id"] += [record.get("user_id", features["user"].get("user_id"))] * n
        columns["item_id"] += items
        columns["ts"] += [record["ts"]] * n
        columns["position"] += [s.position for s in outcome]
        columns["click"] += [s.click for s in outcome]
        columns["watch_time"] += [s.watch for s in outcome]
        columns["model_version"] += [f"{record.get('model')}/{record.get('model_version')}"] * n
        columns["variant"] += [str(record.get("variant"))] * n
        columns["_keep"] += keep
    duration = columns.get("duration", [None] * len(columns["item_id"]))
    columns["duration"] = duration
    usable = np.array(
        [
            k and isinstance(d, int | float) and math.isfinite(d) and d > 0
            for k, d in zip(columns.pop("_keep"), duration, strict=True)
        ],
        dtype=bool,
    )
    dropped = int((~usable).sum())
    if dropped:
        counts["rows.skipped: no duration > 0, or the item repeated in its request"] += dropped
    arrays = {name: _array(name, values, spec) for name, values in columns.items()}
    table = pa.table(arrays).filter(pa.array(usable))
    info = {
        "rows": table.num_rows,
        "requests": len(records),
        "clicks": int(np.asarray(table["click"]).sum()),
    }
    return table, info


def _array(name: str, values: list[Any], spec: FeatureSpec) -> pa.Array:
    """A column typed for the log: ids and categories int64 when every value is an integer
    (as the simulator writes them), else text (hashing treats 7 and "7" alike); dense float64."""
    kind = spec[name].kind if name in spec.names else None
    if name in ("ts", "position", "click"):
        return pa.array(values, type=pa.int64())
    if name in ("watch_time", "duration") or kind == "dense":
        return pa.array([_float(v) for v in values], type=pa.float64())
    if kind == "multi_categorical":
        flat = [x for row in values if row for x in row]
        inner = pa.int64() if all(type(x) is int for x in flat) else pa.string()
        rows = values if inner == pa.int64() else [_texts(row) for row in values]
        return pa.array(rows, type=pa.list_(inner))
    present = [v for v in values if v is not None]
    if all(type(v) is int for v in present) or all(
        type(v) is str and _INT.fullmatch(v) for v in present
    ):
        return pa.array([None if v is None else int(v) for v in values], type=pa.int64())
    return pa.array([None if v is None else str(v) for v in values], type=pa.string())


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _texts(row: Sequence[Any] | None) -> list[str] | None:
    return None if row is None else [str(x) for x in row]


def _write_parquet(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def run_command(
    config: BuildConfig, schedule: str | None = None, max_runs: int | None = None
) -> int:
    """One build (or one per cron fire time), printing what it built and counted."""
    from training.schedule import parse_schedule, run_schedule

    def once() -> int:
        summary = build_log(config)
        print("\n".join(summary.lines()), flush=True)
        return EXIT_OK

    if schedule is None:
        return once()
    return run_schedule(parse_schedule(schedule), once, max_runs=max_runs)
