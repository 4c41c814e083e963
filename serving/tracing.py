"""Optional OpenTelemetry spans for POST /rank (`RANKER_OTEL=1`, `pip install 'ranker[otel]'`).

Off, nothing here runs: the route checks `service.tracer is None` once and goes on unchanged. On,
the route hands the request and its after-response step to `RankTracer.handle`, the same steps as
the route with a perf_counter stamp between stages; after the response is sent, a background task turns the stamps
into spans with explicit start and end times, so exporting never delays the client. The spans:
`POST /rank` (request id, variant, model version, candidates, status) with children `parse`
(read and validate the body), `encode` (assignment and feature encoding), `ort` (ONNX Runtime),
`score` (score formula, sort, cut) and `render` (the response body).

Spans go to the tracer provider the process has: configure the SDK and an exporter yourself, or
start the service under `opentelemetry-instrument` (OTEL_* variables pick the exporter).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi import Request
from starlette.background import BackgroundTask
from starlette.responses import Response

try:
    from opentelemetry import trace
    from opentelemetry.trace import Status, StatusCode
except ImportError:  # the `otel` extra is optional
    trace = None  # type: ignore[assignment]

from serving import logs
from serving.body import read_body, require_json
from serving.errors import ApiError, error_response
from serving.logs import REQUEST_ID
from serving.ranking import RankResult, rank, rank_batched
from serving.response import render

TRACER_NAME = "ranker.serving"
# Child spans of a ranked request, each from one stamp to the next.
STAGES = ("parse", "encode", "ort", "score", "render")
# The route's work after a ranked response is sent: (service, result, model version, seconds).
# Passed in by the route (serving.routes.rank.after_response), so this module never imports the
# route: the service opens the tracer, and the route depends on the service.
AfterResponse = Callable[[Any, RankResult, str, float], Awaitable[None]]


class TracingUnavailable(RuntimeError):
    """RANKER_OTEL=1 without the opentelemetry packages."""


def open_tracer(enabled: bool, provider: Any = None) -> RankTracer | None:
    """The /rank tracer when `enabled` (RANKER_OTEL), else None; `provider` defaults to the
    process's global tracer provider."""
    if not enabled:
        return None
    if trace is None:
        raise TracingUnavailable(
            "RANKER_OTEL=1 but opentelemetry is not installed: pip install 'ranker[otel]'"
        )
    return RankTracer(trace.get_tracer(TRACER_NAME, tracer_provider=provider))


class RankTracer:
    def __init__(self, tracer: Any) -> None:
        self.tracer = tracer

    async def handle(self, request: Request, after_response: AfterResponse) -> Response:
        """POST /rank with stage stamps (serving.routes.rank.rank_endpoint, step for step);
        `after_response` is the route's own step once the response is sent."""
        clock = time.perf_counter
        started = clock()
        service = request.app.state.service
        settings = service.settings
        variant = "-"
        request_id = None
        stamps = [started]
        try:
            require_json(request)
            body = await read_body(request, settings.max_body_bytes)
            state = service.manager.state
            if state is None:
                raise ApiError(503, None, f"not ready: {service.manager.not_ready_reason}")
            parsed = state.parser.parse(body, settings.max_candidates)
            stamps.append(clock())
            request_id = parsed.request_id
            REQUEST_ID.set(request_id)
            if state.batching:
                result = await rank_batched(state, parsed, settings.log_features)
            else:
                result = rank(state, parsed, settings.log_features)
            stamps.append(clock())
            variant = result.assignment.label
            content = render(result)
        except ApiError as error:
            seconds = clock() - started
            service.metrics.observe(variant, error.status, seconds)
            request_id = request_id or request.headers.get("x-request-id")
            if settings.access_log:
                logs.access(error.status, seconds, request_id=request_id, error_field=error.field)
            attributes = {"http.response.status_code": error.status, "ranker.variant": variant}
            if request_id is not None:
                attributes["ranker.request_id"] = request_id
            response = error_response(error)
            response.background = BackgroundTask(self.export, [started, clock()], attributes, error)
            return response
        ended = clock()
        seconds = ended - started
        model_version = str(result.model.ref)
        service.metrics.observe_ranked(
            variant, model_version, parsed.size, result.onnx_seconds, seconds, request_id
        )
        # parse end, ORT start, ORT end, rank end, render end.
        onnx_end = result.onnx_started + result.onnx_seconds
        stamps = [started, stamps[1], result.onnx_started, onnx_end, stamps[2], ended]
        attributes = {
            "http.response.status_code": 200,
            "ranker.request_id": request_id,
            "ranker.variant": variant,
            "ranker.model_version": model_version,
            "ranker.candidates": parsed.size,
        }

        async def after() -> None:
            await after_response(service, result, model_version, seconds)
            self.export(stamps, attributes, None)

        return Response(content, media_type="application/json", background=BackgroundTask(after))

    def export(
        self,
        stamps: Sequence[float],
        attributes: dict[str, Any],
        error: ApiError | None,
    ) -> None:
        """Spans from perf_counter stamps: the request from the first to the last stamp, and for
        a ranked request one child per stage between consecutive stamps."""
        offset = time.time_ns() - time.perf_counter_ns()

        def wall(stamp: float) -> int:
            return offset + int(stamp * 1e9)

        root = self.tracer.start_span(
            "POST /rank",
            kind=trace.SpanKind.SERVER,
            start_time=wall(stamps[0]),
            attributes=attributes,
        )
        if error is not None:
            root.set_status(Status(StatusCode.ERROR, error.message))
            if error.field is not None:
                root.set_attribute("ranker.error_field", error.field)
        else:
            context = trace.set_span_in_context(root)
            for name, begin, end in zip(STAGES, stamps[:-1], stamps[1:], strict=True):
                span = self.tracer.start_span(name, context=context, start_time=wall(begin))
                span.end(end_time=wall(end))
        root.end(end_time=wall(stamps[-1]))
