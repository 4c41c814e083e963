"""Model metadata (`GET /models`, `GET /models/{name}/{version}`) and the /rank OpenAPI schema
generated from the served model's feature spec, through the real app."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from ranker.registry import load_manifest
from serving.settings import Settings
from tests.serving.conftest import serve

pytestmark = pytest.mark.anyio


async def test_models_lists_what_serves_and_what_the_registry_holds(settings: Settings) -> None:
    async with serve(settings) as served:
        response = await served.client.get("/models")
    assert response.status_code == 200
    doc = response.json()
    manifest = load_manifest(Path(settings.registry) / "ranker" / "v0002")
    assert doc["config_version"] == 1
    assert doc["registry"] == {"ranker": ["v0001", "v0002"]}
    (model,) = doc["models"]
    assert model["model"] == "ranker/v0002" and model["served_by"] == ["default"]
    assert model["tasks"] == manifest.task_names
    assert model["provider"] == "CPUExecutionProvider"
    assert model["metadata"] == "/models/ranker/v0002"


async def test_served_version_metadata_follows_its_manifest(settings: Settings) -> None:
    async with serve(settings) as served:
        response = await served.client.get("/models/ranker/v0002")
    assert response.status_code == 200
    doc = response.json()
    manifest = load_manifest(Path(settings.registry) / "ranker" / "v0002")
    spec = manifest.spec()
    assert doc["serving"] is True and doc["provider"] == "CPUExecutionProvider"
    assert doc["sha256"] == manifest.sha256 and doc["parent"] == "v0001"
    assert [f["name"] for f in doc["features"]] == spec.names
    for entry, feature in zip(doc["features"], spec.features, strict=True):
        assert (entry["side"], entry["kind"], entry["default"]) == (
            feature.side,
            feature.kind,
            feature.default,
        )
        part = {"user": "user", "context": "context", "item": "candidates[]"}[feature.side]
        assert entry["request_field"] == f"{part}.{feature.name}"
        assert ("buckets" in entry) == (feature.kind != "dense")
    assert doc["inputs"] == manifest.inputs
    # Tasks in output order, each with the ONNX output that carries it.
    assert [t["name"] for t in doc["tasks"]] == manifest.task_names
    assert [t["output"] for t in doc["tasks"]] == list(manifest.outputs)
    assert doc["limits"]["max_candidates"] == settings.max_candidates
    assert doc["limits"]["max_body_bytes"] == settings.max_body_bytes
    assert doc["metrics"] == manifest.metrics and doc["metrics"]
    assert doc["data_window"] == manifest.data_window


async def test_unserved_and_missing_versions(settings: Settings) -> None:
    async with serve(settings) as served:
        unserved = await served.client.get("/models/ranker/v0001")
        missing = await served.client.get("/models/ranker/v0099")
        unknown = await served.client.get("/models/nobody/v0001")
    assert unserved.status_code == 200
    doc = unserved.json()
    assert doc["serving"] is False and doc["provider"] is None and doc["version"] == "v0001"
    assert doc["features"] and doc["tasks"]
    for response in (missing, unknown):
        assert response.status_code == 404
        assert response.json()["error"]["field"] == "version"
    assert "v0001" in missing.json()["error"]["message"]  # names what is published


async def test_rank_schema_lists_the_served_features_with_real_examples(
    settings: Settings,
) -> None:
    async with serve(settings) as served:
        doc = (await served.client.get("/openapi.json")).json()
        operation = doc["paths"]["/rank"]["post"]
        example = operation["requestBody"]["content"]["application/json"]["example"]
        answer = operation["responses"]["200"]["content"]["application/json"]["example"]
        ranked = await served.client.post("/rank", json=example)
    spec = load_manifest(Path(settings.registry) / "ranker" / "v0002").spec()
    schemas = doc["components"]["schemas"]
    for component, side in (("User", "user"), ("Context", "context"), ("Candidate", "item")):
        schema = schemas[component]
        assert schema["additionalProperties"] is False
        names = {f.name for f in spec.features if f.side == side}
        assert names <= set(schema["properties"]), component
        for name in names:
            described = schema["properties"][name]
            assert described["description"].startswith(spec[name].kind)
    assert "user_id" in schemas["User"]["required"]
    assert schemas["Candidate"]["required"] == ["item_id"]
    context = schemas["RankRequest"]["properties"]["context"]["anyOf"]
    assert {"$ref": "#/components/schemas/Context"} in context
    dense = next(f for f in spec.features if f.kind == "dense")
    assert schemas["Candidate"]["properties"][dense.name]["default"] == dense.default
    tasks = schemas["RankedItem"]["properties"]["predictions"]["properties"]
    assert set(tasks) == set(spec_tasks(settings))
    # The request example is valid, and the response example is what the service answers.
    assert ranked.status_code == 200, ranked.text
    assert ranked.json() == answer
    assert len(answer["items"]) == example["top_k"]


def spec_tasks(settings: Settings) -> list[str]:
    return load_manifest(Path(settings.registry) / "ranker" / "v0002").task_names


async def test_schema_before_models_serve_is_the_static_one(
    settings: Settings, tmp_path: Path
) -> None:
    empty = tmp_path / "empty-registry"
    empty.mkdir()
    async with serve(replace(settings, registry=empty)) as served:
        doc = (await served.client.get("/openapi.json")).json()
        models = await served.client.get("/models")
    assert models.status_code == 503
    assert "Context" not in doc["components"]["schemas"]
    assert doc["components"]["schemas"]["User"]["additionalProperties"] is True
