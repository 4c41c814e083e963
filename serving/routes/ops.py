"""Operations surface: /livez, /readyz, /metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS
from starlette.responses import Response

from serving.deps import ServiceDep, json_response
from serving.service import Service

router = APIRouter(tags=["operations"])


@router.get("/livez", summary="The process answers")
async def livez() -> Response:
    return json_response({"status": "ok"})


@router.get(
    "/readyz",
    summary="Ready when a warmed state serves; reports store and models",
    responses={503: {"description": "not ready yet, or no model can serve; the body says why"}},
)
async def readyz(service: ServiceDep) -> Response:
    doc = readiness(service)
    return json_response(doc, 200 if doc["ready"] else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics (OpenMetrics with exemplars when the Accept header asks for it)",
    responses={
        200: {
            "description": "the scrape",
            "content": {
                CONTENT_TYPE_PLAIN_0_0_4.split(";")[0]: {"schema": {"type": "string"}},
                OPENMETRICS.split(";")[0]: {"schema": {"type": "string"}},
            },
        }
    },
)
async def metrics(request: Request, service: ServiceDep) -> Response:
    body, content_type = service.metrics.render(request.headers.get("accept"))
    return Response(body, headers={"Content-Type": content_type})


def readiness(service: Service) -> dict[str, Any]:
    manager = service.manager
    state = manager.state
    status = manager.status
    age = manager.config_age()
    doc: dict[str, Any] = {
        "ready": state is not None,
        "reason": manager.not_ready_reason or None,
        "config": None,
        "store": {
            "source": manager.store.description,
            "ok": status.ok,
            "error": status.error,
            "errors": status.errors,
            # Seconds since the store last confirmed the served config; grows while it is down.
            "config_age_s": None if age is None else round(age, 3),
        },
        "rejected": status.rejected,
        "models": [],
        "impressions": {
            "sink": service.impressions.sink.description if service.impressions.sink else None,
            "written": service.impressions.written,
            "failed": service.impressions.failed,
            "dropped": service.impressions.dropped,
            "queued": service.impressions.depth(),
        },
    }
    if state is not None:
        doc["config"] = {"version": state.config.version, "serving_since": state.since}
        doc["models"] = [
            {
                "model": str(m.ref),
                "provider": m.provider,
                "requested": list(m.requested),
                "fallback": m.fallback,
                "sha256": m.manifest.sha256,
                "tasks": list(m.tasks),
                "warmed": list(service.settings.warmup_counts),
                "load_seconds": round(m.load_seconds, 3),
            }
            for m in state.models.values()
        ]
    return doc
