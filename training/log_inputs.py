"""What `ranker build-log` reads: the service's impression records and outcome events, from JSONL
files (rotated ones included) or Redis streams. Nothing is dropped in silence: a line or entry
that is not a JSON object is counted under its source and kept for the rejects file.

The outcome event contract (one JSON object per line, or per stream entry in field `event`):

    {"request_id": "r-1", "item_id": 42, "event": "click", "ts": 1767225600000}
    {"request_id": "r-1", "item_id": 42, "event": "watch", "seconds": 12.5, "ts": 1767225612500}

- `request_id`: the id of the /rank request that served the item (string or integer);
- `item_id`: the served item (string or integer, as in the request);
- `event`: `click`, or `watch` with `seconds` (>= 0, the total seconds watched; a watch implies
  a click);
- `ts`: when it happened, milliseconds since the epoch (UTC).
Other fields are ignored.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import redis

from training.errors import DataError

EVENT_TYPES = ("click", "watch")
# A service log `impressions.jsonl` rotates to `impressions.jsonl.1`, `.2`, ...
_JSONL = re.compile(r".*\.jsonl(\.\d+)?")


@dataclass(frozen=True)
class Event:
    request_id: str
    item_id: str  # ids compare as text: 42 and "42" are one item
    event: str
    ts: int
    seconds: float  # watch seconds; 0 for a click


@dataclass(frozen=True)
class Rejected:
    where: str
    reason: str
    doc: Any


def jsonl_files(paths: Sequence[str | Path]) -> list[Path]:
    """Files named directly, and `*.jsonl` / `*.jsonl.N` files of directories (and rotated
    siblings `NAME.N` of a named file)."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and _JSONL.fullmatch(p.name))
        elif path.is_file():
            files.append(path)
            siblings = path.parent.glob(f"{path.name}.*")
            files += sorted(p for p in siblings if p.name[len(path.name) + 1 :].isdigit())
        else:
            raise DataError(str(path), "no such file or directory")
    return list(dict.fromkeys(files))


def read_jsonl(
    paths: Sequence[str | Path], counts: Counter[str], kind: str, rejects: list[Rejected]
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, object) of every line; a line that is not a JSON object is counted and rejected."""
    for file in jsonl_files(paths):
        try:
            lines = file.read_bytes().splitlines()
        except OSError as exc:
            raise DataError(str(file), f"cannot read: {exc.strerror}") from None
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{file}:{number}"
            doc = _object(line, where, counts, kind, rejects)
            if doc is not None:
                yield where, doc


def read_stream(
    url: str,
    stream: str,
    field: str,
    counts: Counter[str],
    kind: str,
    rejects: list[Rejected],
    page: int = 10_000,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, object) of every entry's `field`, up to the stream's end when reading began."""
    name = f"redis stream {stream}"
    client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
    try:
        last: Any = client.xrevrange(stream, count=1)
        if not last:
            return
        end: bytes = last[0][0]
        start = "-"
        while True:
            entries: Any = client.xrange(stream, min=start, max=end, count=page)
            for entry_id, fields in entries:
                where = f"{name} entry {entry_id.decode()}"
                raw = fields.get(field.encode())
                if raw is None:
                    counts[f"{kind}.invalid: no field {field!r}"] += 1
                    rejects.append(Rejected(where, f"no field {field!r}", None))
                    continue
                doc = _object(raw, where, counts, kind, rejects)
                if doc is not None:
                    yield where, doc
            if len(entries) < page or entries[-1][0] == end:
                return
            start = f"({entries[-1][0].decode()}"
    except redis.RedisError as exc:
        raise DataError(name, f"cannot read it: {exc}") from None
    finally:
        client.close()


def _object(
    raw: bytes, where: str, counts: Counter[str], kind: str, rejects: list[Rejected]
) -> dict[str, Any] | None:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        counts[f"{kind}.invalid: not JSON"] += 1
        rejects.append(Rejected(where, "not JSON", raw.decode("utf-8", "replace")[:500]))
        return None
    if not isinstance(doc, dict):
        counts[f"{kind}.invalid: not a JSON object"] += 1
        rejects.append(Rejected(where, "not a JSON object", doc))
        return None
    return doc


def _id(value: Any) -> str | None:
    if type(value) is int or (type(value) is str and value != ""):
        return str(value)
    return None


def parse_event(doc: dict[str, Any]) -> Event | str:
    """An Event, or why the document breaks the contract (naming the field)."""
    request_id, item_id = _id(doc.get("request_id")), _id(doc.get("item_id"))
    if request_id is None:
        return "request_id: missing, or not a string or integer"
    if item_id is None:
        return "item_id: missing, or not a string or integer"
    kind = doc.get("event")
    if kind not in EVENT_TYPES:
        return f"event: must be one of {list(EVENT_TYPES)}"
    ts = doc.get("ts")
    if type(ts) is not int or ts < 0:
        return "ts: missing, or not an integer >= 0 (milliseconds since the epoch)"
    seconds = 0.0
    if kind == "watch":
        value: Any = doc.get("seconds")
        if type(value) not in (int, float) or not 0 <= value < float("inf"):
            return "seconds: a watch needs a finite number >= 0"
        seconds = float(value)
    return Event(request_id, item_id, kind, ts, seconds)
