"""The Python client against a real server process (uvicorn on 127.0.0.1): typed results, field
errors as exceptions, retries on 503 with backoff, timeouts, and no torch."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import pytest

from serving.client import (
    AsyncRankerClient,
    RankedItem,
    RankerClient,
    RankerTimeout,
    RankerUnavailable,
    Ranking,
    RequestRejected,
)
from serving.settings import Settings
from tests.conftest import assert_runs_without_torch
from tests.serving.conftest import free_port, server_process


def parts(body: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    return body["user"], body["candidates"], body["context"]


def test_rank_returns_the_typed_response(
    settings: Settings, body: dict[str, Any], tmp_path: Path
) -> None:
    user, candidates, context = parts(body)
    with (
        server_process(settings, tmp_path) as (base, _),
        RankerClient(base) as client,
    ):
        ranking = client.rank(user, candidates, context, top_k=5, request_id="c-1")
        raw = httpx.post(f"{base}/rank", json={**body, "request_id": "c-1", "top_k": 5}).json()
        # numpy columns are sent as JSON numbers and lists.
        durations = np.array([c["duration"] for c in candidates], dtype=np.float64)
        with_numpy = [{**c, "duration": d} for c, d in zip(candidates, durations, strict=True)]
        again = client.rank(user, with_numpy, context, top_k=5)
        assert client.ready()
        served = client.models()
        metadata = client.model("ranker", "v0002")
    assert isinstance(ranking, Ranking) and ranking == Ranking.from_json(raw)
    assert ranking.request_id == "c-1" and ranking.model_version == "ranker/v0002"
    assert len(ranking.items) == 5 and isinstance(ranking.items[0], RankedItem)
    assert [i.score for i in ranking.items] == sorted(
        (i.score for i in ranking.items), reverse=True
    )
    assert ranking.experiment.label == raw["experiment"]["label"]
    assert [i.item_id for i in again.items] == [i.item_id for i in ranking.items]
    assert len(again.request_id) == 32  # generated when not given
    assert served["models"][0]["model"] == "ranker/v0002"
    assert metadata["version"] == "v0002" and metadata["features"]


def test_refusals_raise_naming_the_field(
    settings: Settings, body: dict[str, Any], tmp_path: Path
) -> None:
    user, candidates, context = parts(body)
    bad = [dict(c) for c in candidates]
    bad[3]["duration"] = "long"
    with (
        server_process(settings, tmp_path, RANKER_LOG_LEVEL="info") as (base, _),
        RankerClient(base, retries=0) as client,
    ):
        with pytest.raises(RequestRejected) as refused:
            client.rank(user, bad, context, request_id="c-bad")
        with pytest.raises(RequestRejected) as unknown:
            client.rank({**user, "shoe_size": 44}, candidates, context)
        with pytest.raises(RequestRejected) as missing:
            client.model("ranker", "v0099")
    assert refused.value.status == 422 and refused.value.field == "candidates[3].duration"
    assert "candidates[3].duration" in str(refused.value) and refused.value.attempts == 1
    assert unknown.value.field == "user.shoe_size"
    assert missing.value.status == 404 and missing.value.field == "version"
    # The refused body never parsed, yet its log line has the id: the client sent X-Request-ID.
    log = (tmp_path / "server.out").read_text()
    assert '"request_id":"c-bad"' in log and '"status":422' in log


def test_retries_503_until_a_model_is_published(
    settings: Settings, body: dict[str, Any], tmp_path: Path
) -> None:
    """Started on an empty registry the service answers 503 (not ready); a version published
    while the client backs off is picked up by the file store's poll, and the call succeeds."""
    empty = tmp_path / "registry"
    (empty / "ranker").mkdir(parents=True)
    source = Path(settings.registry) / "ranker" / "v0001"
    user, candidates, context = parts(body)
    with server_process(replace(settings, registry=empty), tmp_path, "/livez") as (base, _):
        assert httpx.post(f"{base}/rank", json=body).status_code == 503

        def publish() -> None:
            time.sleep(1.0)
            staging = empty / "ranker" / ".staging"
            shutil.copytree(source, staging)
            staging.rename(empty / "ranker" / "v0001")  # atomic, as the registry publishes

        publisher = threading.Thread(target=publish)
        publisher.start()
        try:
            with RankerClient(base, retries=30, backoff_s=0.1, max_backoff_s=0.5) as client:
                started = time.monotonic()
                ranking = client.rank(user, candidates, context)
                waited = time.monotonic() - started
        finally:
            publisher.join()
    assert ranking.model_version == "ranker/v0001"
    assert waited >= 0.9  # it was refused at first and backed off until the model served


def test_unavailable_after_the_last_retry(
    settings: Settings, body: dict[str, Any], tmp_path: Path
) -> None:
    empty = tmp_path / "registry"
    empty.mkdir()
    user, candidates, context = parts(body)
    with (
        server_process(replace(settings, registry=empty), tmp_path, "/livez") as (base, _),
        RankerClient(base, retries=2, backoff_s=0.01) as client,
        pytest.raises(RankerUnavailable) as unavailable,
    ):
        client.rank(user, candidates, context)
    assert unavailable.value.status == 503 and unavailable.value.attempts == 3
    assert "not ready" in unavailable.value.message


def test_no_server_and_timeouts(body: dict[str, Any]) -> None:
    user, candidates, context = parts(body)
    nobody = f"http://127.0.0.1:{free_port()}"
    with RankerClient(nobody, retries=2, backoff_s=0.01) as client:
        with pytest.raises(RankerUnavailable) as refused:
            client.rank(user, candidates, context)
        assert not client.ready()
    assert refused.value.attempts == 3 and refused.value.status is None
    # A peer that accepts the request and never answers: the read times out whatever the load.
    # (A real server with a tiny read timeout raced: on a busy machine its answer could already
    # sit in the socket when the client started reading.)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with (
            RankerClient(url, timeout=httpx.Timeout(5.0, read=0.2), retries=3) as client,
            pytest.raises(RankerTimeout) as late,
        ):
            client.rank(user, candidates, context)
    assert late.value.attempts == 1  # sent, maybe served: never repeated


def test_async_client_ranks_and_names_the_field(
    settings: Settings, body: dict[str, Any], tmp_path: Path
) -> None:
    user, candidates, context = parts(body)
    bad = [dict(c) for c in candidates]
    bad[2]["tags"] = "not-a-list"

    async def calls(base: str) -> tuple[Ranking, RequestRejected, dict[str, Any]]:
        async with AsyncRankerClient(base, retries=0) as client:
            ranking = await client.rank(user, candidates, context, top_k=3, request_id="a-1")
            with pytest.raises(RequestRejected) as refused:
                await client.rank(user, bad, context)
            return ranking, refused.value, await client.model("ranker", "v0002")

    with server_process(settings, tmp_path) as (base, _):
        ranking, refused, metadata = anyio.run(calls, base)
        raw = httpx.post(f"{base}/rank", json={**body, "request_id": "a-1", "top_k": 3}).json()
    assert ranking == Ranking.from_json(raw) and len(ranking.items) == 3
    assert refused.status == 422 and refused.field == "candidates[2].tags"
    assert metadata["model"] == "ranker/v0002"


def test_client_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="retries"):
        RankerClient("http://127.0.0.1:1", retries=-1)


def test_client_imports_without_torch() -> None:
    assert_runs_without_torch(
        "import sys\nfrom serving.client import RankerClient\n"
        "assert 'serving.app' not in sys.modules and 'onnxruntime' not in sys.modules\n"
    )
