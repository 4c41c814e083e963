"""`ranker build-log` on the real path: the real service (uvicorn on 127.0.0.1, real ONNX Runtime)
logs what it served, with the features, to JSONL or to its Redis stream; `simulate-traffic` sends
requests and emits outcome events (JSONL, Redis stream); build-log joins them into a training day
that `read_log` validates, that reproduces the served predictions exactly (no training/serving
skew), and that `ranker retrain` reads. The join's edge cases run on records in the service's
format with crafted events: every event is accounted for exactly once."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow.parquet as pq
import pytest
import uvicorn
import yaml

from cli.main import main
from ranker.features import FeatureEncoder
from ranker.registry import load_manifest
from serving.app import create_app
from serving.settings import Settings
from tests.conftest import REDIS_URL, TINY
from tests.serving.conftest import AB_FILE, free_port
from training.build_log import MANIFEST, PART, BuildConfig, Source, build_log
from training.data import encode_log, read_log
from training.log_inputs import parse_event
from training.retrain.config import ENV_KEYS, load_retrain_config
from training.retrain.run import run_once
from training.tune import onnx_predict

WORLD_ARGS = ["--users", str(TINY.users), "--items", str(TINY.items), "--authors",
              str(TINY.authors), "--days", str(TINY.days), "--requests-per-day",
              str(TINY.requests_per_day)]  # fmt: skip
DAY_MS = 86_400_000


@dataclass
class Live:
    url: str
    settings: Settings
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        """Shut down (the lifespan drains the impression writer) and wait for it."""
        self.server.should_exit = True
        self.thread.join(30)
        assert not self.thread.is_alive(), "service did not stop"


def start(settings: Settings) -> Live:
    port = free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, ws="none",
                            log_level="warning", lifespan="on")  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-service", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "service did not start"
        time.sleep(0.05)
    return Live(f"http://127.0.0.1:{port}", settings, server, thread)


def service_settings(tiny_model: Path, tmp_path: Path, **extra: Any) -> Settings:
    experiments = tmp_path / "experiments.yaml"
    shutil.copy(AB_FILE, experiments)
    return Settings(
        registry=tiny_model.parent.parent,
        experiments_file=experiments,
        impression_log=tmp_path / "impressions.jsonl",
        warmup_counts=(1, 10),
        intra_op_threads=1,
        freeze_gc=False,
        gc_threshold=0,
        **extra,
    )


@pytest.fixture
def jsonl_service(tiny_model: Path, tmp_path: Path) -> Iterator[Live]:
    live = start(service_settings(tiny_model, tmp_path))
    try:
        yield live
    finally:
        live.stop()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


# -- the real path -------------------------------------------------------------------------------
def test_served_traffic_and_events_become_a_training_day_with_the_served_features(
    jsonl_service: Live, tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    traffic, logs = tmp_path / "traffic", tmp_path / "logs"
    args = ["simulate-traffic", "--url", jsonl_service.url, "--out", str(traffic), "--requests",
            "40", "--concurrency", "4", *WORLD_ARGS]  # fmt: skip
    assert main(args) == 0
    jsonl_service.stop()  # flushes the impression log
    impressions = jsonl_service.settings.impression_log
    assert impressions is not None
    records = read_jsonl(impressions)
    outcomes = read_jsonl(traffic / "outcomes.jsonl")
    events = read_jsonl(traffic / "events.jsonl")
    clicks = sum(o["click"] for o in outcomes)
    assert len(records) == 40 and all("features" in r for r in records)
    # The traffic driver's events are in the contract: a click and a watch per clicked item.
    parsed = [parse_event(e) for e in events]
    assert not [p for p in parsed if isinstance(p, str)]
    assert len(events) == 2 * clicks > 0
    capsys.readouterr()
    assert main(["build-log", "--impressions", str(impressions), "--events",
                 str(traffic / "events.jsonl"), "--out", str(logs), "--open-days"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert f"{today()}: {len(outcomes)} rows, 40 requests, {clicks} clicks" in printed
    assert f"events.joined: click: {clicks}" in printed
    assert f"events.joined: watch: {clicks}" in printed
    assert "not joined" not in printed and "skipped" not in printed

    # A valid training log of today, whose labels are the outcomes and positions the served ones.
    manifest = load_manifest(tiny_model)
    log = read_log(logs, manifest.spec(), oracle=False)
    assert log.days() == [today()] and log.rows == len(outcomes)
    table = log.table
    columns = [table[k].to_pylist() for k in ("request_id", "item_id", "click", "watch_time")]
    built = {(str(r), int(i)): (c, w) for r, i, c, w in zip(*columns, strict=True)}
    truth = {(o["request_id"], o["item_id"]): (o["click"], o["watch_time"]) for o in outcomes}
    assert built.keys() == truth.keys()
    for key, (click, watch) in truth.items():
        assert built[key][0] == click and built[key][1] == pytest.approx(watch, rel=1e-6), key
    parquet = read_log(logs / f"day={today()}" / PART, manifest.spec(), oracle=False)
    assert parquet.rows == log.rows
    raw = pq.read_table(logs / f"day={today()}" / PART)
    ids = zip(raw["request_id"].to_pylist(), raw["item_id"].to_pylist(), strict=True)
    positions = {
        (str(r), int(i)): p for (r, i), p in zip(ids, raw["position"].to_pylist(), strict=True)
    }
    assert positions == {(o["request_id"], o["item_id"]): o["position"] for o in outcomes}

    # No skew: the served model on the built rows reproduces the predictions it served.
    data = encode_log(log, FeatureEncoder(manifest.spec()))
    predicted = onnx_predict(tiny_model, manifest, data)
    served = {
        (r["request_id"], item): (r["predictions"]["click"][p], r["predictions"]["watch_time"][p])
        for r in records
        for p, item in enumerate(r["item_ids"])
    }
    keys = list(
        zip(map(str, table["request_id"].to_pylist()), table["item_id"].to_pylist(), strict=True)
    )
    want = np.array([served[k] for k in keys])
    got = np.stack([predicted["click"], predicted["watch_time"]], axis=1)
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, float(np.abs(want).max()))


def test_redis_streams_to_a_day_the_retrainer_gates_on(
    tiny_model: Path, tiny_log: Path, tmp_path: Path, redis_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    live = start(
        service_settings(tiny_model, tmp_path, redis_url=REDIS_URL, redis_prefix=redis_prefix)
    )
    try:
        args = ["simulate-traffic", "--url", live.url, "--out", str(tmp_path / "traffic"),
                "--requests", "60", "--events-redis-url", REDIS_URL, "--events-stream",
                f"{redis_prefix}:events", *WORLD_ARGS]  # fmt: skip
        assert main(args) == 0
    finally:
        live.stop()
    built = tmp_path / "built"
    summary = build_log(
        BuildConfig(
            impressions=Source(redis_url=REDIS_URL, stream=f"{redis_prefix}:impressions"),
            events=Source(redis_url=REDIS_URL, stream=f"{redis_prefix}:events"),
            out=built,
            open_days=True,
        )
    )
    outcomes = read_jsonl(tmp_path / "traffic" / "outcomes.jsonl")
    clicks = sum(o["click"] for o in outcomes)
    assert (
        summary.days[today()]["rows"] == len(outcomes)
        and summary.counts["impressions.records"] == 60
    )
    assert (
        summary.counts["events.joined: click"] == summary.counts["events.joined: watch"] == clicks
    )
    # The retrainer reads it: the simulated days train and validate, the served day gates.
    for variable in ENV_KEYS:
        monkeypatch.delenv(variable, raising=False)
    doc = {
        "train": {
            "model": {"kind": "mmoe", "config": {"num_experts": 3, "expert_units": [16],
                                                 "tower_units": [8], "embedding_dim": 4}},
            "aux": {"bottleneck_units": 4},
            "train": {"epochs": 1, "batch_size": 256, "max_steps_per_epoch": 2, "threads": 1},
        },
        "data": {"paths": [str(tiny_log), str(built)]},
        "window_days": TINY.days + 1,
        "registry": str(tmp_path / "models"),
        "experiments": {"file": str(tmp_path / "retrain-experiments.yaml")},
        "runs_dir": str(tmp_path / "runs"),
        "report_dir": str(tmp_path / "reports"),
    }  # fmt: skip
    (tmp_path / "retrain.yaml").write_text(yaml.safe_dump(doc))
    out = run_once(load_retrain_config(tmp_path / "retrain.yaml", environ={}))
    assert out.window["gate"] == [today()] and out.decision == "publish", out.reason
    assert out.candidate_metrics is not None and out.candidate_metrics["click"]["auc"] > 0


# -- the join's edge cases -----------------------------------------------------------------------
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def record(request_id: str, ts: int, items: list[int], features: bool = True) -> dict[str, Any]:
    """An impression record in the service's format (see test_served_traffic_...)."""
    doc: dict[str, Any] = {
        "request_id": request_id, "user_id": 7, "ts": ts, "model": "ranker",
        "model_version": "v0001", "variant": "default", "layers": [], "item_ids": items,
        "scores": [1.0] * len(items), "predictions": {"click": [0.1] * len(items)},
    }  # fmt: skip
    if features:
        doc["positions"] = list(range(len(items)))
        doc["features"] = {
            "user": {"user_id": 7, "device": "d1"},
            "context": {"hour": 3, "tab": 1},
            "items": {
                "duration": [30.0] * (len(items) - 1) + [None],  # the last has no duration
                "tags": [[1, 2]] * len(items),
                "category": [5] * len(items),
            },
        }
    return doc


def test_every_event_is_joined_or_counted_with_its_reason(tmp_path: Path) -> None:
    imp, ev = tmp_path / "impressions.jsonl", tmp_path / "events.jsonl"
    records = [
        record("a", T0 + 1000, [1, 2, 3]),
        record("b", T0 + 2000, [4, 5]),
        record("a", T0 + 3000, [9]),  # a repeated request id: the first record is kept
        record("off", T0 + 4000, [6], features=False),
        record("next", T0 + DAY_MS + 5000, [7, 8]),  # the next day: still open
    ]
    imp.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records) + b"not json\n")
    ev_docs: list[Any] = [
        {"request_id": "a", "item_id": 1, "event": "click", "ts": T0 + 2000},
        {"request_id": "a", "item_id": 1, "event": "watch", "seconds": 12.5, "ts": T0 + 9000},
        {"request_id": "a", "item_id": 1, "event": "click", "ts": T0 + 2500},  # duplicate
        {"request_id": "a", "item_id": "2", "event": "watch", "seconds": 4, "ts": T0 + 5000},
        {"request_id": "b", "item_id": 4, "event": "click", "ts": T0 + 2000 + 7_200_000},  # late
        {"request_id": "b", "item_id": 5, "event": "click", "ts": T0 + 2000 - 120_000},  # early
        {"request_id": "b", "item_id": 99, "event": "click", "ts": T0 + 3000},  # unknown item
        {"request_id": "zz", "item_id": 1, "event": "click", "ts": T0 + 3000},  # unknown request
        {"request_id": "a", "item_id": 3, "event": "like", "ts": T0 + 3000},  # bad type
        {"request_id": "a", "item_id": 3, "event": "watch", "seconds": -1, "ts": T0 + 3000},
        {"request_id": "a", "item_id": 3, "event": "click"},  # no ts
        {"request_id": "next", "item_id": 7, "event": "click", "ts": T0 + DAY_MS + 6000},
        [1, 2],  # not an object
    ]
    ev.write_bytes(b"".join(orjson.dumps(d) + b"\n" for d in ev_docs))
    now = T0 + DAY_MS + 3_600_000 + 1  # day 1 closed (end + the 1 h window), day 2 open
    config = BuildConfig(Source((str(imp),)), Source((str(ev),)), tmp_path / "out", now_ms=now)
    summary = build_log(config)
    counts = summary.counts
    assert counts == {
        "impressions.invalid: not JSON": 1,
        "impressions.records": 3,
        "impressions.skipped: no features (served with RANKER_LOG_FEATURES off)": 1,
        "impressions.skipped: repeated request_id (first kept)": 1,
        "events.joined: click": 1,
        "events.joined: watch": 2,
        "events.not joined: duplicate": 1,
        "events.not joined: late (beyond the window)": 1,
        "events.not joined: before its impression": 1,
        "events.not joined: unknown item": 1,
        "events.not joined: unknown request": 1,
        "events.invalid: event": 1,
        "events.invalid: seconds": 1,
        "events.invalid: ts": 1,
        "events.invalid: not a JSON object": 1,
        "events.for days not built in this run": 1,
        "events.watch without a click event (click implied)": 1,
        "rows.skipped: no duration > 0, or the item repeated in its request": 2,
    }
    # Every event line is accounted for exactly once.
    assert sum(
        n for k, n in counts.items() if k.startswith("events.") and "implied" not in k
    ) == len(ev_docs)
    rejected = read_jsonl(Path(summary.files["rejected"]))
    assert len(rejected) == 1 + 5 + 4  # impression line + events not joined + invalid events
    assert {"where", "reason", "doc"} <= set(rejected[0])
    assert summary.skipped_days == {"2026-01-02": "still open to late events"}
    day = tmp_path / "out" / "day=2026-01-01"
    table = pq.read_table(day / PART)
    names = ("request_id", "item_id", "click", "watch_time", "position")
    rows = {
        (r, i): rest for r, i, *rest in zip(*(table[k].to_pylist() for k in names), strict=True)
    }
    assert rows == {
        ("a", 1): [1, 12.5, 0],
        ("a", 2): [1, 4.0, 1],  # watch implies the click; "2" and 2 are one item
        ("b", 4): [0, 0.0, 0],  # its late click did not join
    }
    assert table["hour"].to_pylist() == [3, 3, 3] and table["tags"].to_pylist()[0] == [1, 2]
    assert orjson.loads((day / MANIFEST).read_bytes())["closed"] is True
    # Closed days are built once; the open one is built when it closes.
    again = build_log(BuildConfig(config.impressions, config.events, config.out, now_ms=now))
    assert again.skipped_days["2026-01-01"] == "already built" and not again.days
    later = build_log(
        BuildConfig(config.impressions, config.events, config.out, now_ms=now + DAY_MS)
    )
    assert list(later.days) == ["2026-01-02"] and later.days["2026-01-02"]["clicks"] == 1


def test_a_source_is_files_or_a_stream(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="impressions: give JSONL paths or a Redis URL"):
        build_log(BuildConfig(Source(), Source((str(tmp_path),)), tmp_path / "out"))
    assert main(["build-log", "--impressions", str(tmp_path / "missing.jsonl"), "--events",
                 str(tmp_path), "--out", str(tmp_path / "out")]) == 2  # fmt: skip
