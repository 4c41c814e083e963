"""Feature logging (RANKER_LOG_FEATURES): each impression record carries the raw features the model
received, in served order, and each item's served position; the impression log stays bounded
(JSONL rotation by size, Redis stream MAXLEN). Real ASGI app, real ONNX Runtime, real Redis."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import redis

from serving.impressions import ImpressionWriter, JsonlSink, RedisStreamSink
from serving.settings import Settings
from tests.conftest import REDIS_URL
from tests.serving.conftest import CONTEXT_FEATURES, USER_FEATURES, serve, wait_for

pytestmark = pytest.mark.anyio


def records(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def served_columns(body: dict[str, Any], item_ids: list[Any]) -> dict[str, list[Any]]:
    """The body's item features, in the order the items were served."""
    by_id = {c["item_id"]: c for c in body["candidates"]}
    names = {k for c in body["candidates"] for k in c} - {"item_id"}
    return {name: [by_id[i].get(name) for i in item_ids] for name in sorted(names)}


@pytest.mark.parametrize("typed", [True, False], ids=["typed", "general"])
async def test_records_carry_the_served_features_and_positions(
    settings: Settings, body: dict[str, Any], typed: bool
) -> None:
    # Null on every candidate: left out, so absent from the log (a reader of the log puts in
    # the spec's default for a missing column, as the model did), on either parsing path.
    candidates = [{**c, "upload_age_days": None} for c in body["candidates"]]
    if not typed:  # string tags leave the typed decoder's layout: the general path
        candidates = [{**c, "tags": [str(t) for t in c["tags"]]} for c in candidates]
    # A list feature is logged as the request gave it, null where a candidate gave none.
    candidates = [{**c, "tags": None} if i % 2 else c for i, c in enumerate(candidates)]
    body = {**body, "candidates": candidates}
    async with serve(settings) as served:
        response = await served.client.post("/rank", json={**body, "top_k": 5})
        assert response.status_code == 200
        ranked = response.json()
        await wait_for(lambda: served.service.impressions.written == 1)
    assert settings.impression_log is not None
    (record,) = records(Path(settings.impression_log))
    item_ids = [x["item_id"] for x in ranked["items"]]
    assert record["item_ids"] == item_ids and record["positions"] == [0, 1, 2, 3, 4]
    features = record["features"]
    assert set(features) == {"user", "context", "items"}
    assert features["user"] == body["user"] and set(features["user"]) == set(USER_FEATURES)
    assert features["context"] == body["context"] and set(features["context"]) <= set(
        CONTEXT_FEATURES
    )
    expected = served_columns(body, item_ids)
    logged = features["items"]
    assert expected.pop("upload_age_days") == [None] * 5
    assert None in expected["tags"] and any(expected["tags"])
    for name, values in expected.items():
        assert logged[name] == values, name
    assert set(logged) == set(expected)  # item_id is the record's item_ids, not repeated


async def test_feature_logging_off_keeps_the_record_as_before(
    settings: Settings, body: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert Settings().log_features is True
    monkeypatch.setenv("RANKER_LOG_FEATURES", "0")
    assert Settings.from_env().log_features is False
    async with serve(replace(settings, log_features=False)) as served:
        assert (await served.client.post("/rank", json=body)).status_code == 200
        await wait_for(lambda: served.service.impressions.written == 1)
    assert settings.impression_log is not None
    (record,) = records(Path(settings.impression_log))
    assert "features" not in record and "positions" not in record
    assert len(record["item_ids"]) == len(body["candidates"])


def test_jsonl_log_rotates_by_size_and_keeps_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "impressions.jsonl"
    log = ImpressionWriter(JsonlSink(path, max_bytes=4000, keep=2), capacity=10_000)
    log.start()
    for i in range(600):
        log.submit({"request_id": f"r{i}", "item_ids": list(range(10)), "pad": "x" * 20})
    log.close()
    assert log.written == 600 and log.failed == log.dropped == 0
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == [
        "impressions.jsonl",
        "impressions.jsonl.1",
        "impressions.jsonl.2",
    ]
    kept = [r for f in (files[2], files[1], files[0]) for r in records(f)]  # oldest first
    ids = [int(r["request_id"][1:]) for r in kept]
    assert ids == list(range(ids[0], 600)) and ids[0] > 0  # the newest lines, none torn
    # A rotated file ends where a batch ended: at most one batch past the limit.
    assert all(f.stat().st_size < 4000 + 256 * 100 for f in files)
    with pytest.raises(ValueError, match="max_bytes and keep"):
        JsonlSink(tmp_path / "other.jsonl", max_bytes=0)


def test_redis_stream_is_trimmed_to_about_maxlen(redis_prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    stream = f"{redis_prefix}:impressions"
    log = ImpressionWriter(RedisStreamSink(client, stream, maxlen=200), capacity=10_000)
    log.start()
    for i in range(3000):
        log.submit({"request_id": f"r{i}", "features": {"user": {"user_id": i}}})
    log.close()
    check = redis.Redis.from_url(REDIS_URL)
    try:
        length = check.xlen(stream)
        last = orjson.loads(check.xrevrange(stream, count=1)[0][1][b"record"])
    finally:
        check.close()
    assert 200 <= length < 400 and last["request_id"] == "r2999"  # approximate trimming: ~maxlen


def test_served_columns_follow_the_served_order() -> None:
    from serving.served_features import ServedFeatures

    items = {
        "item_id": np.array([10, 11, 12]),
        "duration": np.array([1.5, np.nan, 3.0]),
        "category": ["a", 7, "c"],
        "tags": [[1, 2], None, [3]],
    }
    doc = ServedFeatures({"user_id": 1}, {}, items, np.array([2, 0, 1])).to_json()
    assert orjson.loads(orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)) == {
        "user": {"user_id": 1},
        "context": {},
        "items": {
            "duration": [3.0, 1.5, None],
            "category": ["c", "a", 7],
            "tags": [[3], [1, 2], None],
        },
    }


def test_arrow_list_columns_of_the_general_path_are_served_as_lists() -> None:
    import pyarrow as pa

    from serving.served_features import ServedFeatures

    items = {"tags": pa.array([[1, 2], None, [3]], type=pa.list_(pa.int64()))}
    doc = ServedFeatures({"user_id": 1}, {}, items, np.array([2, 0, 1])).to_json()
    assert orjson.loads(orjson.dumps(doc))["items"] == {"tags": [[3], [1, 2], None]}


def test_a_record_that_cannot_be_serialised_is_counted_and_the_writer_keeps_going(
    tmp_path: Path,
) -> None:
    path = tmp_path / "impressions.jsonl"
    log = ImpressionWriter(JsonlSink(path), capacity=100)
    log.start()
    log.submit({"request_id": "bad", "features": object()})
    log.submit({"request_id": "good"})
    log.close()
    assert log.failed == 1 and log.written == 1
    assert [r["request_id"] for r in records(path)] == ["good"]
