"""`run(settings)`: serve the app under uvicorn (uvloop and httptools when installed)."""

from __future__ import annotations

import importlib.util

import uvicorn

from serving import logs
from serving.app import create_app
from serving.settings import Settings


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def run(settings: Settings | None = None) -> None:
    """Serve until interrupted. One worker per process: scale out with replicas sharing Redis."""
    settings = settings if settings is not None else Settings.from_env()
    settings.check()  # refuse bad settings before anything starts
    with logs.configured(settings):
        config = uvicorn.Config(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            loop="uvloop" if _have("uvloop") else "asyncio",
            http="httptools" if _have("httptools") else "h11",
            log_level=settings.log_level,
            log_config=None,  # uvicorn's own lines go through the same JSON handler
            access_log=False,  # the /rank access line is ours: it names the model and variant
            lifespan="on",
        )
        uvicorn.Server(config).run()


def main() -> None:
    run(Settings.from_env())


if __name__ == "__main__":
    main()
