"""Hot swaps (config changes and model reloads) while requests are in flight lose none."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest

from ranker.experiments import ExperimentConfig
from serving.settings import Settings
from tests.serving.conftest import AUTH, serve

pytestmark = pytest.mark.anyio


def config(version: str, click: float) -> dict[str, Any]:
    return {
        "salt": "swap",
        "default": {
            "model": {"name": "ranker", "version": version},
            "score": {"weights": {"click": click, "watch_time": 0.1}},
        },
    }


async def test_swaps_under_concurrent_requests_lose_none(
    settings: Settings, body: dict[str, Any]
) -> None:
    async with serve(replace(settings, poll_interval_s=0.1)) as served:
        client = served.client
        manager = served.service.manager
        stop = asyncio.Event()
        statuses: list[int] = []
        versions: set[str] = set()

        async def traffic(worker: int) -> None:
            i = 0
            while not stop.is_set():
                response = await client.post("/rank", json={**body, "request_id": f"w{worker}-{i}"})
                statuses.append(response.status_code)
                if response.status_code == 200:
                    versions.add(response.json()["model_version"])
                i += 1
                await asyncio.sleep(0)

        async def swapper() -> None:
            for round_ in range(4):
                version = ("v0001", "v0002")[round_ % 2]
                put = await client.put(
                    "/experiments", json=config(version, 1.0 + round_), headers=AUTH
                )
                assert put.status_code == 200, put.text
                reload = await client.post("/models/reload", headers=AUTH)
                assert reload.status_code == 200, reload.text
            # and one change that arrives through the store watcher, not the API
            stored = manager.store.save(
                ExperimentConfig.from_dict({**config("v0001", 9.0), "version": 1})
            )
            while manager.state is None or manager.state.config.version != stored.version:
                await asyncio.sleep(0.05)
            stop.set()

        swaps_before = manager.status.swaps
        await asyncio.wait_for(asyncio.gather(swapper(), *(traffic(w) for w in range(6))), 60)
        assert manager.status.swaps - swaps_before >= 9
        assert len(statuses) > 50
        assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
        assert versions == {"ranker/v0001", "ranker/v0002"}
