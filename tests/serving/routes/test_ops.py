"""/livez, /readyz and the OpenAPI document (/metrics: test_metrics.py)."""

from __future__ import annotations

import pytest

from serving.settings import Settings
from tests.serving.conftest import serve

pytestmark = pytest.mark.anyio


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
