"""Inputs of `ranker ab-report`: impression records and outcome rows, read and validated.

Impression records come from the service's JSONL file or Redis stream (field `record`), one per
served request: `request_id`, `user_id`, `variant` (label), `layers` [{layer, bucket, variant}],
`item_ids` best first; `expand` turns them into one row per served item. Outcome rows (JSONL):
`request_id`, `item_id`, `click` (0/1), `watch_time` (s, >= 0), `duration` (s, > 0), optional
`variant`. Ids compare as strings, as in the service (7 and "7" are one item). A bad line raises
DataError naming the file (or stream) and the line (or entry).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import redis

from training.errors import DataError

NO_VARIANT = "-"  # the arm of users in no variant of the analysed layer

# (where, parsed JSON document); where is a line number (JSONL) or "entry <id>" (Redis stream).
Lines = Iterable[tuple[int | str, Any]]


def _at(where: int | str) -> str:
    return f"line {where}" if isinstance(where, int) else where


def jsonl_lines(path: Path) -> list[tuple[int | str, Any]]:
    """The JSON documents of a JSONL file with their line numbers; blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(str(path), "no such file")
    raw = path.read_bytes().splitlines()
    try:
        return [(n, orjson.loads(line)) for n, line in enumerate(raw, 1) if line.strip()]
    except orjson.JSONDecodeError:
        for n, line in enumerate(raw, 1):  # again, line by line, to name the bad one
            try:
                orjson.loads(line) if line.strip() else None
            except orjson.JSONDecodeError as exc:
                raise DataError(str(path), f"line {n}: not valid JSON ({exc})") from None
        raise


def redis_lines(url: str, stream: str, page: int = 10_000) -> list[tuple[int | str, Any]]:
    """The records of a Redis stream (field `record`), up to its length when reading began."""
    name = f"redis stream {stream}"
    client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
    out: list[tuple[int | str, Any]] = []
    try:
        total = int(client.xlen(stream))  # type: ignore[arg-type]
        start = "-"
        for _ in range(-(-total // page)):  # pages; entries added while reading are left
            entries: Any = client.xrange(stream, min=start, count=min(page, total - len(out)))
            for entry_id, fields in entries:
                where = f"entry {entry_id.decode()}"
                if b"record" not in fields:
                    raise DataError(name, f"{where}: no field 'record'")
                try:
                    out.append((where, orjson.loads(fields[b"record"])))
                except orjson.JSONDecodeError as exc:
                    raise DataError(name, f"{where}: not valid JSON ({exc})") from None
            if not entries or len(out) >= total:
                break
            start = f"({entries[-1][0].decode()}"
    except redis.RedisError as exc:
        raise DataError(name, f"cannot read it: {exc}") from None
    finally:
        client.close()
    if not out:
        raise DataError(name, "no records (empty or missing stream)")
    return out


def _id(doc: dict, key: str, name: str, where: int | str) -> str:
    value = doc.get(key)
    if type(value) not in (str, int) or value == "":
        raise DataError(
            name, f"{_at(where)}: field {key!r} must be a string or an integer, got {value!r}"
        )
    return str(value)


def _number(doc: dict, key: str, name: str, where: int | str, low: float, strict: bool) -> float:
    value: Any = doc.get(key)
    ok = type(value) in (int, float) and math.isfinite(value)
    if not ok or value < low or (strict and value == low):
        bound = f"> {low:g}" if strict else f">= {low:g}"
        raise DataError(
            name, f"{_at(where)}: field {key!r} must be a number {bound}, got {value!r}"
        )
    return float(value)


@dataclass
class Impressions:
    """Impression rows (one per served item) of the analysed layer."""

    keys: list[tuple[str, str]]  # (request_id, item_id)
    user: list[str]
    arm: list[str]
    label: list[str]  # the record's whole variant label, to cross-check outcomes
    records: int
    duplicates: int  # records whose request_id was already seen (left out)
    without_layer: int  # records that do not carry the analysed layer (left out)
    users_by_arm: dict[str, int]  # distinct users per arm over all records (the SRM counts)
    users_in_several_arms: int


def layers_of(name: str, lines: Lines) -> list[tuple[str, str, list[str], dict[str, str], str]]:
    """Validated records as (request_id, user_id, item_ids, {layer: variant}, label)."""
    records = []
    for where, doc in lines:
        if type(doc) is not dict:
            raise DataError(name, f"{_at(where)}: expected a JSON object")
        rid, user = _id(doc, "request_id", name, where), _id(doc, "user_id", name, where)
        items = doc.get("item_ids")
        if type(items) is not list or not all(type(i) in (str, int) for i in items):
            raise DataError(name, f"{_at(where)}: field 'item_ids' must be a list of ids")
        layers = doc.get("layers") or []
        if type(layers) is not list or not all(
            type(e) is dict and type(e.get("layer")) is str for e in layers
        ):
            raise DataError(
                name, f"{_at(where)}: field 'layers' must be a list of {{layer, variant}}"
            )
        arms = {e["layer"]: str(e.get("variant") or NO_VARIANT) for e in layers}
        records.append((rid, user, [str(i) for i in items], arms, str(doc.get("variant", ""))))
    if not records:
        raise DataError(name, "no impression records")
    return records


def expand(name: str, lines: Lines, layer: str | None) -> tuple[str | None, Impressions]:
    """Impression rows of `layer` (None: the only layer the records carry, or whole labels)."""
    records = layers_of(name, lines)
    if layer is None:
        names = sorted({k for r in records for k in r[3]})
        if len(names) > 1:
            raise DataError(name, f"records carry layers {names}; choose one with --layer")
        layer = names[0] if names else None
    seen: set[str] = set()
    imp = Impressions(keys=[], user=[], arm=[], label=[], records=len(records), duplicates=0,
                      without_layer=0, users_by_arm={}, users_in_several_arms=0)  # fmt: skip
    users: defaultdict[str, set[str]] = defaultdict(set)
    for rid, user, items, arms, label in records:
        if rid in seen:
            imp.duplicates += 1
            continue
        seen.add(rid)
        arm = label if layer is None else arms.get(layer)
        if arm is None:
            imp.without_layer += 1
            continue
        users[arm].add(user)
        imp.keys.extend((rid, item) for item in items)
        imp.user.extend([user] * len(items))
        imp.arm.extend([arm] * len(items))
        imp.label.extend([label] * len(items))
    if not users:
        raise DataError(name, f"no impression record carries layer {layer!r}")
    imp.users_by_arm = {arm: len(u) for arm, u in users.items()}
    imp.users_in_several_arms = sum(imp.users_by_arm.values()) - len(set().union(*users.values()))
    return layer, imp


@dataclass
class Outcomes:
    keys: list[tuple[str, str]]
    click: np.ndarray
    watch_time: np.ndarray
    duration: np.ndarray
    label: list[str | None]  # the variant label the outcome writer saw, when it wrote one


def _check_outcome(name: str, where: int | str, doc: Any) -> None:
    """The rules of one outcome row, walked only to name the first bad line."""
    if type(doc) is not dict:
        raise DataError(name, f"{_at(where)}: expected a JSON object")
    _id(doc, "request_id", name, where)
    _id(doc, "item_id", name, where)
    value = doc.get("click")
    if value not in (0, 1) or type(value) not in (int, bool):
        raise DataError(name, f"{_at(where)}: field 'click' must be 0 or 1, got {value!r}")
    _number(doc, "watch_time", name, where, 0.0, strict=False)
    _number(doc, "duration", name, where, 0.0, strict=True)


def read_outcomes(path: Path) -> Outcomes:
    """Outcome rows, checked column-wise (one C loop per rule); a bad row names its line."""
    name = str(path)
    lines = list(jsonl_lines(path))
    if not lines:
        raise DataError(name, "no outcome rows")
    docs = [doc for _, doc in lines]
    try:
        ids = {k: [d[k] for d in docs] for k in ("request_id", "item_id")}
        clicks = [d["click"] for d in docs]
        numbers = {k: [d[k] for d in docs] for k in ("watch_time", "duration")}
        click = np.array(clicks, dtype=np.float64)
        watch, duration = (np.array(numbers[k], dtype=np.float64) for k in numbers)
        good = (
            set(map(type, ids["request_id"] + ids["item_id"])) <= {str, int}
            and "" not in ids["request_id"] + ids["item_id"]
            and set(map(type, clicks)) <= {int, bool}
            and set(map(type, numbers["watch_time"] + numbers["duration"])) <= {int, float}
            and bool(((click == 0) | (click == 1)).all())
            and bool((watch >= 0).all() and np.isfinite(watch).all())
            and bool((duration > 0).all() and np.isfinite(duration).all())
        )
    except (KeyError, TypeError, ValueError):  # a missing field, a non-object or a non-number
        good = False
    if not good:
        for where, doc in lines:
            _check_outcome(name, where, doc)
        raise AssertionError("no bad outcome row found")  # pragma: no cover
    keys = list(zip(map(str, ids["request_id"]), map(str, ids["item_id"]), strict=True))
    label = [v if type(v) is str else None for v in (d.get("variant") for d in docs)]
    return Outcomes(keys, click, watch, duration, label)
