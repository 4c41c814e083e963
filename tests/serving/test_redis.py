"""Redis experiment store and impression stream, against a real Redis (fails when none answers)."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from ranker.experiment_store import RedisStore, StaleVersionError, StoreError
from ranker.experiments import ExperimentConfig
from serving.settings import Settings
from tests.serving.conftest import AUTH, REDIS_URL, OwnRedis, sample, serve, wait_for

pytestmark = pytest.mark.anyio


def weights_config(click: float, version: str = "v0002") -> ExperimentConfig:
    return ExperimentConfig.from_dict(
        {
            "version": 1,
            "salt": "redis-test",
            "default": {
                "model": {"name": "ranker", "version": version},
                "score": {"weights": {"click": click, "completion": 1.0}},
            },
        }
    )


def store_for(settings: Settings, url: str = REDIS_URL) -> RedisStore:
    return RedisStore(
        url, settings.experiments_key, settings.experiments_channel, Path(settings.registry)
    )


def test_store_versions_are_atomic_and_stale_writes_refused(redis_settings: Settings) -> None:
    store = store_for(redis_settings)
    try:
        with pytest.raises(StoreError, match="no experiment config stored"):
            store.load()
        first = store.save(weights_config(1.0), expected_version=0)
        assert first.version == 1
        assert store.load() == first
        assert store.poll() == 1
        with pytest.raises(StaleVersionError):
            store.save(weights_config(2.0), expected_version=0)
        second = store.save(weights_config(2.0), expected_version=1)
        assert second.version == 2 and store.load().default_score.weights["click"] == 2.0
        third = store.save(weights_config(3.0))  # unconditional
        assert third.version == 3
    finally:
        store.close()


def test_empty_store_is_seeded_once(redis_settings: Settings) -> None:
    calls = []

    def seed() -> ExperimentConfig:
        calls.append(1)
        return weights_config(1.0)

    store = RedisStore(
        REDIS_URL,
        redis_settings.experiments_key,
        redis_settings.experiments_channel,
        Path(redis_settings.registry),
        seed=seed,
    )
    try:
        assert store.load().version == 1
        assert store.load().version == 1
        assert calls == [1]
    finally:
        store.close()


async def test_config_change_via_redis_is_picked_up_without_restart(
    redis_settings: Settings, body: dict[str, Any]
) -> None:
    # A long poll interval: only the pub/sub hint can deliver the change this fast.
    async with serve(replace(redis_settings, poll_interval_s=30)) as served:
        manager = served.service.manager
        assert manager.state is not None and manager.state.config.version == 1  # seeded from file
        before = (await served.client.post("/rank", json=body)).json()
        assert before["experiment"]["layers"][0]["layer"] == "weights"

        store = store_for(redis_settings)
        try:
            store.save(weights_config(0.25, version="v0001"))
        finally:
            store.close()
        await wait_for(lambda: manager.state.config.version == 2, timeout=5)
        after = (await served.client.post("/rank", json=body)).json()
        assert after["model_version"] == "ranker/v0001"
        assert after["experiment"]["layers"] == []
        ready = (await served.client.get("/readyz")).json()
        assert ready["config"]["version"] == 2 and ready["store"]["ok"]


async def test_change_is_picked_up_by_polling_when_pubsub_is_missed(
    redis_settings: Settings,
) -> None:
    async with serve(replace(redis_settings, poll_interval_s=0.2)) as served:
        manager = served.service.manager
        client = redis.Redis.from_url(REDIS_URL)
        # Written behind the store's back: no pub/sub message at all.
        stored = ExperimentConfig.from_dict({**weights_config(0.5).to_dict(), "version": 7})
        client.hset(
            redis_settings.experiments_key, mapping={"version": 7, "config": stored.to_json()}
        )
        client.close()
        await wait_for(lambda: manager.state.config.version == 7, timeout=5)


async def test_put_experiments_stores_in_redis_for_other_replicas(
    redis_settings: Settings,
) -> None:
    async with serve(redis_settings) as first, serve(redis_settings) as second:
        doc = weights_config(0.75, version="v0001").to_dict()
        response = await first.client.put("/experiments", json=doc, headers=AUTH)
        assert response.status_code == 200, response.text
        assert response.json()["version"] == 2
        await wait_for(lambda: second.service.manager.state.config.version == 2, timeout=5)
        got = await second.client.get("/experiments", headers=AUTH)
        assert got.json()["default"]["score"]["weights"]["click"] == 0.75


async def test_bad_config_in_redis_keeps_last_good_state(
    redis_settings: Settings, body: dict[str, Any]
) -> None:
    async with serve(replace(redis_settings, poll_interval_s=0.2)) as served:
        manager = served.service.manager
        good = manager.state
        store = store_for(redis_settings)
        try:
            store.save(weights_config(1.0, version="v0077"))  # no such model version
        finally:
            store.close()
        await wait_for(lambda: manager.status.rejected is not None, timeout=5)
        assert manager.state is good
        assert "v0077" in manager.status.rejected
        assert (await served.client.post("/rank", json=body)).status_code == 200
        ready = (await served.client.get("/readyz")).json()
        assert ready["ready"] and "v0077" in ready["rejected"]


async def test_redis_down_keeps_last_good_config(
    redis_settings: Settings, own_redis: OwnRedis, body: dict[str, Any]
) -> None:
    settings = replace(redis_settings, redis_url=own_redis.url, poll_interval_s=0.2)
    async with serve(settings) as served:
        manager = served.service.manager
        assert (await served.client.post("/rank", json=body)).status_code == 200
        await wait_for(lambda: served.service.impressions.written == 1)
        version = manager.state.config.version

        own_redis.stop()
        await wait_for(lambda: not manager.status.ok, timeout=10)
        for i in range(5):
            response = await served.client.post("/rank", json={**body, "request_id": f"down-{i}"})
            assert response.status_code == 200, response.text
        time.sleep(0.3)  # let the config age grow past the poll interval

        ready = await served.client.get("/readyz")
        assert ready.status_code == 200  # still serving: the last good config is kept
        doc = ready.json()
        assert doc["ready"] and doc["config"]["version"] == version
        assert doc["store"]["ok"] is False and doc["store"]["error"]
        assert doc["store"]["errors"] >= 1 and doc["store"]["config_age_s"] > 0.2
        metrics = (await served.client.get("/metrics")).text
        assert sample(metrics, "ranker_store_up") == 0
        assert sample(metrics, "ranker_config_version") == version
        assert (sample(metrics, "ranker_config_age_seconds") or 0) > 0.2
        # Impressions that cannot reach the stream are counted, not lost silently.
        await wait_for(lambda: served.service.impressions.failed == 5, timeout=15)
        metrics = (await served.client.get("/metrics")).text
        assert sample(metrics, "ranker_impressions_total", outcome="failed") == 5


async def test_impressions_go_to_the_redis_stream(
    redis_settings: Settings, body: dict[str, Any]
) -> None:
    async with serve(redis_settings) as served:
        for i in range(4):
            response = await served.client.post(
                "/rank", json={**body, "request_id": f"s-{i}", "top_k": 2}
            )
            assert response.status_code == 200
        await wait_for(lambda: served.service.impressions.written == 4)
    client = redis.Redis.from_url(REDIS_URL)
    try:
        entries = client.xrange(redis_settings.impressions_stream)
    finally:
        client.close()
    records = [orjson.loads(fields[b"record"]) for _, fields in entries]
    assert [r["request_id"] for r in records] == ["s-0", "s-1", "s-2", "s-3"]
    assert all(len(r["item_ids"]) == 2 and len(r["scores"]) == 2 for r in records)
    assert records[0]["layers"][0]["layer"] == "weights"
