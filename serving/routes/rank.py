"""POST /rank: HTTP only. Bytes in (parsing), a ranking, bytes out (response); no pydantic and no
jsonable_encoder on the hot path.

The route is declared once, here, as a `RankRoute`: an APIRoute, so FastAPI documents it from this
declaration (serving/openapi.py adds the served models' features and examples), whose handler is
the endpoint itself, so FastAPI neither solves dependencies nor parses the body for it.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi.routing import APIRoute
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import request_response

from serving import logs
from serving.body import read_body, require_json
from serving.errors import ApiError, error_response
from serving.logs import REQUEST_ID
from serving.ranking import RankResult, rank, rank_batched
from serving.response import render
from serving.schemas import ERRORS, RankResponse
from serving.service import Service


class RankRoute(APIRoute):
    """Documented like any APIRoute; runs the endpoint on Starlette's plain request/response."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.app = request_response(self.endpoint)


async def rank_endpoint(request: Request) -> Response:
    started = time.perf_counter()
    service: Service = request.app.state.service
    if service.tracer is not None:  # RANKER_OTEL=1: the same steps, with spans (serving.tracing)
        return await service.tracer.handle(request, after_response)
    settings = service.settings
    variant = "-"
    request_id = None
    try:
        require_json(request)
        body = await read_body(request, settings.max_body_bytes)
        state = service.manager.state  # read once: a swap cannot change it under this request
        if state is None:
            raise ApiError(503, None, f"not ready: {service.manager.not_ready_reason}")
        parsed = state.parser.parse(body, settings.max_candidates)
        request_id = parsed.request_id
        REQUEST_ID.set(request_id)  # on every line logged from here on
        if state.batching:  # RANKER_BATCH_MAX_REQUESTS > 1 and a batched version served
            result = await rank_batched(state, parsed, settings.log_features)
        else:
            result = rank(state, parsed, settings.log_features)
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
        variant, model_version, parsed.size, result.onnx_seconds, seconds, request_id
    )
    # Once the response is sent: queueing the impression and the access line is not the
    # client's wait.
    after = BackgroundTask(after_response, service, result, model_version, seconds)
    return Response(content, media_type="application/json", background=after)


async def after_response(
    service: Service, result: RankResult, model_version: str, seconds: float
) -> None:
    # async so that Starlette runs it inline, not on its thread pool
    service.impressions.submit(result.impression)
    if service.settings.access_log:
        logs.access(
            200,
            seconds,
            request_id=result.request.request_id,
            model_version=model_version,
            variant=result.assignment.label,
            candidates=result.request.size,
        )


def route() -> RankRoute:
    """POST /rank with its OpenAPI declaration."""
    return RankRoute(
        "/rank",
        rank_endpoint,
        methods=["POST"],
        summary="Rank candidates for one user",
        tags=["ranking"],
        response_model=RankResponse,
        responses=ERRORS,
        openapi_extra=body_schema("RankRequest"),
    )


def body_schema(name: str) -> dict[str, Any]:
    """OpenAPI for a body the handler reads itself (the schema is in serving/openapi.py)."""
    ref = {"$ref": f"#/components/schemas/{name}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}
