"""POST /rank with dynamic batching (RANKER_BATCH_MAX_REQUESTS) through the real app: concurrent
requests on a batched version share runs and get exactly what they get one by one; a version
whose graph is not batched is served unbatched; a failed run fails its batch's requests with the
error /rank always gives, and the next batch runs."""

from __future__ import annotations

import asyncio
import logging
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from ranker.registry import load_manifest
from serving.models import LoadedModel
from serving.settings import Settings
from serving.state import ServingState
from tests.serving.conftest import Served, body_of, requests_of, sample, serve

pytestmark = pytest.mark.anyio

SINGLE, BATCHED = "v0001", "v0002"  # the tiny run's single-request and batched graphs
CONCURRENT = 8


@pytest.fixture
def batch_settings(settings: Settings, tiny_batched_registry: Path, tmp_path: Path) -> Settings:
    """The serving fixture's settings on a copy of the registry with the batched export."""
    registry = tmp_path / "batched-models"
    shutil.copytree(tiny_batched_registry, registry)
    return replace(settings, registry=registry)


def serving(settings: Settings, version: str, batch: int) -> Settings:
    """Everyone on `version`; RANKER_BATCH_MAX_REQUESTS=`batch`, no wait for company."""
    path = Path(str(settings.experiments_file)).with_name(f"experiments-{version}.yaml")
    score = {"formula": "weighted_sum", "weights": {"click": 1.0, "watch_time": 0.2}}
    default = {"model": {"name": "ranker", "version": version}, "score": score}
    path.write_text(yaml.safe_dump({"version": 1, "salt": "batching", "default": default}))
    return replace(settings, experiments_file=path, batch_max_requests=batch, batch_max_delay_us=0)


@pytest.fixture
def bodies(log_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Eight requests of different users and candidate counts."""
    requests = list(requests_of(log_rows).values())[:CONCURRENT]
    return [body_of(rows, request_id=f"batch-{i}") for i, rows in enumerate(requests)]


def state_of(served: Served) -> ServingState:
    state = served.service.manager.state
    assert state is not None, served.service.manager.not_ready_reason
    return state


def model_of(served: Served) -> LoadedModel:
    return next(iter(state_of(served).models.values()))


async def one_by_one(served: Served, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for body in bodies:
        response = await served.client.post("/rank", json=body)
        assert response.status_code == 200, response.text
        out.append(response.json())
    return out


async def together(served: Served, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    responses = await asyncio.gather(*(served.client.post("/rank", json=b) for b in bodies))
    assert [r.status_code for r in responses] == [200] * len(bodies), responses[0].text
    return [r.json() for r in responses]


def assert_same_ranking(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    """Same items in the same order (up to candidates whose scores tie within 1e-5), same
    scores and per-task predictions (1e-5)."""
    for mine, theirs in zip(got, want, strict=True):
        assert mine["request_id"] == theirs["request_id"]
        a, b = mine["items"], theirs["items"]
        assert len(a) == len(b)
        np.testing.assert_allclose([x["score"] for x in a], [x["score"] for x in b], atol=1e-5)
        for pos, (x, y) in enumerate(zip(a, b, strict=True)):
            if x["item_id"] != y["item_id"]:
                assert abs(a[pos]["score"] - b[pos]["score"]) < 1e-5
        by_id = {y["item_id"]: y for y in b}
        for x in a:
            for task, value in x["predictions"].items():
                assert value == pytest.approx(by_id[x["item_id"]]["predictions"][task], abs=1e-5)


async def test_concurrent_requests_share_runs_and_equal_one_by_one(
    batch_settings: Settings, bodies: list[dict[str, Any]]
) -> None:
    manifest = load_manifest(batch_settings.registry / "ranker" / BATCHED)
    assert manifest.batched and "batched" in manifest.exporter["parity"]
    async with serve(serving(batch_settings, BATCHED, 0)) as served:
        assert not state_of(served).batching
        want = await one_by_one(served, bodies)
    async with serve(serving(batch_settings, BATCHED, CONCURRENT)) as served:
        assert state_of(served).batching
        batcher = model_of(served).batcher
        assert batcher is not None
        got = await together(served, bodies)
        # The worker ends with its queue: a version a swap drops leaves no task behind.
        assert not batcher.running
        assert_same_ranking(got, want)
        assert all(r["model_version"] == f"ranker/{BATCHED}" for r in got)
        # Every request went through the batcher, and at least one run held several.
        assert sum(size * n for size, n in batcher.batch_sizes.items()) == CONCURRENT
        assert max(batcher.batch_sizes) > 1
        scrape = (await served.client.get("/metrics")).text
        model = f"ranker/{BATCHED}"
        assert sample(scrape, "ranker_batch_requests_sum", model=model) == CONCURRENT
        runs = sample(scrape, "ranker_batch_requests_count", model=model)
        assert runs is not None and runs == sum(batcher.batch_sizes.values()) < CONCURRENT
        # One request alone still runs at once (no timer) and equals its one-by-one answer.
        alone = await one_by_one(served, bodies[:1])
        assert_same_ranking(alone, want[:1])


async def test_a_version_without_a_batched_graph_is_served_unbatched(
    batch_settings: Settings, bodies: list[dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    async with serve(serving(batch_settings, BATCHED, 0)) as served:
        want = await one_by_one(served, bodies)
    with caplog.at_level(logging.WARNING, logger="ranker.serving.models"):
        async with serve(serving(batch_settings, SINGLE, CONCURRENT)) as served:
            state = state_of(served)
            assert not state.batching
            assert all(m.batcher is None for m in state.models.values())
            got = await together(served, bodies)
            scrape = (await served.client.get("/metrics")).text
    # The single-request graph of the same run: the same rankings as the batched graph's.
    assert_same_ranking(got, want)
    assert sample(scrape, "ranker_batch_requests_count", model=f"ranker/{SINGLE}") is None
    warned = [r for r in caplog.records if "not batched" in r.getMessage()]
    assert len(warned) == 1 and f"ranker/{SINGLE}" in warned[0].getMessage()


class BrokenSession:
    """Stands in for the ONNX Runtime session: every run fails."""

    def run(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("device lost")


async def test_a_failed_run_fails_its_batch_with_the_usual_error_and_the_next_batch_runs(
    batch_settings: Settings, bodies: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with serve(serving(batch_settings, BATCHED, 0)) as served:
        model = model_of(served)
        monkeypatch.setattr(model.onnx, "session", BrokenSession())
        unbatched = await served.client.post("/rank", json=bodies[0])
    assert unbatched.status_code == 503
    assert "device lost" in unbatched.json()["error"]["message"]
    async with serve(serving(batch_settings, BATCHED, CONCURRENT)) as served:
        model = model_of(served)
        session = model.onnx.session
        monkeypatch.setattr(model.onnx, "session", BrokenSession())
        failed = await asyncio.gather(*(served.client.post("/rank", json=b) for b in bodies[:4]))
        for response in failed:
            assert response.status_code == 503
            assert response.json() == unbatched.json()
        monkeypatch.setattr(model.onnx, "session", session)
        assert len(await together(served, bodies[:4])) == 4
        assert model.batcher is not None and sum(model.batcher.batch_sizes.values()) >= 1
