"""The OpenAPI document: FastAPI's, plus what the handlers read themselves.

/rank's body is parsed by serving/parsing, not by a pydantic model, so its schema is written here
from the same limits (`RankRequest`); once models serve, `User`, `Context` and `Candidate` list
their features, and the operation carries a request example with the response the service gave
it at start-up. Before that, the schema is the static one: any feature names.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import orjson
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from ranker.schema import Feature
from serving.errors import ApiError
from serving.models import LoadedModel
from serving.parsing.form import MAX_REQUEST_ID
from serving.ranking import rank
from serving.response import render
from serving.schemas import ExperimentDocument
from serving.settings import Settings
from serving.state import ServingState

log = logging.getLogger("ranker.serving.openapi")
_REF = "#/components/schemas/{}"
# The static request example (the served models' own replaces it).
EXAMPLE = {
    "request_id": "r-1",
    "user": {"user_id": 42, "device": "ios"},
    "context": {"hour": 20, "tab": 1},
    "candidates": [
        {"item_id": 7, "category": 3, "tags": [1, 2], "duration": 31.5},
        {"item_id": 9, "category": 5, "tags": [], "duration": 12.0},
    ],
    "top_k": 10,
}


def openapi(app: FastAPI) -> dict[str, Any]:
    """The schema, rebuilt when the served models change."""
    service = getattr(app.state, "service", None)
    state = service.manager.state if service is not None else None
    key = tuple(state.models) if state is not None else None
    if app.openapi_schema is None or getattr(app.state, "openapi_models", None) != key:
        schema = get_openapi(
            title=app.title, version=app.version, summary=app.summary, routes=app.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        doc = ExperimentDocument.model_json_schema(ref_template=_REF.replace("{}", "{model}"))
        components.update(doc.pop("$defs", {}))
        components["ExperimentDocument"] = doc
        max_candidates = service.settings.max_candidates if service is not None else None
        components.update(static_request_schemas(max_candidates))
        if service is not None and state is not None:
            document_rank(schema, state, service.settings)
        app.openapi_schema = schema
        app.state.openapi_models = key
    return app.openapi_schema


def rank_request_schema(max_candidates: int | None, served: bool) -> dict[str, Any]:
    """The /rank body (serving/parsing/form.py): ids, user, context, candidates, top_k."""
    context: dict[str, Any] = {"type": "object", "description": "context features"}
    if served:
        context = {"$ref": _REF.format("Context")}
    candidates: dict[str, Any] = {
        "type": "array",
        "items": {"$ref": _REF.format("Candidate")},
        "minItems": 1,
        "description": "at most RANKER_MAX_CANDIDATES",
    }
    if max_candidates is not None:
        candidates["maxItems"] = max_candidates
    schema: dict[str, Any] = {
        "type": "object",
        "title": "RankRequest",
        "description": 'Features sit beside the ids: `{"item_id": 7, "category": 3, '
        '"tags": [1, 2]}`. A feature left out (or null) takes the spec\'s default; a name the '
        "spec lacks is refused.",
        "properties": {
            "request_id": {"type": "string", "minLength": 1, "maxLength": MAX_REQUEST_ID},
            "user": {"$ref": _REF.format("User")},
            "context": {"anyOf": [context, {"type": "null"}]},
            "candidates": candidates,
            "top_k": {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}]},
        },
        "required": ["request_id", "user", "candidates"],
        "additionalProperties": False,
    }
    if not served:
        schema["example"] = EXAMPLE
    return schema


def static_request_schemas(max_candidates: int | None) -> dict[str, dict[str, Any]]:
    """Before any model serves: any feature names, values of any feature kind."""

    def open_object(key: str, description: str) -> dict[str, Any]:
        return {
            "type": "object",
            "description": description,
            "properties": {key: {"type": ["string", "integer"]}},
            "required": [key],
            "additionalProperties": True,
        }

    return {
        "RankRequest": rank_request_schema(max_candidates, served=False),
        "User": open_object("user_id", "bucketing id; also a feature when the spec names it"),
        "Candidate": open_object("item_id", "unique within the request"),
    }


# JSON types a feature of each kind accepts (serving/columns.py checks the same).
_ACCEPTS: dict[str, dict[str, Any]] = {
    "categorical": {"type": ["string", "number", "boolean", "null"]},
    "dense": {"type": ["number", "boolean", "null"]},
    "multi_categorical": {
        "type": ["array", "null"],
        "items": {"type": ["string", "number", "boolean", "null"]},
    },
}


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
    components["RankRequest"] = rank_request_schema(settings.max_candidates, served=True)
    tasks = sorted({task for model in state.models.values() for task in model.tasks})
    predictions = components["RankedItem"]["properties"]["predictions"]
    predictions["properties"] = {task: {"type": "number"} for task in tasks}
    operation = schema["paths"]["/rank"]["post"]
    example = request_example(state.models[state.config.default_model])
    operation["requestBody"]["content"]["application/json"]["example"] = example
    try:
        parsed = state.parser.parse(orjson.dumps(example), settings.max_candidates)
        answer = orjson.loads(render(rank(state, parsed)))
    except ApiError as exc:  # the example user lands on a model with other features
        log.warning("no /rank response example: %s", exc)
        return
    content = operation["responses"]["200"].setdefault("content", {})
    content.setdefault("application/json", {})["example"] = answer
