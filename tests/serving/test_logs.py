"""JSON logs: one object per line, the request id on every line logged while a request is handled,
and an access line per /rank request naming the model version and the variant; through the real
app in process and from a real server process."""

from __future__ import annotations

import io
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from serving.logs import REQUEST_ID, JsonFormatter, configured
from serving.settings import Settings
from tests.serving.conftest import serve, server_process


def lines_of(text: str) -> list[dict[str, Any]]:
    """Every line of `text` as a JSON object (fails on any line that is not one)."""
    docs = []
    for line in text.splitlines():
        doc = json.loads(line)
        assert isinstance(doc, dict), line
        docs.append(doc)
    return docs


def access_lines(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["logger"] == "ranker.serving.access"]


def test_formatter_writes_one_object_per_record_with_extras_and_traceback() -> None:
    logger = logging.getLogger("ranker.test.formatter")
    try:
        raise ValueError("broken\nacross lines")
    except ValueError:
        record = logger.makeRecord(
            logger.name,
            logging.ERROR,
            __file__,
            1,
            "failed %s",
            ("x",),
            sys.exc_info(),
            extra={"request_id": "r-9", "candidates": 3, "path": Path("/p")},
        )
    text = JsonFormatter().format(record)
    assert "\n" not in text
    doc = json.loads(text)
    assert doc["level"] == "error" and doc["logger"] == "ranker.test.formatter"
    assert doc["message"] == "failed x"
    assert doc["request_id"] == "r-9" and doc["candidates"] == 3 and doc["path"] == "/p"
    assert "ValueError: broken" in doc["exc"]
    assert doc["ts"].endswith("+00:00")


def test_lines_logged_during_a_request_carry_its_id(settings: Settings) -> None:
    stream = io.StringIO()
    logger = logging.getLogger("ranker.test.context")
    with configured(settings, stream):
        logger.warning("outside")
        token = REQUEST_ID.set("r-inside")
        try:
            logger.warning("inside")
            logger.warning("explicit", extra={"request_id": "r-explicit"})
        finally:
            REQUEST_ID.reset(token)
    by_message = {d["message"]: d for d in lines_of(stream.getvalue())}
    assert "request_id" not in by_message["outside"]
    assert by_message["inside"]["request_id"] == "r-inside"
    assert by_message["explicit"]["request_id"] == "r-explicit"


@pytest.mark.anyio
async def test_every_rank_request_has_an_access_line(
    settings: Settings, body: dict[str, Any]
) -> None:
    stream = io.StringIO()
    with configured(settings, stream):
        async with serve(settings) as served:
            ok = await served.client.post("/rank", json={**body, "request_id": "r-ok"})
            refused = await served.client.post(
                "/rank", json={**body, "request_id": "r-bad", "top_k": 0}
            )
            malformed = await served.client.post(
                "/rank", content=b"{", headers={"X-Request-ID": "r-header"}
            )
            anonymous = await served.client.post("/rank", content=b"[")
    statuses = [r.status_code for r in (ok, refused, malformed, anonymous)]
    assert statuses == [200, 422, 400, 400]
    docs = lines_of(stream.getvalue())
    assert any(d["logger"] == "ranker.serving.models" for d in docs)  # start-up lines too
    lines = access_lines(docs)
    assert [d["status"] for d in lines] == statuses
    by_status = {d["status"]: d for d in lines[:3]}
    served_line = by_status[200]
    assert served_line["request_id"] == "r-ok"
    assert served_line["model_version"] == ok.json()["model_version"] == "ranker/v0002"
    assert served_line["variant"] == ok.json()["experiment"]["label"]
    assert served_line["candidates"] == len(body["candidates"])
    assert served_line["level"] == "info" and served_line["duration_ms"] > 0
    # Refused while parsing: the body's id is not trusted, the client's header is.
    assert "request_id" not in by_status[422] and by_status[422]["error_field"] == "top_k"
    assert by_status[400]["request_id"] == "r-header"
    assert "request_id" not in lines[3]


@pytest.mark.anyio
async def test_access_lines_can_be_switched_off(settings: Settings, body: dict[str, Any]) -> None:
    stream = io.StringIO()
    quiet = replace(settings, access_log=False)
    with configured(quiet, stream):
        async with serve(quiet) as served:
            assert (await served.client.post("/rank", json=body)).status_code == 200
    assert access_lines(lines_of(stream.getvalue())) == []


def test_server_process_logs_json_only(
    settings: Settings, body: dict[str, Any], tmp_path: Path
) -> None:
    env = {"RANKER_LOG_LEVEL": "info", "RANKER_REGISTY": "/typo"}
    with server_process(settings, tmp_path, **env) as (base, _):
        response = httpx.post(f"{base}/rank", json={**body, "request_id": "r-proc"}, timeout=10)
        assert response.status_code == 200
    docs = lines_of((tmp_path / "server.out").read_text())  # uvicorn's own lines included
    assert any(d["logger"].startswith("uvicorn") for d in docs)
    (typo,) = [d for d in docs if "RANKER_REGISTY" in d["message"]]  # a misspelt setting
    assert typo["level"] == "warning" and "did you mean RANKER_REGISTRY?" in typo["message"]
    (line,) = access_lines(docs)
    assert line["request_id"] == "r-proc" and line["model_version"] == "ranker/v0002"
    assert line["variant"] == response.json()["experiment"]["label"]


def test_text_format_keeps_the_request_id(settings: Settings) -> None:
    stream = io.StringIO()
    with configured(replace(settings, log_format="text"), stream):
        token = REQUEST_ID.set("r-text")
        try:
            logging.getLogger("ranker.test.text").warning("plain")
        finally:
            REQUEST_ID.reset(token)
    (line,) = stream.getvalue().splitlines()
    assert "[r-text]" in line and line.endswith("plain")
