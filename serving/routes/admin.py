"""Admin endpoints (bearer token): read and change the experiment config, reload models.

Changes are built and warmed beside the serving state, then swapped in; a refused change leaves
the current state serving. Blocking work (model loading, Redis) runs in a worker thread.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from ranker.experiment_store import StaleVersionError, StoreError, parse_document
from ranker.experiments import ExperimentError
from serving.body import read_body, require_json
from serving.deps import AdminDep, ServiceDep, json_response
from serving.errors import ApiError, split_field
from serving.parsing import loads_object
from serving.routes.rank import body_schema
from serving.schemas import ADMIN_ERRORS
from serving.state import ConfigRejected, ServingState

router = APIRouter(tags=["admin"], dependencies=[AdminDep], responses=ADMIN_ERRORS)


def summary(state: ServingState) -> dict[str, Any]:
    return {
        "version": state.config.version,
        "config": state.config.to_dict(),
        "models": [
            {"model": str(m.ref), "provider": m.provider, "sha256": m.manifest.sha256}
            for m in state.models.values()
        ],
    }


@router.get("/experiments", summary="The experiment config being served")
async def get_experiments(service: ServiceDep) -> Response:
    state = service.manager.state
    if state is None:
        raise ApiError(503, None, f"not ready: {service.manager.not_ready_reason}")
    return json_response(state.config.to_dict(), headers={"ETag": f'"{state.config.version}"'})


def expected_version(request: Request) -> int | None:
    raw = request.headers.get("if-match")
    if raw is None:
        return None
    try:
        return int(raw.strip().strip('"'))
    except ValueError:
        raise ApiError(422, "if-match", f"expected a config version number, got {raw!r}") from None


@router.put(
    "/experiments",
    summary="Validate, warm and store a new experiment config",
    description=(
        "The store assigns the next version (the body's `version` is ignored); send "
        "`If-Match: <current version>` to refuse a concurrent change (409). Model version "
        "`latest` is resolved now and stored as a concrete version."
    ),
    openapi_extra=body_schema("ExperimentDocument"),
)
async def put_experiments(request: Request, service: ServiceDep) -> Response:
    settings = service.settings
    expected = expected_version(request)
    require_json(request)
    doc = loads_object(await read_body(request, settings.max_body_bytes))
    doc.setdefault("version", 1)  # placeholder: the store numbers versions
    try:
        config = parse_document(doc, settings.registry)
    except ExperimentError as exc:
        raise ApiError(422, *split_field(str(exc), "config")) from None
    try:
        state = await asyncio.to_thread(service.manager.update, config, expected)
    except ConfigRejected as exc:
        service.metrics.reloads.labels("config", "rejected").inc()
        raise ApiError(422, exc.field, exc.message) from None
    except StaleVersionError as exc:
        service.metrics.reloads.labels("config", "stale").inc()
        raise ApiError(409, "if-match", str(exc)) from None
    except StoreError as exc:
        service.metrics.reloads.labels("config", "store_error").inc()
        raise ApiError(503, None, f"experiment store: {exc}") from None
    service.metrics.reloads.labels("config", "ok").inc()
    return json_response(summary(state))


@router.post(
    "/models/reload",
    summary="Re-read the config and reload every model it names (re-verified, warmed)",
)
async def reload_models(service: ServiceDep) -> Response:
    try:
        state = await asyncio.to_thread(service.manager.reload)
    except ConfigRejected as exc:
        service.metrics.reloads.labels("models", "rejected").inc()
        raise ApiError(503, exc.field, f"kept the current state: {exc.message}") from None
    except (StoreError, ExperimentError) as exc:
        service.metrics.reloads.labels("models", "store_error").inc()
        raise ApiError(503, None, f"kept the current state: {exc}") from None
    service.metrics.reloads.labels("models", "ok").inc()
    return json_response(summary(state))
