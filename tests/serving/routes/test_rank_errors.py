"""Every kind of bad /rank input gets a 4xx JSON error naming the field, never a 500."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import orjson
import pytest

from serving.settings import Settings
from tests.serving.conftest import Served, sample, serve

pytestmark = pytest.mark.anyio

Edit = Callable[[dict[str, Any]], Any]


def setter(path: str, value: Any) -> Edit:
    """An edit that sets body[path] (dotted, with [i] indices) to value."""

    def edit(doc: dict[str, Any]) -> None:
        target: Any = doc
        parts = path.replace("[", ".").replace("]", "").split(".")
        for part in parts[:-1]:
            target = target[int(part)] if part.isdigit() else target[part]
        last = parts[-1]
        if last.isdigit():
            target[int(last)] = value
        else:
            target[last] = value

    return edit


def deleter(path: str) -> Edit:
    def edit(doc: dict[str, Any]) -> None:
        target: Any = doc
        parts = path.replace("[", ".").replace("]", "").split(".")
        for part in parts[:-1]:
            target = target[int(part)] if part.isdigit() else target[part]
        del target[parts[-1]]

    return edit


def duplicate_id(doc: dict[str, Any]) -> None:
    doc["candidates"][3]["item_id"] = doc["candidates"][1]["item_id"]


def duplicate_spelling(doc: dict[str, Any]) -> None:
    doc["candidates"][2]["item_id"] = str(doc["candidates"][0]["item_id"])


CASES: list[tuple[str, Edit, int, str]] = [
    # (name, edit, status, field)
    ("missing request_id", deleter("request_id"), 422, "request_id"),
    ("request_id wrong type", setter("request_id", 5), 422, "request_id"),
    ("request_id empty", setter("request_id", ""), 422, "request_id"),
    ("extra top-level field", setter("debug", True), 422, "debug"),
    ("missing user", deleter("user"), 422, "user"),
    ("user not an object", setter("user", [1]), 422, "user"),
    ("missing user_id", deleter("user.user_id"), 422, "user.user_id"),
    ("user_id a float", setter("user.user_id", 1.5), 422, "user.user_id"),
    ("user_id a bool", setter("user.user_id", True), 422, "user.user_id"),
    ("unknown user feature", setter("user.age", 30), 422, "user.age"),
    ("item feature on the user", setter("user.category", 3), 422, "user.category"),
    ("user feature a list", setter("user.device", ["ios"]), 422, "user.device"),
    ("context not an object", setter("context", "x"), 422, "context"),
    ("unknown context feature", setter("context.weather", "sun"), 422, "context.weather"),
    ("context feature an object", setter("context.hour", {"h": 1}), 422, "context.hour"),
    ("missing candidates", deleter("candidates"), 422, "candidates"),
    ("candidates not a list", setter("candidates", {"a": 1}), 422, "candidates"),
    ("empty candidates", setter("candidates", []), 422, "candidates"),
    ("candidate not an object", setter("candidates[4]", 7), 422, "candidates[4]"),
    ("missing item_id", deleter("candidates[3].item_id"), 422, "candidates[3].item_id"),
    ("item_id a float", setter("candidates[3].item_id", 1.5), 422, "candidates[3].item_id"),
    ("item_id null", setter("candidates[3].item_id", None), 422, "candidates[3].item_id"),
    ("item_id empty", setter("candidates[3].item_id", ""), 422, "candidates[3].item_id"),
    ("duplicate item ids", duplicate_id, 422, "candidates[3].item_id"),
    ("duplicate id spellings", duplicate_spelling, 422, "candidates[2].item_id"),
    ("unknown item feature", setter("candidates[5].colour", "red"), 422, "candidates[5].colour"),
    ("dense as text", setter("candidates[3].duration", "12"), 422, "candidates[3].duration"),
    ("dense 'NaN' text", setter("candidates[6].duration", "NaN"), 422, "candidates[6].duration"),
    ("dense as list", setter("candidates[2].duration", [1.0]), 422, "candidates[2].duration"),
    ("categorical as list", setter("candidates[1].category", [1]), 422, "candidates[1].category"),
    ("categorical as object", setter("candidates[1].category", {}), 422, "candidates[1].category"),
    ("multi as scalar", setter("candidates[2].tags", 5), 422, "candidates[2].tags"),
    ("multi nested list", setter("candidates[2].tags", [1, [2]]), 422, "candidates[2].tags[1]"),
    ("multi with object", setter("candidates[2].tags", [{}]), 422, "candidates[2].tags[0]"),
    ("user multi nested", setter("context.hour", [1]), 422, "context.hour"),
    ("top_k zero", setter("top_k", 0), 422, "top_k"),
    ("top_k text", setter("top_k", "5"), 422, "top_k"),
    ("top_k bool", setter("top_k", True), 422, "top_k"),
]


@pytest.fixture
async def served(settings: Settings) -> AsyncIterator[Served]:
    async with serve(replace(settings, max_candidates=50, max_body_bytes=64 * 1024)) as served:
        yield served


def check_error(response: Any, status: int, field: str | None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) >= {"field", "message"}
    assert error["field"] == field, error
    assert error["message"]
    return error  # type: ignore[no-any-return]


@pytest.mark.parametrize(("name", "edit", "status", "field"), CASES, ids=[c[0] for c in CASES])
async def test_bad_field_is_named(
    served: Served, body: dict[str, Any], name: str, edit: Edit, status: int, field: str
) -> None:
    doc = copy.deepcopy(body)
    edit(doc)
    check_error(await served.client.post("/rank", json=doc), status, field)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b'{"request_id": "x",}',
        b"\xff\xfe",
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b"[1e400]",
    ],
    ids=["empty", "truncated", "trailing comma", "not utf-8", "NaN", "Infinity", "overflow"],
)
async def test_malformed_json(served: Served, raw: bytes) -> None:
    response = await served.client.post(
        "/rank", content=raw, headers={"content-type": "application/json"}
    )
    check_error(response, 400, "body")


@pytest.mark.parametrize("raw", [b"[]", b"3", b'"text"', b"null"])
async def test_body_must_be_an_object(served: Served, raw: bytes) -> None:
    check_error(await served.client.post("/rank", content=raw), 422, "body")


async def test_too_many_candidates(served: Served, body: dict[str, Any]) -> None:
    template = body["candidates"][0]
    body["candidates"] = [{**template, "item_id": i} for i in range(51)]
    error = check_error(await served.client.post("/rank", json=body), 422, "candidates")
    assert "50" in error["message"]
    body["candidates"] = body["candidates"][:50]
    assert (await served.client.post("/rank", json=body)).status_code == 200


async def test_body_over_the_limit(served: Served, body: dict[str, Any]) -> None:
    big = orjson.dumps({**body, "request_id": "x" * (70 * 1024)})
    # by Content-Length, before reading
    check_error(await served.client.post("/rank", content=big), 413, "body")

    # and by the bytes that arrive when no length is declared (chunked upload)
    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 8192):
            yield big[start : start + 8192]

    check_error(await served.client.post("/rank", content=chunks()), 413, "body")
    check_error(
        await served.client.post("/rank", content=b"{}", headers={"content-length": "abc"}),
        400,
        "content-length",
    )


async def test_request_id_too_long_is_named(served: Served, body: dict[str, Any]) -> None:
    check_error(
        await served.client.post("/rank", json={**body, "request_id": "x" * 300}), 422, "request_id"
    )


async def test_errors_are_counted_and_service_keeps_serving(
    served: Served, body: dict[str, Any]
) -> None:
    for _ in range(3):
        await served.client.post("/rank", content=b"{")
    assert (await served.client.post("/rank", json=body)).status_code == 200
    metrics = (await served.client.get("/metrics")).text
    assert sample(metrics, "ranker_requests_total", variant="-", status="400") == 3


async def test_unknown_paths_and_methods_use_the_error_shape(served: Served) -> None:
    check_error(await served.client.get("/nope"), 404, None)
    check_error(await served.client.get("/rank"), 405, None)
