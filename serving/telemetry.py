"""The service's Prometheus metrics; gauges read live values from the state manager at scrape."""

from __future__ import annotations

from collections.abc import Iterable

from serving.impressions import ImpressionLog
from serving.prometheus import Labels, Registry
from serving.state import StateManager

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip
CANDIDATE_BUCKETS = (1, 10, 50, 100, 200, 500, 1000, 2000, 5000)


class ServiceMetrics:
    def __init__(self, manager: StateManager, impressions: ImpressionLog) -> None:
        self.manager = manager
        self.impressions = impressions
        r = self.registry = Registry()
        self.requests = r.counter(
            "ranker_requests_total",
            "/rank requests by variant and HTTP status",
            ("variant", "status"),
        )
        self.latency = r.histogram(
            "ranker_request_seconds",
            "/rank latency in the handler (body read to response bytes)",
            LATENCY_BUCKETS,
            ("variant", "status"),
        )
        self.onnx = r.histogram(
            "ranker_onnx_seconds", "ONNX Runtime run time per request", LATENCY_BUCKETS, ("model",)
        )
        self.candidates = r.histogram(
            "ranker_candidates", "candidates per ranked request", CANDIDATE_BUCKETS
        )
        self.reloads = r.counter(
            "ranker_reloads_total", "admin config/model reloads by result", ("kind", "result")
        )
        r.gauge("ranker_ready", "1 when a warmed state is serving", source=self._ready)
        r.gauge(
            "ranker_config_version", "version of the served experiment config", source=self._version
        )
        r.gauge(
            "ranker_config_age_seconds",
            "seconds since the store last confirmed the served config (grows while it is down)",
            source=self._age,
        )
        r.gauge(
            "ranker_store_up", "1 when the last experiment-store read succeeded", source=self._up
        )
        r.counter_from("ranker_store_errors_total", "failed experiment-store reads", self._errors)
        r.counter_from("ranker_swaps_total", "serving states swapped in", self._swaps)
        r.gauge(
            "ranker_config_rejected",
            "1 when the last config or model offered was refused (current state kept)",
            source=self._rejected,
        )
        r.gauge(
            "ranker_model_info",
            "models served, with the ONNX Runtime provider each actually runs on",
            ("model", "provider", "requested", "fallback"),
            source=self._models,
        )
        r.counter_from(
            "ranker_impressions_total",
            "impression records by outcome (written, failed, dropped when the queue was full)",
            self._impressions,
            ("outcome",),
        )
        r.gauge("ranker_impression_queue", "records waiting for the writer", source=self._queue)

    def observe(self, variant: str, status: int, seconds: float) -> None:
        labels = (variant, str(status))
        self.requests.inc(labels)
        self.latency.observe(seconds, labels)

    def render(self) -> str:
        return self.registry.render()

    # -- gauge sources -------------------------------------------------------------------------
    def _ready(self) -> Iterable[tuple[Labels, float]]:
        return [((), float(self.manager.state is not None))]

    def _version(self) -> Iterable[tuple[Labels, float]]:
        state = self.manager.state
        return [((), float(state.config.version))] if state is not None else []

    def _age(self) -> Iterable[tuple[Labels, float]]:
        age = self.manager.config_age()
        return [((), age)] if age is not None else []

    def _up(self) -> Iterable[tuple[Labels, float]]:
        return [((), float(self.manager.status.ok))]

    def _errors(self) -> Iterable[tuple[Labels, float]]:
        return [((), float(self.manager.status.errors))]

    def _swaps(self) -> Iterable[tuple[Labels, float]]:
        return [((), float(self.manager.status.swaps))]

    def _rejected(self) -> Iterable[tuple[Labels, float]]:
        return [((), float(self.manager.status.rejected is not None))]

    def _models(self) -> Iterable[tuple[Labels, float]]:
        state = self.manager.state
        if state is None:
            return []
        return [
            ((str(m.ref), m.provider, ",".join(m.requested), str(m.fallback).lower()), 1.0)
            for m in state.models.values()
        ]

    def _impressions(self) -> Iterable[tuple[Labels, float]]:
        log = self.impressions
        return [
            (("written",), float(log.written)),
            (("failed",), float(log.failed)),
            (("dropped",), float(log.dropped)),
        ]

    def _queue(self) -> Iterable[tuple[Labels, float]]:
        return [((), float(self.impressions.depth()))]
