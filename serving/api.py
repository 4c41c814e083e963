"""POST /rank: the hot path. No pydantic and no jsonable_encoder: bytes in, bytes out."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from starlette.background import BackgroundTask
from starlette.responses import Response

from serving import logs
from serving.deps import read_body, require_json
from serving.errors import ApiError, error_response
from serving.impressions import now_ms
from serving.logs import REQUEST_ID
from serving.ranking import RankResult, experiment_doc, rank, render
from serving.schemas import ERRORS, RankResponse
from serving.served_features import ServedFeatures
from serving.service import Service
from serving.validation import parse_request

router = APIRouter(tags=["ranking"])


def body_schema(name: str) -> dict[str, Any]:
    """OpenAPI for a body the handler reads itself (the schema is registered in app.py)."""
    ref = {"$ref": f"#/components/schemas/{name}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


@router.post(
    "/rank",
    summary="Rank candidates for one user",
    response_model=RankResponse,
    responses=ERRORS,
    openapi_extra=body_schema("RankRequest"),
)
async def rank_endpoint(request: Request) -> Response:
    started = time.perf_counter()
    service: Service = request.app.state.service
    if service.tracer is not None:  # RANKER_OTEL=1: the same steps, with spans (serving.tracing)
        return await service.tracer.handle(request)
    settings = service.settings
    variant = "-"
    request_id = None
    try:
        require_json(request)
        body = await read_body(request, settings.max_body_bytes)
        state = service.manager.state  # read once: a swap cannot change it under this request
        if state is None:
            raise ApiError(503, None, f"not ready: {service.manager.not_ready_reason}")
        parsed = parse_request(body, settings.max_candidates, state.decoder)
        request_id = parsed.request_id
        REQUEST_ID.set(request_id)  # on every line logged from here on
        result = rank(state, parsed)
        variant = result.assignment.label
        content = render(result)
    except ApiError as error:
        seconds = time.perf_counter() - started
        service.metrics.observe(variant, error.status, seconds)
        if settings.access_log:
            # A body that did not parse has no id to trust: the client's X-Request-ID, if any.
            request_id = request_id or request.headers.get("x-request-id")
            logs.access(error.status, seconds, request_id=request_id, error_field=error.field)
        return error_response(error)
    seconds = time.perf_counter() - started
    model_version = str(result.model.ref)
    service.metrics.observe_ranked(
        variant, model_version, len(parsed.candidates), result.onnx_seconds, seconds, request_id
    )
    # Once the response is sent: queueing the impression and the access line is not the
    # client's wait.
    after = BackgroundTask(after_response, service, result, model_version, seconds)
    return Response(content, media_type="application/json", background=after)


async def after_response(
    service: Service, result: RankResult, model_version: str, seconds: float
) -> None:
    # async so that Starlette runs it inline, not on its thread pool
    service.impressions.submit(impression(result, service.settings.log_features))
    if service.settings.access_log:
        logs.access(
            200,
            seconds,
            request_id=result.request.request_id,
            model_version=model_version,
            variant=result.assignment.label,
            candidates=len(result.request.candidates),
        )


def impression(result: RankResult, log_features: bool = False) -> dict[str, Any]:
    """The impression record; numpy arrays (and the served features) are serialised later, by
    the writer thread."""
    record = {
        "request_id": result.request.request_id,
        "user_id": result.request.user_id,
        "ts": now_ms(),
        "model": result.model.ref.name,
        "model_version": result.model.ref.version,
        "variant": result.assignment.label,
        "layers": experiment_doc(result.assignment)["layers"],
        "item_ids": result.item_ids,
        "scores": result.scores,
        "predictions": result.predictions,
    }
    if log_features:
        request = result.request
        record["positions"] = np.arange(len(result.item_ids))
        record["features"] = ServedFeatures(
            request.user, request.context, result.item_columns, result.order
        )
    return record
