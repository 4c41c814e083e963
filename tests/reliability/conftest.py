"""Reliability fixtures: the serving fixtures of tests/serving/conftest.py (built on the session's
shared tiny run and registry from tests/conftest.py, so no second model is trained)."""

from __future__ import annotations

from tests.serving.conftest import (
    anyio_backend,
    body,
    built,
    log_rows,
    own_redis,
    redis_settings,
    registry,
    settings,
)

__all__ = [
    "anyio_backend",
    "body",
    "built",
    "log_rows",
    "own_redis",
    "redis_settings",
    "registry",
    "settings",
]
