"""Everything the app holds at run time, opened in the lifespan and closed at shutdown."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import redis

from serving.experiments import ExperimentStore, FileStore, RedisStore
from serving.impressions import ImpressionLog, JsonlSink, RedisStreamSink, Sink
from serving.models import ModelPool
from serving.settings import Settings
from serving.state import StateManager
from serving.telemetry import ServiceMetrics

if TYPE_CHECKING:
    from serving.tracing import RankTracer

log = logging.getLogger("ranker.serving")


@dataclass
class Service:
    settings: Settings
    manager: StateManager
    impressions: ImpressionLog
    metrics: ServiceMetrics
    # RANKER_OTEL=1: /rank spans (serving.tracing); None costs the route one check.
    tracer: RankTracer | None = None

    def close(self) -> None:
        self.manager.stop()
        self.impressions.close()


def open_store(settings: Settings) -> ExperimentStore:
    file_store = FileStore(settings.experiments_file, settings.registry)
    if settings.redis_url is None:
        return file_store
    return RedisStore(
        settings.redis_url,
        settings.experiments_key,
        settings.experiments_channel,
        settings.registry,
        timeout=settings.redis_timeout_s,
        seed=file_store.load,
    )


def open_sink(settings: Settings) -> Sink | None:
    if settings.redis_url is not None:
        client = redis.Redis.from_url(
            settings.redis_url,
            socket_timeout=settings.redis_timeout_s,
            socket_connect_timeout=settings.redis_timeout_s,
        )
        return RedisStreamSink(
            client, settings.impressions_stream, settings.impression_stream_maxlen
        )
    if settings.impression_log is not None:
        return JsonlSink(settings.impression_log)
    log.warning("impression log disabled (RANKER_IMPRESSION_LOG=none, no Redis)")
    return None


def open_service(settings: Settings) -> Service:
    """Open the store, load and warm the configured models, start the watcher and the writer.

    A store or model that fails here leaves the service up but not ready (/readyz says why);
    the watcher keeps trying, so a Redis that starts later is picked up.
    """
    pool = ModelPool(settings)
    manager = StateManager(open_store(settings), pool, settings.poll_interval_s)
    impressions = ImpressionLog(open_sink(settings), settings.impression_queue)
    impressions.start()
    manager.start()
    if manager.state is None:
        log.error("not ready: %s", manager.not_ready_reason)
    tracer = None
    if settings.otel:
        from serving.tracing import open_tracer

        tracer = open_tracer(True)
    metrics = ServiceMetrics(manager, impressions)
    return Service(settings, manager, impressions, metrics, tracer)
