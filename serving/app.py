"""`create_app(settings)`: the FastAPI app. Nothing is opened at import time; the lifespan opens
the experiment store, loads and warms the models, and starts the watcher and impression writer."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from serving.errors import ApiError, error_response
from serving.openapi import openapi
from serving.routes import admin, models, ops, rank
from serving.service import open_service
from serving.settings import Settings

log = logging.getLogger("ranker.serving")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings if settings is not None else Settings.from_env()
    for warning in settings.check():
        log.warning(warning)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = await asyncio.to_thread(open_service, settings)
        app.state.service = service
        tune_gc(settings)
        try:
            yield
        finally:
            await service.close_batchers()
            await asyncio.to_thread(service.close)

    app = FastAPI(
        title="ranker",
        summary="Multi-task ranking on ONNX Runtime with A/B buckets",
        version="0.1.0",
        lifespan=lifespan,
    )
    # The hot path first and on the app's own router: the handler reads its own body and needs
    # neither FastAPI's included-router dispatch nor dependency solving (~0.13 ms a request
    # under load, A/B; serving/routes/rank.py).
    app.router.routes.insert(0, rank.route())
    app.include_router(ops.router)
    app.include_router(models.router)
    app.include_router(admin.router)
    install_error_handlers(app)
    app.openapi = lambda: openapi(app)  # type: ignore[method-assign]
    return app


def tune_gc(settings: Settings) -> None:
    """Once models and sessions are loaded: move the start-up heap out of the collector's way
    and raise the young-generation threshold (see `Settings.gc_threshold`)."""
    if settings.freeze_gc:
        gc.collect()
        gc.freeze()
    if settings.gc_threshold:
        _, older, oldest = gc.get_threshold()
        gc.set_threshold(settings.gc_threshold, older, oldest)


def install_error_handlers(app: FastAPI) -> None:
    """Every error is `{"error": {"field", "message"}}`, including FastAPI's and Starlette's own."""

    async def api_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc)

    async def validation_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        field = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        return error_response(ApiError(422, field, str(first.get("msg"))))

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        error = ApiError(exc.status_code, None, str(exc.detail))
        error.headers.update(exc.headers or {})
        return error_response(error)

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(ApiError(500, None, "internal error"))

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
