"""Hostile and odd inputs at the service's real limits (RANKER_MAX_BODY_BYTES 4 MiB,
RANKER_MAX_CANDIDATES 2000): each is a 4xx JSON error naming the field, or a 200 where the input is
valid, never a 500. Plus a static scan for unsafe deserialisation in the project's code."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from serving.settings import Settings
from tests.reliability.unsafe import scan, scan_source
from tests.serving.conftest import AUTH, Served, serve, wait_for

pytestmark = pytest.mark.anyio
REPO = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024
JSON = {"content-type": "application/json"}


@pytest.fixture
async def served(settings: Settings) -> AsyncIterator[Served]:
    assert settings.max_body_bytes == 4 * MIB and settings.max_candidates == 2000  # the defaults
    async with serve(settings) as served:
        yield served


def refused(response: Any, status: int, field: str | None) -> dict[str, Any]:
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["field"] == field, error
    assert error["message"]
    return error  # type: ignore[no-any-return]


async def post(served: Served, doc: Any = None, raw: bytes | None = None, **kw: Any) -> Any:
    content = raw if raw is not None else orjson.dumps(doc)
    return await served.client.post("/rank", content=content, headers=kw.pop("headers", JSON), **kw)


# -- limits --------------------------------------------------------------------------------------
async def test_body_over_the_limit(served: Served, body: dict[str, Any]) -> None:
    big = orjson.dumps({**body, "request_id": "x" * (4 * MIB)})
    refused(await post(served, raw=big), 413, "body")  # by Content-Length, before reading

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        for start in range(0, len(big), 256 * 1024):
            yield big[start : start + 256 * 1024]

    refused(await served.client.post("/rank", content=chunks(), headers=JSON), 413, "body")
    put = await served.client.put("/experiments", content=big, headers={**AUTH, **JSON})
    refused(put, 413, "body")
    # just under the limit is read and judged on its content
    near = orjson.dumps({**body, "request_id": "x" * (4 * MIB - 4096)})
    refused(await post(served, raw=near), 422, "request_id")
    assert (await post(served, body)).status_code == 200


async def test_candidate_limit(served: Served, body: dict[str, Any]) -> None:
    template = body["candidates"][0]
    many = {**body, "candidates": [{**template, "item_id": i} for i in range(2001)]}
    error = refused(await post(served, many), 422, "candidates")
    assert "2000" in error["message"]
    many["candidates"] = many["candidates"][:2000]
    ranked = await post(served, {**many, "top_k": 5})
    assert ranked.status_code == 200 and len(ranked.json()["items"]) == 5


# -- deep nesting ----------------------------------------------------------------------------------
def nested_array(depth: int, leaf: str = "1") -> bytes:
    return b"[" * depth + leaf.encode() + b"]" * depth


def nested_object(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


def with_value(body: dict[str, Any], path: tuple[Any, ...], raw: bytes) -> bytes:
    """The body with the value at `path` replaced by raw JSON text (which may be too deep)."""
    marker = "__RAW_VALUE__"
    doc = copy.deepcopy(body)
    target: Any = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = marker
    return orjson.dumps(doc).replace(f'"{marker}"'.encode(), raw)


def deep(name: str, path: tuple[Any, ...] | None, raw: bytes, field: str, bug: bool = False) -> Any:
    """A case: `raw` as the whole body (path None) or at `path`; 400 when orjson's depth limit
    (1024) refuses it, else a 422 naming `field`."""
    status = 400 if field == "body" else 422
    return pytest.param(path, raw, status, field, id=name, marks=[])


USER, CONTEXT = ("user", "device"), ("context",)
TAGS, ITEM_ID, DENSE = (
    ("candidates", 0, "tags"),
    ("candidates", 1, "item_id"),
    ("candidates", 2, "duration"),
)
DEEP = [
    deep("body 10k arrays", None, nested_array(10_000), "body"),
    deep("body 100k arrays", None, nested_array(100_000), "body"),
    deep("body 10k objects", None, nested_object(10_000), "body"),
    deep("user feature 10k", USER, nested_array(10_000), "body"),
    deep("context 10k objects", CONTEXT, nested_object(10_000), "body"),
    deep("item tags 10k", TAGS, nested_array(10_000), "body"),
    deep("item tags 1000", TAGS, nested_array(1000), "candidates[0].tags[0]"),
    deep("item id 1000", ITEM_ID, nested_array(1000), "candidates[1].item_id"),
    deep("user 500 arrays", USER, nested_array(500), "user.device"),
    deep("item dense 500", DENSE, nested_object(500), "candidates[2].duration"),
    deep("user 1000 objects", USER, nested_object(1000), "user.device", bug=True),
    deep("item dense 1000", DENSE, nested_array(1000), "candidates[2].duration", bug=True),
]


@pytest.mark.parametrize(("path", "raw", "status", "field"), DEEP)
async def test_deep_nesting_is_refused_not_recursed(
    served: Served,
    body: dict[str, Any],
    path: tuple[Any, ...] | None,
    raw: bytes,
    status: int,
    field: str,
) -> None:
    content = raw if path is None else with_value(body, path, raw)
    refused(await post(served, raw=content), status, field)
    assert (await post(served, body)).status_code == 200  # and the service is fine after it


async def test_deep_nesting_in_admin_bodies(served: Served) -> None:
    headers = {**AUTH, **JSON}
    deep = await served.client.put("/experiments", content=nested_array(10_000), headers=headers)
    refused(deep, 400, "body")
    doc = b'{"salt": "s", "default": ' + nested_object(100) + b"}"
    put = await served.client.put("/experiments", content=doc, headers=headers)
    assert put.status_code == 422, put.text[:300]


async def test_deeply_nested_config_is_refused(served: Served) -> None:
    doc = b'{"salt": "s", "default": ' + nested_object(1000) + b"}"
    put = await served.client.put("/experiments", content=doc, headers={**AUTH, **JSON})
    refused(put, 422, "default.a")  # the unknown key under `default`, named


# -- huge strings ----------------------------------------------------------------------------------
def one_mb(char: str = "é") -> str:
    return char * (MIB // len(char.encode()))


async def test_huge_strings(served: Served, body: dict[str, Any]) -> None:
    big = one_mb()
    valid = [
        ("candidates", 0, "item_id"),
        ("user", "user_id"),
        ("user", "device"),  # an unknown categorical value: hashed like any other
        ("context", "hour"),
        ("candidates", 1, "tags", 0),
    ]
    for path in valid:
        ranked = await post(served, replaced(body, path, big))
        assert ranked.status_code == 200, (path, ranked.text[:300])
    ranked = await post(served, replaced(body, valid[0], big))
    assert big in {item["item_id"] for item in ranked.json()["items"]}
    refused(await post(served, replaced(body, ("request_id",), big)), 422, "request_id")
    doc = replaced(body, ("candidates", 2, "duration"), big)
    refused(await post(served, doc), 422, "candidates[2].duration")
    # an unknown feature whose *name* is 1 MB is refused by name
    doc = copy.deepcopy(body)
    doc["candidates"][0][big] = 1
    response = await post(served, doc)
    assert response.status_code == 422
    assert response.json()["error"]["field"] == f"candidates[0].{big}"


def replaced(body: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(body)
    target: Any = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return doc


# -- unicode ---------------------------------------------------------------------------------------
UNICODE_IDS = [
    "🎬",
    "👩‍👩‍👧‍👦",  # a ZWJ sequence
    "مرحبا",  # right to left
    "\u202etxt.exe",  # right-to-left override
    "a\u0000b",  # NUL
    "\ufeffbom",
    "é",  # precomposed ...
    "e\u0301",  # ... and decomposed: two different ids
    "\u200b",  # zero width space: not empty
    "x" * 300,
]


async def test_unicode_ids_round_trip(
    served: Served, body: dict[str, Any], settings: Settings
) -> None:
    doc = copy.deepcopy(body)
    for candidate, item_id in zip(doc["candidates"], UNICODE_IDS, strict=False):
        candidate["item_id"] = item_id
    doc["request_id"] = "r-🎬-\u0000-مرحبا"
    doc["user"]["user_id"] = "用户-\u202e-1"
    # escaped in the JSON text, as other clients send them (\ud83c\udfac is a surrogate pair)
    raw = orjson.dumps(doc).replace("🎬".encode(), b"\\ud83c\\udfac")
    ranked = await post(served, raw=raw)
    assert ranked.status_code == 200, ranked.text[:300]
    got = ranked.json()
    assert got["request_id"] == doc["request_id"]
    sent = [c["item_id"] for c in doc["candidates"]]
    assert sorted(map(str, (i["item_id"] for i in got["items"]))) == sorted(map(str, sent))
    again = await post(served, raw=raw)  # the same user lands in the same bucket
    assert again.json()["experiment"] == got["experiment"]

    service = served.service
    await wait_for(lambda: service.impressions.written >= 2)
    lines = Path(str(settings.impression_log)).read_bytes().splitlines()
    records = [orjson.loads(line) for line in lines]
    assert records[0]["request_id"] == doc["request_id"]
    assert records[0]["user_id"] == doc["user"]["user_id"]
    assert set(map(str, records[0]["item_ids"])) == set(map(str, sent))


@pytest.mark.parametrize(
    "escaped",
    [b"\\ud800", b"\\udfff", b"\\ud83cx", b"\\uZZZZ"],
    ids=["lone high", "lone low", "broken pair", "bad escape"],
)
async def test_broken_escapes_are_malformed_json(
    served: Served, body: dict[str, Any], escaped: bytes
) -> None:
    raw = orjson.dumps({**body, "request_id": "MARK"}).replace(b"MARK", escaped)
    refused(await post(served, raw=raw), 400, "body")


# -- duplicate keys, numbers, content types --------------------------------------------------------
async def test_duplicate_keys_last_one_wins(served: Served, body: dict[str, Any]) -> None:
    """RFC 8259 leaves duplicate names undefined; orjson (like Python's json) keeps the last."""
    raw = orjson.dumps(body)
    raw = raw.replace(b'{"request_id":"r-1"', b'{"request_id":"first","request_id":"second"', 1)
    ranked = await post(served, raw=raw)
    assert ranked.status_code == 200 and ranked.json()["request_id"] == "second"
    first_id = orjson.dumps(body["candidates"][0]["item_id"])
    dup = raw.replace(b'"item_id":' + first_id, b'"item_id":"shadow","item_id":' + first_id, 1)
    ranked = await post(served, raw=dup)
    assert ranked.status_code == 200
    assert "shadow" not in {i["item_id"] for i in ranked.json()["items"]}
    # a duplicate that makes the body invalid is named like any other invalid field
    bad = raw.replace(b'"request_id":"second"', b'"request_id":"second","request_id":5', 1)
    refused(await post(served, raw=bad), 422, "request_id")


EXTREMES = [1.7976931348623157e308, -1.7976931348623157e308, 5e-324, -0.0, 2**63 - 1, -(2**63)]


async def test_extreme_numbers_give_finite_scores(served: Served, body: dict[str, Any]) -> None:
    doc = copy.deepcopy(body)
    for i, value in enumerate(EXTREMES):
        doc["candidates"][i]["duration"] = value
        doc["candidates"][i]["upload_age_days"] = value
        doc["candidates"][i]["category"] = value
    doc["candidates"][6]["item_id"] = 2**64 - 1  # beyond int64: hashed as text
    doc["candidates"][7]["item_id"] = -(2**63)
    doc["context"]["hour"] = 2**64 - 1
    doc["top_k"] = 2**63 - 1
    ranked = await post(served, raw=json.dumps(doc).encode())  # orjson cannot write 2**64 - 1
    assert ranked.status_code == 200, ranked.text[:300]
    items = ranked.json()["items"]
    assert len(items) == len(doc["candidates"])
    for item in items:  # NaN or inf would come back as null (not JSON numbers)
        assert isinstance(item["score"], float), item
        assert all(isinstance(v, float) for v in item["predictions"].values()), item
    huge = await post(served, raw=json.dumps({**body, "top_k": 2**64}).encode())
    assert huge.status_code in (200, 422), huge.text[:300]


async def test_non_json_content_types_with_a_non_json_body(
    served: Served, body: dict[str, Any]
) -> None:
    for content_type, raw in [
        ("application/x-www-form-urlencoded", b"request_id=r&user=1"),
        (
            "multipart/form-data; boundary=x",
            b"--x\r\nContent-Disposition: form-data\r\n\r\n1\r\n--x--",
        ),
        ("application/xml", b"<rank/>"),
    ]:
        response = await post(served, raw=raw, headers={"content-type": content_type})
        refused(response, 415, "content-type")


async def test_json_body_with_a_wrong_content_type_is_refused(
    served: Served, body: dict[str, Any]
) -> None:
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "text/html"):
        response = await post(served, body, headers={"content-type": content_type})
        refused(response, 415, "content-type")
    assert (await post(served, body)).status_code == 200


# -- no unsafe deserialisation -----------------------------------------------------------------------
def test_no_unsafe_deserialisation_in_the_code() -> None:
    roots = [REPO / name for name in ("ranker", "training", "serving", "benchmarks")]
    findings, files = scan(r for r in roots if r.is_dir())
    assert files > 40
    assert not findings, "\n".join(map(str, findings))


BAD_SNIPPETS = [
    "import pickle",
    "import cPickle as p",
    "from dill import loads",
    "import marshal\nmarshal.loads(b'')",
    "import joblib\njoblib.load('m.pkl')",
    "from joblib import load\nload('m.pkl')",
    "import yaml\nyaml.load(text)",
    "import yaml\nyaml.load(text, Loader=yaml.Loader)",
    "import yaml\nyaml.load(text, yaml.UnsafeLoader)",
    "from yaml import full_load\nfull_load(text)",
    "import torch\ntorch.load(path)",
    "import torch\ntorch.load(path, weights_only=False)",
    "import torch as t\nt.load(path, map_location='cpu')",
    "import numpy as np\nnp.load(path, allow_pickle=True)",
    "from numpy import load\nload(path, allow_pickle=flag)",
    "import pandas as pd\npd.read_pickle(path)",
    "eval(text)",
    "exec(code)",
    "compile(code, 'f', 'exec')",
]
GOOD_SNIPPETS = [
    "import yaml\nyaml.safe_load(text)",
    "import yaml\nyaml.load(text, Loader=yaml.SafeLoader)",
    "import yaml\nyaml.load(text, yaml.CSafeLoader)",
    "import torch\ntorch.load(path, map_location='cpu', weights_only=True)",
    "import numpy as np\nnp.load(path)\nnp.load(path, allow_pickle=False)",
    "import re\nre.compile('x')",
    "model.eval()\nself.exec_query()",
    "import json\njson.loads(text)",
]


@pytest.mark.parametrize("source", BAD_SNIPPETS)
def test_the_scan_catches(source: str) -> None:
    assert scan_source(source), source


@pytest.mark.parametrize("source", GOOD_SNIPPETS)
def test_the_scan_passes(source: str) -> None:
    assert not scan_source(source), source
