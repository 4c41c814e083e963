"""`ranker simulate-traffic`: a closed loop between the simulator's ground truth and a live service.

The `World` of the offline logs (same `SimulatorConfig`, same ground truth) samples users with their
features and context and candidate items on a day after the logged days (item popularity stays at
the last logged day's); each request is POSTed to /rank on a loopback service, and outcomes are
drawn for what the service *served*, in its order. Requests are sampled CHUNK at a time as they are
sent; a run stops at `requests` or `seconds`, whichever comes first.

Position effect (a position-based click model): the item at 0-based position p is examined with
probability θ_p = (1 / log2(p + 2)) ** position_bias (1, 0.63, 0.5, 0.43, ... 0.29 at p = 9) and
clicked with probability θ_p · P(click | examined), the world's click probability; a click's watch
time is the world's. Putting good items first therefore earns more clicks and watch time.

Writes `OUT/outcomes.jsonl` (one line per served item: `request_id`, `user_id`, `item_id`,
`position`, `click`, `watch_time`, `duration`, `ts`, `variant`, `model_version`), joinable with
the service's impression records by (request_id, item_id); `OUT/summary.json`; and, with
`log_dir`, `LOG_DIR/day=YYYY-MM-DD/part-traffic-<seed>.parquet` in the training log contract
(oracle columns = expectations with the position effect, plus `position` and `variant`).
`ts` is the simulated event time, so the new rows fall on the simulated day. Request ids are
`day·10¹² + seed·10⁶ + i`: distinct across days and seeds, and from `ranker simulate`'s ids.

It also emits what a client app would send, in the outcome event contract of
`training.log_inputs`: `OUT/events.jsonl` (and, with `events_redis_url`, the same events added to
the Redis stream `events_stream`, field `event`): for each clicked item a `click` and a `watch`
with its seconds, timed on the wall clock after the response (the click (p + 1) s after it, the
watch when the viewing ends), so `ranker build-log` joins them with the service's impression
records, which carry the features it served.

Over 400 lines on purpose: sampling, sending, drawing outcomes and writing them are one loop over
the same served rows; the schemas and Parquet writes it shares with `simulate` are in sim/tables.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pyarrow as pa

from sim.tables import LOG_SCHEMA, ORACLE_SCHEMA, tags_array, write_parquet
from sim.world import Expected, World

MAX_REQUESTS = 1_000_000  # also the id stride: request i of a run is < 10**6
CHUNK = 500  # requests sampled at a time: a run bounded by time samples little more than it sends
MAX_SECONDS = 3600.0
MAX_CONCURRENCY = 256
JSON = {"content-type": "application/json"}
TRAFFIC_SCHEMA = pa.unify_schemas(
    [LOG_SCHEMA, ORACLE_SCHEMA, pa.schema([("position", pa.int64()), ("variant", pa.string())])]
)


class TrafficError(ValueError):
    """A refused URL or a service that does not answer; the message says which."""


def check_loopback(url: str) -> str:
    """The URL if its host is 127.0.0.0/8, ::1 or localhost; TrafficError otherwise."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise TrafficError(f"--url {url!r}: {exc}") from None
    if parsed.scheme not in ("http", "https"):
        raise TrafficError(f"--url {url!r}: scheme must be http or https")
    host = parsed.host
    try:
        ip = ipaddress.ip_address(host)
        loopback = ip in ipaddress.ip_network("127.0.0.0/8") or ip == ipaddress.ip_address("::1")
    except ValueError:  # a name: only localhost (resolving others could lead anywhere)
        loopback = host == "localhost"
    if not loopback:
        raise TrafficError(
            f"--url {url!r}: host {host!r} is not loopback; simulate-traffic only sends to "
            "127.0.0.0/8, ::1 or localhost"
        )
    return url


@dataclass(frozen=True)
class TrafficConfig:
    """One traffic run; validated on construction (every loop is bounded in count and time)."""

    url: str  # service root on a loopback host, e.g. http://127.0.0.1:8000
    out: Path  # outcomes.jsonl and summary.json go here
    requests: int = 1000  # at most this many requests ...
    seconds: float = 60.0  # ... and at most this long (in-flight requests then finish or time out)
    concurrency: int = 4  # requests in flight at once
    seed: int = 0  # traffic stream seed; the world's own seed is in its SimulatorConfig
    day: int | None = None  # simulated day index; None = the day after the logged days
    top_k: int | None = None  # sent with every request; None = the service returns all
    position_bias: float = 1.0  # exponent of the examination curve; 0 = no position effect
    timeout_s: float = 10.0  # per request
    ready_timeout_s: float = 60.0  # wait this long for GET /readyz == 200 before sending
    log_dir: Path | None = None  # also write the served rows as a Parquet log partition here
    events_redis_url: str | None = None  # also XADD the outcome events to this Redis ...
    events_stream: str = "ranker:events"  # ... stream (field `event`)

    def __post_init__(self) -> None:
        check_loopback(self.url)
        if not 1 <= self.requests <= MAX_REQUESTS:
            raise ValueError(f"requests must be in [1, {MAX_REQUESTS}], got {self.requests}")
        if not 0 < self.seconds <= MAX_SECONDS:
            raise ValueError(f"seconds must be in (0, {MAX_SECONDS:g}], got {self.seconds}")
        if not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise ValueError(
                f"concurrency must be in [1, {MAX_CONCURRENCY}], got {self.concurrency}"
            )
        if not 0 <= self.seed < 1_000_000:
            raise ValueError(f"seed must be in [0, 1e6), got {self.seed}")
        if self.day is not None and self.day < 0:
            raise ValueError(f"day must be >= 0, got {self.day}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        for name in ("position_bias", "timeout_s", "ready_timeout_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class Request:
    """One sampled request: who, when, and the candidate item indices."""

    request_id: int
    user_idx: int
    hour: int
    tab: int
    ts: int  # simulated ms since epoch, on the traffic day
    candidates: np.ndarray


@dataclass
class Served:
    """One answered request: what was shown, in order, and what the simulated user did."""

    request: Request
    items: np.ndarray  # item indices, best first
    expected: Expected  # with the position effect
    click: np.ndarray
    watch_time: np.ndarray
    variant: str
    model_version: str
    answered_ms: int  # wall clock when the response arrived: the events' time base


@dataclass
class TrafficSummary:
    sent: int
    served: int
    failed: int
    impressions: int
    clicks: int
    seconds: float
    latency_p50_ms: float  # of answered requests
    latency_p99_ms: float
    requests_by_variant: dict[str, int]
    errors: dict[str, int]  # message -> count
    files: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        rate = self.served / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"sent {self.sent} requests in {self.seconds:.1f} s ({rate:.0f}/s): {self.served} "
            f"served, {self.failed} failed",
            f"latency p50 {self.latency_p50_ms:.1f} ms, p99 {self.latency_p99_ms:.1f} ms",
            f"{self.impressions} impressions, click rate "
            f"{self.clicks / max(self.impressions, 1):.3f}",
            *(f"  {v}: {n} requests" for v, n in sorted(self.requests_by_variant.items())),
            *(f"  error x{n}: {message}" for message, n in self.errors.items()),
        ]
        return lines + [f"{label}: {path}" for label, path in self.files.items()]


def examination(positions: np.ndarray, position_bias: float) -> np.ndarray:
    """P(examined) of 0-based positions: (1 / log2(p + 2)) ** position_bias."""
    return (1.0 / np.log2(np.asarray(positions, dtype=np.float64) + 2.0)) ** position_bias


def sample_chunk(world: World, day: int, seed: int, chunk: int) -> list[Request]:
    """Requests chunk·CHUNK .. (chunk+1)·CHUNK − 1 of a run, from their own random stream (apart
    from the logs' streams), so request i is the same whatever the run's length."""
    config = world.config
    rng = np.random.default_rng([config.seed, 2, day, seed, chunk])  # 0: world, 1: logged days
    r = world.sample_requests(day, CHUNK, rng)
    sizes = rng.integers(config.min_impressions, config.max_impressions + 1, CHUNK)
    items = np.split(world.sample_candidates(day, sizes, rng), np.cumsum(sizes)[:-1])
    first = day * 10**12 + seed * MAX_REQUESTS + chunk * CHUNK
    rows = zip(r.user_idx.tolist(), r.hour.tolist(), r.tab.tolist(), r.ts.tolist(), items,
               strict=True)  # fmt: skip
    return [Request(first + j, *row) for j, row in enumerate(rows)]


def sample_requests(world: World, day: int, seed: int, n: int) -> Iterator[Request]:
    """The first `n` requests of a run, sampled a chunk at a time as they are consumed."""
    for chunk in range(-(-n // CHUNK)):
        yield from sample_chunk(world, day, seed, chunk)[: n - chunk * CHUNK]


def request_body(world: World, req: Request, top_k: int | None) -> dict[str, Any]:
    """The /rank body: user and context features, candidates with their item features."""
    user = {k: v[0].item() for k, v in world.user_features(np.array([req.user_idx])).items()}
    features = world.item_features(req.candidates, np.full(len(req.candidates), req.ts))
    tags = [row[row >= 0].tolist() for row in features.pop("tags")]
    columns = {k: v.tolist() for k, v in features.items()}
    candidates = [
        {"item_id": item, **{k: col[j] for k, col in columns.items()}, "tags": tags[j]}
        for j, item in enumerate(req.candidates.tolist())
    ]
    body: dict[str, Any] = {
        "request_id": str(req.request_id),
        "user": {"user_id": req.user_idx, **user},
        "context": {"hour": req.hour, "tab": req.tab},
        "candidates": candidates,
    }
    if top_k is not None:
        body["top_k"] = top_k
    return body


def served_order(response: httpx.Response, candidates: np.ndarray) -> tuple[np.ndarray, dict]:
    """Item indices the service returned, best first, and the response document."""
    if response.status_code != 200:
        try:
            message = response.json()["error"]["message"]
        except Exception:  # not the service's error shape: show the start of the body
            message = response.text[:200]
        raise TrafficError(f"HTTP {response.status_code}: {message}")
    try:
        doc = orjson.loads(response.content)
        served = np.array([item["item_id"] for item in doc["items"]], dtype=np.int64)
    except (KeyError, TypeError, ValueError) as exc:
        raise TrafficError(f"bad response: {exc!r}") from None
    if not np.isin(served, candidates).all() or len(np.unique(served)) != len(served):
        raise TrafficError("bad response: items that were not candidates, or repeated")
    return served, doc


async def rank(
    client: httpx.AsyncClient, body: bytes, candidates: np.ndarray, timeout: float
) -> tuple[np.ndarray, dict]:
    """POST /rank; TrafficError saying why when nothing usable came back in time."""
    try:
        # wait_for bounds the whole exchange: httpx's timeouts are per read or write.
        response = await asyncio.wait_for(client.post("/rank", content=body, headers=JSON), timeout)
    except TimeoutError:
        raise TrafficError(f"no answer within {timeout:g} s") from None
    except httpx.HTTPError as exc:
        raise TrafficError(f"{type(exc).__name__}: {exc}") from None
    return served_order(response, candidates)


def draw(
    world: World, req: Request, served: np.ndarray, position_bias: float
) -> tuple[Expected, np.ndarray, np.ndarray]:
    """Expected outcomes with the position effect, and drawn (click, watch_time).

    Each request has its own random stream, so outcomes do not depend on response order.
    """
    rng = np.random.default_rng([world.config.seed, 3, req.request_id])
    user, hour, tab, ts = (
        np.full(len(served), v) for v in (req.user_idx, req.hour, req.tab, req.ts)
    )
    truth = world.expected_outcomes(user, served, hour, tab, ts)
    seen = Expected(
        truth.p_click * examination(np.arange(len(served)), position_bias),
        truth.completion_given_click,
        truth.duration,
    )
    click, watch_time = world.draw_outcomes(seen, rng)
    return seen, click, watch_time


async def _wait_ready(client: httpx.AsyncClient, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        try:
            response = await client.get("/readyz")
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}: {response.text[:200]}"
        except httpx.TransportError as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            raise TrafficError(f"{client.base_url} not ready after {timeout:g} s ({last})")
        await asyncio.sleep(0.2)


async def _send(
    world: World, day: int, config: TrafficConfig
) -> tuple[list[Served], list[float], Counter[str], float]:
    """Wait for the service, then send; returns what was served, latencies, errors, seconds."""
    served: list[Served] = []
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    limits = httpx.Limits(max_connections=config.concurrency)
    # trust_env=False: a proxy from the environment must not take requests off the loopback.
    async with httpx.AsyncClient(
        base_url=config.url, timeout=config.timeout_s, limits=limits, trust_env=False
    ) as client:
        await _wait_ready(client, config.ready_timeout_s)
        begun = time.monotonic()
        deadline = begun + config.seconds
        # One generator shared by the workers: each request is taken once.
        pending = sample_requests(world, day, config.seed, config.requests)

        async def worker() -> None:
            for req in pending:
                if time.monotonic() >= deadline:
                    return
                body = orjson.dumps(request_body(world, req, config.top_k))
                started = time.perf_counter()
                try:
                    items, doc = await rank(client, body, req.candidates, config.timeout_s)
                except TrafficError as exc:
                    errors[str(exc)] += 1
                    continue
                latencies.append(time.perf_counter() - started)
                seen, click, watch = draw(world, req, items, config.position_bias)
                label = str(doc.get("experiment", {}).get("label", ""))
                version = str(doc.get("model_version"))
                answered = time.time_ns() // 1_000_000
                served.append(Served(req, items, seen, click, watch, label, version, answered))

        await asyncio.gather(*(worker() for _ in range(config.concurrency)))
    return served, latencies, errors, time.monotonic() - begun


def outcome_lines(served: list[Served]) -> bytes:
    """outcomes.jsonl content, one line per served item."""
    lines = []
    for s in served:
        req = s.request
        rows = zip(s.items.tolist(), s.click.tolist(), s.watch_time.tolist(),
                   s.expected.duration.tolist(), strict=True)  # fmt: skip
        for position, (item, click, watch, duration) in enumerate(rows):
            lines.append(orjson.dumps({
                "request_id": str(req.request_id), "user_id": req.user_idx, "item_id": item,
                "position": position, "click": click, "watch_time": watch, "duration": duration,
                "ts": req.ts, "variant": s.variant, "model_version": s.model_version,
            }))  # fmt: skip
    return b"".join(line + b"\n" for line in lines)


def events(served: list[Served]) -> list[bytes]:
    """Outcome events (training.log_inputs contract), one JSON document each."""
    out = []
    for s in served:
        request_id = str(s.request.request_id)
        for position in np.flatnonzero(s.click).tolist():
            item = int(s.items[position])
            clicked = s.answered_ms + 1000 * (position + 1)
            seconds = float(s.watch_time[position])
            out.append(orjson.dumps({"request_id": request_id, "item_id": item,
                                     "event": "click", "ts": clicked}))  # fmt: skip
            out.append(orjson.dumps({"request_id": request_id, "item_id": item, "event": "watch",
                                     "seconds": seconds, "ts": clicked + round(seconds * 1000)}))  # fmt: skip
    return out


def send_events(url: str, stream: str, lines: list[bytes]) -> None:
    """XADD the events to a Redis stream (field `event`), in pipelined batches."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
    try:
        for start in range(0, len(lines), 1000):
            pipe = client.pipeline(transaction=False)
            for line in lines[start : start + 1000]:
                pipe.xadd(stream, {"event": line})
            pipe.execute()
    except redis.RedisError as exc:
        raise TrafficError(f"cannot add events to redis stream {stream}: {exc}") from None
    finally:
        client.close()


def log_table(world: World, served: list[Served]) -> pa.Table:
    """The served rows in the training log contract (plus oracle, `position`, `variant`)."""
    sizes = np.array([len(s.items) for s in served], dtype=np.int64)

    def per_row(name: str) -> np.ndarray:
        return np.repeat([getattr(s.request, name) for s in served], sizes)

    users, ts = per_row("user_idx"), per_row("ts")
    items = np.concatenate([s.items for s in served])
    expected = Expected(*(np.concatenate([getattr(s.expected, k) for s in served])
                          for k in ("p_click", "completion_given_click", "duration")))  # fmt: skip
    item_features = world.item_features(items, ts)
    columns: dict[str, Any] = {
        "request_id": per_row("request_id"),
        "user_id": users,
        "item_id": items,
        "ts": ts,
        **world.user_features(users),
        "hour": per_row("hour"),
        "tab": per_row("tab"),
        **item_features,
        "tags": tags_array(item_features["tags"]),
        "click": np.concatenate([s.click for s in served]),
        "watch_time": np.concatenate([s.watch_time for s in served]),
        "oracle_click": expected.p_click,
        "oracle_watch_time": expected.watch_time,
        "oracle_completion": expected.completion,
        "position": np.concatenate([np.arange(n) for n in sizes]),
        "variant": np.repeat([s.variant for s in served], sizes),
    }
    arrays = [pa.array(columns[f.name], type=f.type) for f in TRAFFIC_SCHEMA]
    return pa.Table.from_arrays(arrays, schema=TRAFFIC_SCHEMA)


def _write_bytes(path: Path, content: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(content)
    os.replace(tmp, path)


def run_traffic(world: World, config: TrafficConfig) -> TrafficSummary:
    """Send the traffic, draw outcomes of what was served, write the outcome files."""
    day = world.config.days if config.day is None else config.day
    served, latencies, errors, seconds = asyncio.run(_send(world, day, config))
    served.sort(key=lambda s: s.request.request_id)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "outcomes": out / "outcomes.jsonl",
        "events": out / "events.jsonl",
        "summary": out / "summary.json",
    }
    _write_bytes(files["outcomes"], outcome_lines(served))
    event_lines = events(served)
    _write_bytes(files["events"], b"".join(line + b"\n" for line in event_lines))
    if config.events_redis_url is not None:
        send_events(config.events_redis_url, config.events_stream, event_lines)
    if config.log_dir is not None and served:
        iso = (date.fromisoformat(world.config.start_date) + timedelta(days=day)).isoformat()
        files["log"] = Path(config.log_dir) / f"day={iso}" / f"part-traffic-{config.seed}.parquet"
        write_parquet(log_table(world, served), files["log"])
    ms = np.asarray(latencies) * 1000.0
    summary = TrafficSummary(
        sent=len(served) + sum(errors.values()),
        served=len(served),
        failed=sum(errors.values()),
        impressions=sum(len(s.items) for s in served),
        clicks=int(sum(int(s.click.sum()) for s in served)),
        seconds=seconds,
        latency_p50_ms=float(np.percentile(ms, 50)) if len(ms) else float("nan"),
        latency_p99_ms=float(np.percentile(ms, 99)) if len(ms) else float("nan"),
        requests_by_variant=dict(Counter(s.variant for s in served)),
        errors=dict(errors.most_common(20)),
        files={k: str(v) for k, v in files.items()},
    )
    _write_bytes(files["summary"], orjson.dumps(asdict(summary), option=orjson.OPT_INDENT_2))
    return summary
