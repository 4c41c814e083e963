"""`run(settings)`: serve the app under uvicorn (uvloop and httptools when installed)."""

from __future__ import annotations

import importlib.util
import logging

import uvicorn

from serving.app import create_app
from serving.settings import Settings


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def run(settings: Settings | None = None) -> None:
    """Serve until interrupted. One worker per process: scale out with replicas sharing Redis."""
    settings = settings if settings is not None else Settings.from_env()
    settings.check()  # refuse bad settings before anything starts
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop" if _have("uvloop") else "asyncio",
        http="httptools" if _have("httptools") else "h11",
        log_level=settings.log_level,
        access_log=False,  # per-request logging costs more than a ranking; /metrics counts them
        lifespan="on",
    )
    uvicorn.Server(config).run()


def main() -> None:
    run(Settings.from_env())


if __name__ == "__main__":
    main()
