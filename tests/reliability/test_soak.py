"""Soak (slow): minutes of concurrent /rank load on a real uvicorn server process on 127.0.0.1
while the experiment config changes every few seconds and models hot-swap (reload, and new
published versions the config switches to). Zero failed requests; RSS growth bounded.

RANKER_SOAK_SECONDS (default 120) sets the duration, RANKER_SOAK_MAX_RSS_GROWTH_MB (150) the bound.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from serving.settings import Settings
from tests.reliability.harness import Load, metric, record, rss_mb
from tests.serving.conftest import AUTH, republish, server_process

pytestmark = pytest.mark.slow
SECONDS = float(os.environ.get("RANKER_SOAK_SECONDS", "120"))
MAX_GROWTH_MB = float(os.environ.get("RANKER_SOAK_MAX_RSS_GROWTH_MB", "150"))
WORKERS = 4
CHANGE_EVERY_S = 3.0


def server(settings: Settings, tmp_path: Path) -> Any:
    """The service in its own process, its impression log in `tmp_path`, polling every 0.5 s."""
    settings = replace(settings, impression_log=tmp_path / "impressions.jsonl")
    return server_process(
        settings, tmp_path, RANKER_WARMUP_COUNTS="1,20", RANKER_POLL_INTERVAL_S="0.5"
    )


def load_worker(
    base: str, body: dict[str, Any], worker: int, load: Load, stop: threading.Event
) -> None:
    with httpx.Client(base_url=base, timeout=10) as client:
        i = 0
        while not stop.is_set():
            started = time.perf_counter()
            try:
                response = client.post("/rank", json={**body, "request_id": f"s{worker}-{i}"})
                load.note(response, time.perf_counter() - started)
            except httpx.HTTPError as exc:
                load.note(None, 0.0, f"{type(exc).__name__}: {exc}")
            i += 1


def weights(version: str, step: int) -> dict[str, Any]:
    heavy = step % 2 == 1
    return {
        "salt": "soak",
        "default": {
            "model": {"name": "ranker", "version": version},
            "score": {"weights": {"click": 1.0, "watch_time": 0.5 if heavy else 0.1}},
        },
        "layers": [
            {
                "name": "weights",
                "buckets": 100,
                "variants": [
                    {
                        "name": "heavy" if heavy else "light",
                        "buckets": [0, 50],
                        "score": {"weights": {"click": 0.5, "completion": 1.0 if heavy else 0.2}},
                    }
                ],
            }
        ],
    }


def test_soak(settings: Settings, body: dict[str, Any], tmp_path: Path) -> None:
    admin: dict[str, int] = {"config_changes": 0, "reloads": 0, "publishes": 0}
    admin_failures: list[str] = []
    samples: list[float] = []
    load, stop = Load(), threading.Event()
    with (
        server(settings, tmp_path) as (base, process),
        httpx.Client(base_url=base, timeout=30, headers=AUTH) as client,
    ):
        for i in range(300):  # warm: allocator pools, ORT arenas, the first swaps' garbage
            assert client.post("/rank", json={**body, "request_id": f"warm-{i}"}).status_code == 200
        rss_before = rss_mb(process.pid)
        threads = [
            threading.Thread(target=load_worker, args=(base, body, w, load, stop), daemon=True)
            for w in range(WORKERS)
        ]
        load.started = time.monotonic()
        for thread in threads:
            thread.start()
        version, step = "v0002", 0
        try:
            while time.monotonic() - load.started < SECONDS:
                time.sleep(CHANGE_EVERY_S)
                samples.append(rss_mb(process.pid))
                step += 1
                if step % 4 == 0:  # a new version: published, then the config switches to it
                    version = republish(settings.registry, version)
                    admin["publishes"] += 1
                if step % 3 == 0:
                    response = client.post("/models/reload")
                    admin["reloads"] += 1
                else:
                    response = client.put("/experiments", json=weights(version, step))
                    admin["config_changes"] += 1
                if response.status_code != 200:
                    admin_failures.append(f"{response.status_code}: {response.text[:300]}")
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=30)
            load.seconds = time.monotonic() - load.started
        rss_after = rss_mb(process.pid)
        metrics = client.get("/metrics").text
        ready = client.get("/readyz").json()
    served_ok = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("ranker_requests_total{") and 'status="200"' in line
    )
    summary = {
        **load.summary(),
        "workers": WORKERS,
        "admin": admin,
        "admin_failures": admin_failures,
        "rss_mb": {
            "before": round(rss_before, 1),
            "after": round(rss_after, 1),
            "max": round(max([rss_after, *samples]), 1),
            "growth": round(rss_after - rss_before, 1),
        },
        "swaps": metric(metrics, "ranker_swaps_total"),
        "final_model": [m["model"] for m in ready["models"]],
        "server_counted_ok": served_ok,
    }
    record("soak", summary)
    print(summary)
    assert load.failed == 0 and load.ok > 0, summary
    assert not admin_failures, summary
    assert served_ok == load.ok + 300  # the server counted every request the clients sent
    assert len(load.versions) >= 2 and ready["models"][0]["model"] == f"ranker/{version}"
    assert rss_after - rss_before < MAX_GROWTH_MB, summary
