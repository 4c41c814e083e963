"""Model metadata: `GET /models` and `GET /models/{name}/{version}`, and the /rank request schema
generated from the served models' feature specs.

What a client needs to build a request without reading our code (what Triton and KServe answer at
`/v2/models/{name}`): features with sides, kinds and defaults, input names, tasks in output order,
request limits, offline metrics and the provider the session runs on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

import orjson
from fastapi import APIRouter
from starlette.responses import Response

from ranker.experiments import ExperimentConfig, ModelRef
from ranker.registry import RegistryError, list_versions, model_path, verify
from ranker.schema import Feature, FeatureSpec
from serving.deps import ServiceDep, json_response
from serving.errors import ApiError
from serving.models import LoadedModel
from serving.ranking import rank, render
from serving.schemas import ErrorResponse
from serving.settings import Settings
from serving.state import ServingState
from serving.validation import parse_request

log = logging.getLogger("ranker.serving.metadata")
router = APIRouter(tags=["models"])
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "no such model version"}
}
# JSON types a feature of each kind accepts (serving/validation.py checks the same).
_ACCEPTS: dict[str, dict[str, Any]] = {
    "categorical": {"type": ["string", "number", "boolean", "null"]},
    "dense": {"type": ["number", "boolean", "null"]},
    "multi_categorical": {
        "type": ["array", "null"],
        "items": {"type": ["string", "number", "boolean", "null"]},
    },
}


@router.get("/models", summary="Models served now, and the versions the registry holds")
async def list_models(service: ServiceDep) -> Response:
    state = service.manager.state
    if state is None:
        raise ApiError(503, None, f"not ready: {service.manager.not_ready_reason}")
    registry = service.settings.registry
    names = sorted({ref.name for ref in state.models})
    published = await asyncio.to_thread(
        lambda: {name: list_versions(registry, name) for name in names}
    )
    usage = served_by(state.config)
    return json_response(
        {
            "config_version": state.config.version,
            "models": [
                {
                    "model": str(ref),
                    "name": ref.name,
                    "version": ref.version,
                    "provider": model.provider,
                    "tasks": list(model.tasks),
                    "served_by": usage.get(ref, []),
                    "metadata": f"/models/{ref.name}/{ref.version}",
                }
                for ref, model in state.models.items()
            ],
            "registry": published,
        }
    )


@router.get(
    "/models/{name}/{version}",
    summary="One model version: features, inputs, tasks, limits, offline metrics, provider",
    description="A version the registry holds but nobody serves is answered from its verified "
    "manifest, with `serving: false` and no provider.",
    responses=NOT_FOUND,
)
async def get_model(name: str, version: str, service: ServiceDep) -> Response:
    ref = ModelRef(name, version)
    state = service.manager.state
    loaded = state.models.get(ref) if state is not None else None
    if loaded is not None:
        assert state is not None
        return json_response(describe(loaded, service.settings, served_by(state.config)))
    try:
        path = model_path(service.settings.registry, name, version)
        manifest = await asyncio.to_thread(verify, path.parent)
    except RegistryError as exc:
        raise ApiError(404, "version", str(exc)) from None
    doc = manifest_doc(manifest.spec(), manifest.to_dict(), service.settings)
    return json_response({"model": str(ref), "serving": False, "provider": None, **doc})


def served_by(config: ExperimentConfig) -> dict[ModelRef, list[str]]:
    """Where the config routes to each model: `default`, or `layer=variant`."""
    usage: dict[ModelRef, list[str]] = {config.default_model: ["default"]}
    for layer in config.layers:
        for variant in layer.variants:
            if variant.model is not None:
                usage.setdefault(variant.model, []).append(f"{layer.name}={variant.name}")
    return usage


def describe(
    model: LoadedModel, settings: Settings, usage: dict[ModelRef, list[str]]
) -> dict[str, Any]:
    return {
        "model": str(model.ref),
        "serving": True,
        "served_by": usage.get(model.ref, []),
        "provider": model.provider,
        "requested_providers": list(model.requested),
        "fallback": model.fallback,
        **manifest_doc(model.encoder.spec, model.manifest.to_dict(), settings),
    }


def manifest_doc(spec: FeatureSpec, manifest: dict[str, Any], settings: Settings) -> dict[str, Any]:
    return {
        "name": manifest["name"],
        "version": manifest["version"],
        "created_at": manifest["created_at"],
        "sha256": manifest["sha256"],
        "parent": manifest["parent"],
        "model_kind": manifest["model_kind"],
        "features": [feature_doc(f) for f in spec.features],
        "inputs": manifest["inputs"],
        "tasks": [
            {**task, "output": output}
            for task, output in zip(manifest["tasks"], manifest["outputs"], strict=True)
        ],
        "limits": {
            "max_candidates": settings.max_candidates,
            "max_body_bytes": settings.max_body_bytes,
            "request_id_max_length": 256,
        },
        "data_window": manifest["data_window"],
        "metrics": manifest["metrics"],
    }


def feature_doc(feature: Feature) -> dict[str, Any]:
    """Where the feature goes in a request, its kind and what a missing value becomes."""
    doc: dict[str, Any] = {
        "name": feature.name,
        "side": feature.side,
        "request_field": _field(feature),
        "kind": feature.kind,
        "default": feature.default,
    }
    if feature.kind != "dense":
        doc["buckets"] = feature.buckets
    if feature.kind == "multi_categorical":
        doc["max_len"] = feature.max_len
    if feature.kind == "dense":
        doc["transform"] = feature.transform
    return doc


def _field(feature: Feature) -> str:
    return {"user": "user", "context": "context", "item": "candidates[]"}[feature.side] + (
        "." + feature.name
    )


# -- the /rank request schema, from the served specs ---------------------------------------------
def request_schemas(models: Iterable[LoadedModel]) -> dict[str, dict[str, Any]]:
    """JSON Schemas of `User`, `Context` and `Candidate` listing every feature a served model
    takes (the first model to name a feature describes it); unknown names are refused."""
    sides: dict[str, dict[str, Feature]] = {"user": {}, "context": {}, "item": {}}
    served: dict[str, list[str]] = {}
    for model in models:
        for feature in model.encoder.spec.features:
            sides[feature.side].setdefault(feature.name, feature)
            served.setdefault(feature.name, []).append(str(model.ref))

    def properties(side: str) -> dict[str, Any]:
        return {name: feature_schema(f, served[name]) for name, f in sorted(sides[side].items())}

    user = properties("user")
    user.setdefault(
        "user_id",
        {"type": ["string", "integer"], "description": "bucketing id (not a model feature)"},
    )
    candidate = properties("item")
    candidate.setdefault("item_id", {"type": ["string", "integer"]})
    return {
        "User": _object(user, ["user_id"], "User features (spec side `user`)"),
        "Context": _object(properties("context"), [], "Context features (spec side `context`)"),
        "Candidate": _object(candidate, ["item_id"], "One candidate; item features beside its id"),
    }


def feature_schema(feature: Feature, models: list[str]) -> dict[str, Any]:
    text = f"{feature.kind}"
    if feature.kind != "dense":
        text += f", hashed into {feature.buckets} buckets"
    if feature.kind == "multi_categorical":
        text += f", first {feature.max_len} values kept"
    if feature.kind == "dense":
        text += f", {feature.transform} then standardised"
    text += f"; missing or null: {feature.default!r}; models: {', '.join(models)}"
    schema = {**_ACCEPTS[feature.kind], "description": text}
    if feature.kind != "multi_categorical":
        schema["default"] = feature.default
    return schema


def _object(properties: dict[str, Any], required: list[str], description: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


def request_example(model: LoadedModel, candidates: int = 3) -> dict[str, Any]:
    """A valid request for `model`: every feature given a value of its kind."""

    def value(feature: Feature, i: int) -> Any:
        if feature.kind == "dense":
            return round(1.5 * (i + 1), 2)
        if feature.kind == "multi_categorical":
            return [i + 1, i + 2]
        return i + 1

    spec = model.encoder.spec
    user = {f.name: value(f, 41) for f in spec.features if f.side == "user"}
    user.setdefault("user_id", 42)
    items = [f for f in spec.features if f.side == "item" and f.name != "item_id"]
    return {
        "request_id": "example-1",
        "user": user,
        "context": {f.name: value(f, 0) for f in spec.features if f.side == "context"},
        "candidates": [
            {"item_id": 100 + i, **{f.name: value(f, i) for f in items}} for i in range(candidates)
        ],
        "top_k": candidates - 1,
    }


def document_rank(schema: dict[str, Any], state: ServingState, settings: Settings) -> None:
    """Rewrite the OpenAPI document's /rank request for the served models: their features in
    `User`, `Context` and `Candidate`, their tasks in `predictions`, and a request example with
    the response the service gives it (ranked at start-up, so it is real)."""
    components = schema["components"]["schemas"]
    components.update(request_schemas(state.models.values()))
    request = components["RankRequest"]
    request.pop("example", None)  # the static one; the served models' example is below
    request["properties"]["context"] = {
        "anyOf": [{"$ref": "#/components/schemas/Context"}, {"type": "null"}]
    }
    tasks = sorted({task for model in state.models.values() for task in model.tasks})
    predictions = components["RankedItem"]["properties"]["predictions"]
    predictions["properties"] = {task: {"type": "number"} for task in tasks}
    operation = schema["paths"]["/rank"]["post"]
    example = request_example(state.models[state.config.default_model])
    operation["requestBody"]["content"]["application/json"]["example"] = example
    try:
        parsed = parse_request(orjson.dumps(example), settings.max_candidates, state.decoder)
        answer = orjson.loads(render(rank(state, parsed)))
    except ApiError as exc:  # the example user lands on a model with other features
        log.warning("no /rank response example: %s", exc)
        return
    content = operation["responses"]["200"].setdefault("content", {})
    content.setdefault("application/json", {})["example"] = answer
