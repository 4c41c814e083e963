"""What RANKER_OTEL costs /rank: the off path's added work, and the on path end to end.

    python -m benchmarks.otel_overhead [--count 500] [--requests 200] [--rounds 6]

In one process, on the serving_rank benchmark's MMoE (untrained weights, 1 ORT thread):
- loops (timeit, best of 7): the off path's additions, i.e. the route's `service.tracer is not None`
  check and RankResult's extra `onnx_started` field (against a copy of the class without it);
  and the on path's span export after the response (`RankTracer.export`), with the SDK
  (SimpleSpanProcessor into an in-memory exporter) and with the API's no-op provider;
- end to end: POST /rank through the real ASGI app (httpx.ASGITransport, impression log and access
  line off in both), off and on in alternating rounds; CPU (process_time) and wall per request,
  median of the rounds. The on app exports into the SDK's in-memory exporter.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

import httpx
import orjson

from benchmarks.serving_rank import build_registry, request_body
from serving.app import create_app
from serving.ranking import RankResult
from serving.settings import Settings
from serving.tracing import open_tracer


def _loop_ns(stmt: Any, names: dict[str, Any], number: int) -> float:
    """Best of 7 timeit runs, ns per execution; statements as text, so no call is timed."""
    return min(timeit.repeat(stmt, number=number, repeat=7, globals=names)) / number * 1e9


def off_path_loops(service: Any, result: RankResult) -> dict[str, float]:
    """ns per request of what the off path added."""
    fields = {f.name: getattr(result, f.name) for f in dataclasses.fields(RankResult)}
    without = {k: v for k, v in fields.items() if k != "onnx_started"}
    Older = dataclasses.make_dataclass(
        "Older",
        [(f.name, f.type) for f in dataclasses.fields(RankResult) if f.name != "onnx_started"],
        slots=True,
    )

    names = {"service": service, "RankResult": RankResult, "Older": Older}
    names.update(fields=fields, without=without)
    return {
        "tracer check": _loop_ns("service.tracer is not None", names, 1_000_000),
        "RankResult with field": _loop_ns("RankResult(**fields)", names, 200_000),
        "RankResult without": _loop_ns("Older(**without)", names, 200_000),
    }


def export_loops() -> dict[str, float]:
    """us per request of the on path's span export (after the response)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import NoOpTracerProvider

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    sdk, noop = open_tracer(True, provider), open_tracer(True, NoOpTracerProvider())
    assert sdk is not None and noop is not None
    now = time.perf_counter()
    stamps = [now + i * 1e-4 for i in range(6)]
    attributes = {"ranker.request_id": "r", "ranker.variant": "a", "ranker.candidates": 500}

    def sdk_export() -> None:
        sdk.export(stamps, attributes, None)
        exporter.clear()

    names = {"sdk_export": sdk_export, "noop": noop, "stamps": stamps, "attributes": attributes}
    return {
        "export, SDK + in-memory": _loop_ns("sdk_export()", names, 2_000) / 1e3,
        "export, no-op provider": _loop_ns("noop.export(stamps, attributes, None)", names, 20_000)
        / 1e3,
    }


async def _round(client: httpx.AsyncClient, body: bytes, requests: int) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(requests):
        response = await client.post(
            "/rank", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 200, response.text
    return (time.process_time() - cpu) / requests * 1e3, (
        time.perf_counter() - wall
    ) / requests * 1e3


async def end_to_end(settings: Settings, body: bytes, requests: int, rounds: int) -> dict[str, Any]:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    apps = {"off": create_app(settings), "on": create_app(dataclasses.replace(settings, otel=True))}
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    out: dict[str, dict[str, list[float]]] = {k: {"cpu": [], "wall": []} for k in apps}
    async with (
        apps["off"].router.lifespan_context(apps["off"]),
        apps["on"].router.lifespan_context(apps["on"]),
    ):
        apps["on"].state.service.tracer = open_tracer(True, provider)
        clients = {
            k: httpx.AsyncClient(transport=httpx.ASGITransport(app=a), base_url="http://ranker")
            for k, a in apps.items()
        }
        for client in clients.values():
            await _round(client, body, 20)  # warm-up
        for _ in range(rounds):
            for name, client in clients.items():
                cpu, wall = await _round(client, body, requests)
                out[name]["cpu"].append(cpu)
                out[name]["wall"].append(wall)
                exporter.clear()
        off_service = apps["off"].state.service
        for client in clients.values():
            await client.aclose()
    return {
        "medians": {k: {m: statistics.median(v) for m, v in d.items()} for k, d in out.items()},
        "ratios": [on / off for on, off in zip(out["on"]["cpu"], out["off"]["cpu"], strict=True)],
        "off_service": off_service,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=500, help="candidates per request")
    parser.add_argument("--requests", type=int, default=200, help="requests per round")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        version_dir, table, spec = build_registry(Path(tmp))
        body = request_body(table, spec, args.count)
        settings = Settings(
            registry=version_dir.parent.parent,
            impression_log=None,
            access_log=False,
            intra_op_threads=1,
            warmup_counts=(1, args.count),
            log_level="warning",
        )
        run = asyncio.run(end_to_end(settings, orjson.dumps(body), args.requests, args.rounds))
        state = run["off_service"].manager.state
        from serving.ranking import rank

        parsed = state.parser.parse(orjson.dumps(body), settings.max_candidates)
        loops = off_path_loops(run["off_service"], rank(state, parsed))
    exports = export_loops()
    med = run["medians"]
    ratios = run["ratios"]
    print(f"candidates {args.count}, {args.requests} requests x {args.rounds} rounds per side")
    for name, value in loops.items():
        print(f"  off path loop: {name}: {value:.1f} ns")
    for name, value in exports.items():
        print(f"  on path loop: {name}: {value:.2f} us")
    for side in ("off", "on"):
        print(
            f"  end to end {side}: CPU {med[side]['cpu']:.3f} ms, wall {med[side]['wall']:.3f} ms"
        )
    print(
        f"  on/off CPU per request: median {statistics.median(ratios):.3f} "
        f"(rounds {min(ratios):.3f}-{max(ratios):.3f})"
    )


if __name__ == "__main__":
    main()
