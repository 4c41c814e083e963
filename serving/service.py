"""Everything the app holds at run time, opened in the lifespan and closed at shutdown."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import redis

from ranker.experiment_store import ExperimentStore, open_store
from serving.impressions import ImpressionWriter, JsonlSink, RedisStreamSink, Sink
from serving.models import ModelPool
from serving.settings import Settings
from serving.state import StateManager
from serving.telemetry import ServiceMetrics

if TYPE_CHECKING:
    from serving.tracing import RankTracer

log = logging.getLogger("ranker.serving")

# The packaged experiment config (read-only) used when RANKER_EXPERIMENTS_FILE is unset.
DEFAULT_EXPERIMENTS = Path(__file__).with_name("default_experiments.yaml")


@dataclass
class Service:
    settings: Settings
    manager: StateManager
    impressions: ImpressionWriter
    metrics: ServiceMetrics
    # RANKER_OTEL=1: /rank spans (serving.tracing); None costs the route one check.
    tracer: RankTracer | None = None

    def close(self) -> None:
        self.manager.stop()
        self.manager.pool.close()
        self.impressions.close()

    async def close_batchers(self) -> None:
        """Stop the served models' batchers (on the event loop, which runs them). A version a
        swap dropped has an idle batcher, which holds no task (serving/batching.py)."""
        state = self.manager.state
        for model in state.models.values() if state is not None else ():
            await model.close()


def open_experiments(settings: Settings) -> ExperimentStore:
    """Redis when configured (an empty key seeded from the file once), else the file."""
    return open_store(
        Path(settings.registry),
        file=settings.experiments_file or DEFAULT_EXPERIMENTS,
        redis_url=settings.redis_url,
        redis_prefix=settings.redis_prefix,
        read_only=settings.experiments_file is None,
        seed_from_file=True,
        timeout=settings.redis_timeout_s,
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
    manager = StateManager(open_experiments(settings), pool, settings.poll_interval_s)
    impressions = ImpressionWriter(open_sink(settings), settings.impression_queue)
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
