"""RANKER_OTEL=1: /rank spans through the real app, exported by the OpenTelemetry SDK's in-memory
exporter; the traced route answers byte for byte what the plain one does."""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

import opentelemetry.sdk.trace as sdk_trace
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import StatusCode

from serving.settings import Settings
from serving.tracing import STAGES, open_tracer
from tests.serving.conftest import serve, wait_for

pytestmark = pytest.mark.anyio


def _memory_tracer() -> tuple[Any, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = sdk_trace.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return open_tracer(True, provider), exporter


async def test_off_costs_nothing_and_on_traces_every_stage(
    settings: Settings, body: dict[str, Any]
) -> None:
    async with serve(settings) as served:
        assert served.service.tracer is None  # the default: the route's one check is all
        plain = await served.client.post("/rank", json=body)
    assert plain.status_code == 200

    async with serve(replace(settings, otel=True)) as served:
        assert served.service.tracer is not None  # RANKER_OTEL=1 opens one
        served.service.tracer, exporter = _memory_tracer()
        traced = await served.client.post("/rank", json=body)
        assert traced.status_code == 200
        assert traced.content == plain.content
        await wait_for(lambda: len(exporter.get_finished_spans()) == 1 + len(STAGES))
        metrics = (await served.client.get("/metrics")).text
    assert 'ranker_requests_total{status="200"' in metrics  # the traced route is observed too

    spans = {s.name: s for s in exporter.get_finished_spans()}
    root = spans.pop("POST /rank")
    assert root.parent is None
    assert root.attributes is not None
    assert root.attributes["ranker.request_id"] == body["request_id"]
    assert root.attributes["ranker.candidates"] == len(body["candidates"])
    assert root.attributes["http.response.status_code"] == 200
    assert root.attributes["ranker.model_version"] == traced.json()["model_version"]
    children = [spans[name] for name in STAGES]
    for child in children:
        assert child.parent is not None and child.parent.span_id == root.context.span_id
        assert child.context.trace_id == root.context.trace_id
        assert child.start_time is not None and child.end_time is not None
        assert child.end_time >= child.start_time
    # The stages tile the request: each starts where the one before ended.
    assert children[0].start_time == root.start_time
    assert children[-1].end_time == root.end_time
    for before, after in itertools.pairwise(children):
        assert before.end_time == after.start_time
    assert spans["ort"].end_time - spans["ort"].start_time > 0  # type: ignore[operator]


async def test_a_refused_request_gets_an_error_span(
    settings: Settings, body: dict[str, Any]
) -> None:
    async with serve(replace(settings, otel=True)) as served:
        served.service.tracer, exporter = _memory_tracer()
        bad = {**body, "user": {**body["user"], "user_id": 1.5}}
        response = await served.client.post("/rank", json=bad)
        assert response.status_code == 422
        await wait_for(lambda: len(exporter.get_finished_spans()) == 1)
    (span,) = exporter.get_finished_spans()
    assert span.name == "POST /rank"
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["ranker.error_field"] == "user.user_id"
    assert span.attributes["http.response.status_code"] == 422
