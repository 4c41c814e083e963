"""/metrics through the real ASGI app, parsed by prometheus_client's own parsers (text format and
OpenMetrics): the service's series, the process/GC collectors, and request-id exemplars."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from serving.settings import Settings
from tests.serving.conftest import AUTH, Served, serve, wait_for

pytestmark = pytest.mark.anyio


async def scrape(served: Served) -> dict[str, Metric]:
    response = await served.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {family.name: family for family in text_string_to_metric_families(response.text)}


def value(families: dict[str, Metric], sample: str, **labels: str) -> float:
    """The one sample named `sample` whose labels include `labels`."""
    found = [
        s
        for family in families.values()
        for s in family.samples
        if s.name == sample and labels.items() <= s.labels.items()
    ]
    assert len(found) == 1, (sample, labels, found)
    return float(found[0].value)


def histogram(families: dict[str, Metric], name: str, **labels: str) -> list[Sample]:
    family = families[name]
    assert family.type == "histogram", family.type
    return [s for s in family.samples if labels.items() <= s.labels.items()]


async def test_scrape_counts_requests_by_variant_with_units(
    settings: Settings, body: dict[str, Any]
) -> None:
    async with serve(settings) as served:
        for _ in range(3):
            assert (await served.client.post("/rank", json=body)).status_code == 200
        assert (await served.client.post("/rank", json={**body, "top_k": 0})).status_code == 422
        families = await scrape(served)
        label = (await served.client.post("/rank", json=body)).json()["experiment"]["label"]
        await wait_for(lambda: served.service.impressions.written == 4)
        after = await scrape(served)

    assert families["ranker_requests"].type == "counter"
    assert value(families, "ranker_requests_total", variant=label, status="200") == 3
    assert value(families, "ranker_requests_total", variant="-", status="422") == 1
    latency = histogram(families, "ranker_request_duration_seconds", variant=label, status="200")
    buckets = [s for s in latency if s.name.endswith("_bucket")]
    counts = [s.value for s in buckets]
    assert counts == sorted(counts) and buckets[-1].labels["le"] == "+Inf" and counts[-1] == 3
    assert value(families, "ranker_request_duration_seconds_count", variant=label) == 3
    assert 0 < value(families, "ranker_request_duration_seconds_sum", variant=label) < 30
    assert value(families, "ranker_onnx_run_duration_seconds_count", model="ranker/v0002") == 3
    n = len(body["candidates"])
    assert value(families, "ranker_candidates_per_request_count") == 3
    assert value(families, "ranker_candidates_per_request_sum") == 3 * n
    assert value(families, "ranker_candidates_per_request_bucket", le="10.0") == 0
    assert value(families, "ranker_candidates_per_request_bucket", le="50.0") == 3
    # No `_created` series: they double the scrape and nothing reads them.
    assert not any(s.name.endswith("_created") for f in families.values() for s in f.samples)

    assert value(families, "ranker_ready") == 1
    assert value(families, "ranker_config_version") == 1
    assert value(families, "ranker_store_up") == 1
    assert value(families, "ranker_store_errors_total") == 0
    assert 0 <= value(families, "ranker_config_age_seconds") < 60
    assert value(families, "ranker_config_rejected") == 0
    (model,) = families["ranker_model_info"].samples  # an info metric: a gauge at 1 in this format
    assert model.value == 1
    assert model.labels["model"] == "ranker/v0002" and model.labels["version"] == "v0002"
    assert model.labels["provider"] == "CPUExecutionProvider"

    assert value(after, "ranker_impressions_total", outcome="written") == 4
    assert value(after, "ranker_impressions_total", outcome="dropped") == 0
    assert value(after, "ranker_impression_log_enabled") == 1
    assert value(after, "ranker_impression_queue_capacity") == settings.impression_queue
    assert value(after, "ranker_requests_total", variant=label, status="200") == 4

    # The process and GC collectors beside the service's own series.
    assert value(families, "process_resident_memory_bytes") > 10e6
    assert value(families, "process_open_fds") > 0
    assert value(families, "python_gc_collections_total", generation="0") >= 0
    assert "python_info" in families


async def test_openmetrics_scrape_carries_request_id_exemplars(
    settings: Settings, body: dict[str, Any]
) -> None:
    async with serve(settings) as served:
        response = await served.client.post("/rank", json={**body, "request_id": "trace-me-1"})
        assert response.status_code == 200
        scraped = await served.client.get(
            "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
    assert scraped.headers["content-type"].startswith("application/openmetrics-text")
    families = {f.name: f for f in openmetrics_families(scraped.text)}
    exemplars = [
        s.exemplar
        for s in families["ranker_request_duration_seconds"].samples
        if s.exemplar is not None
    ]
    assert [e.labels for e in exemplars] == [{"request_id": "trace-me-1"}]
    assert 0 < exemplars[0].value < 30


async def test_long_request_ids_fit_the_exemplar_limit(
    settings: Settings, body: dict[str, Any]
) -> None:
    long_id = "x" * 256  # the request's own limit; exemplars allow 128 characters of labels
    async with serve(settings) as served:
        response = await served.client.post("/rank", json={**body, "request_id": long_id})
        assert response.status_code == 200
        scraped = await served.client.get(
            "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
    families = {f.name: f for f in openmetrics_families(scraped.text)}
    (exemplar,) = [
        s.exemplar for s in families["ranker_request_duration_seconds"].samples if s.exemplar
    ]
    assert long_id.startswith(exemplar.labels["request_id"]) and exemplar.labels["request_id"]


async def test_reloads_and_a_disabled_impression_log_are_exported(settings: Settings) -> None:
    async with serve(replace(settings, impression_log=None)) as served:
        assert (await served.client.post("/models/reload", headers=AUTH)).status_code == 200
        families = await scrape(served)
    assert value(families, "ranker_reloads_total", kind="models", result="ok") == 1
    assert value(families, "ranker_swaps_total") == 2
    assert value(families, "ranker_impression_log_enabled") == 0
