"""/livez, /readyz, /metrics (Prometheus text) and the OpenAPI document."""

from __future__ import annotations

import re
from typing import Any

import pytest

from serving.settings import Settings
from tests.serving.conftest import serve

pytestmark = pytest.mark.anyio

SAMPLE = re.compile(
    r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_]\w*="([^"\\]|\\.)*",?)*\})? -?[0-9.e+Inf-]+$'
)


async def test_livez_and_readyz(settings: Settings) -> None:
    async with serve(settings) as served:
        assert (await served.client.get("/livez")).json() == {"status": "ok"}
        ready = await served.client.get("/readyz")
        assert ready.status_code == 200
        doc = ready.json()
        assert doc["ready"] is True and doc["reason"] is None
        assert doc["config"]["version"] == 1
        assert doc["store"]["ok"] is True and doc["store"]["source"].startswith("file ")
        (model,) = doc["models"]
        assert model["model"] == "ranker/v0002"
        assert model["provider"] == "CPUExecutionProvider"
        assert model["requested"] == list(settings.providers)
        # CUDA was asked for first and is absent here: that is reported, not hidden.
        assert model["fallback"] is (settings.providers[0] != "CPUExecutionProvider")
        assert model["warmed"] == [1, 20]
        assert doc["impressions"]["sink"].startswith("jsonl ")


async def test_metrics_are_prometheus_text(settings: Settings, body: dict[str, Any]) -> None:
    async with serve(settings) as served:
        for _ in range(3):
            assert (await served.client.post("/rank", json=body)).status_code == 200
        await served.client.post("/rank", json={**body, "top_k": 0})
        response = await served.client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        text = response.text
    lines = text.splitlines()
    for line in lines:
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or SAMPLE.match(line), line
    variant = re.search(
        r'ranker_requests_total\{variant="(weights=[a-z_]+)",status="200"\} 3', text
    )
    assert variant, text
    label = variant.group(1)
    assert f'ranker_request_seconds_count{{variant="{label}",status="200"}} 3' in text
    assert f'ranker_request_seconds_bucket{{variant="{label}",status="200",le="+Inf"}} 3' in text
    assert 'ranker_requests_total{variant="-",status="422"} 1' in text
    assert 'ranker_onnx_seconds_count{model="ranker/v0002"} 3' in text
    assert "ranker_candidates_count 3" in text
    assert "ranker_config_version 1" in text
    assert "ranker_ready 1" in text
    assert "ranker_store_up 1" in text
    assert re.search(r"ranker_config_age_seconds [0-9.e-]+", text)
    assert re.search(
        r'ranker_model_info\{model="ranker/v0002",provider="CPUExecutionProvider",requested="[A-Za-z,]+",fallback="(true|false)"\} 1',
        text,
    )
    assert "# TYPE ranker_impressions_total counter" in text


async def test_openapi_documents_the_endpoints(settings: Settings) -> None:
    async with serve(settings) as served:
        doc = (await served.client.get("/openapi.json")).json()
        assert (await served.client.get("/docs")).status_code == 200
    paths = doc["paths"]
    assert {"/rank", "/livez", "/readyz", "/metrics", "/experiments", "/models/reload"} <= set(
        paths
    )
    rank = paths["/rank"]["post"]
    body_ref = rank["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert body_ref == "#/components/schemas/RankRequest"
    schemas = doc["components"]["schemas"]
    assert {"RankRequest", "RankResponse", "ErrorResponse", "Candidate", "User"} <= set(schemas)
    assert {"422", "413", "503"} <= set(rank["responses"])
    assert "401" in paths["/experiments"]["put"]["responses"]
