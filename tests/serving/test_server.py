"""`serving.server.run` under uvicorn in a real process: settings from RANKER_* variables, HTTP on
a socket, graceful shutdown (the impression writer drains)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import httpx

from serving.settings import Settings
from tests.serving.conftest import server_process


def test_server_runs_from_environment(
    settings: Settings, body: dict[str, Any], tmp_path: Path
) -> None:
    log = Path(str(settings.impression_log))
    with server_process(settings, tmp_path, RANKER_WARMUP_COUNTS="1,10") as (base, process):
        response = httpx.post(f"{base}/rank", json=body, timeout=10)
        assert response.status_code == 200, response.text
        assert response.json()["model_version"] == "ranker/v0002"
        bad = httpx.post(f"{base}/rank", content=b"{", timeout=10)
        assert bad.status_code == 400 and bad.json()["error"]["field"] == "body"
    # uvicorn shuts down gracefully, then re-raises the signal it caught: -SIGTERM is a clean exit.
    assert process.returncode in (0, -signal.SIGTERM)
    assert log.read_text().count("\n") == 1  # drained at shutdown
