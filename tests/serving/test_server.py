"""`serving.server.run` under uvicorn in a real process: settings from RANKER_* variables, HTTP on
a socket, graceful shutdown (the impression writer drains)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from serving.settings import Settings
from tests.serving.conftest import TOKEN, free_port


def test_server_runs_from_environment(
    settings: Settings, body: dict[str, Any], tmp_path: Path
) -> None:
    port = free_port()
    log = Path(str(settings.impression_log))
    env = {
        **os.environ,
        "RANKER_REGISTRY": str(settings.registry),
        "RANKER_EXPERIMENTS_FILE": str(settings.experiments_file),
        "RANKER_IMPRESSION_LOG": str(log),
        "RANKER_ADMIN_TOKEN": TOKEN,
        "RANKER_PORT": str(port),
        "RANKER_WARMUP_COUNTS": "1,10",
        "RANKER_INTRA_OP_THREADS": "1",
        "RANKER_LOG_LEVEL": "warning",
    }
    output = tmp_path / "server.out"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "serving.server"], env=env, stdout=sink, stderr=sink
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"server did not become ready:\n{output.read_text()}")
            time.sleep(0.1)
        response = httpx.post(f"{base}/rank", json=body, timeout=10)
        assert response.status_code == 200, response.text
        assert response.json()["model_version"] == "ranker/v0002"
        bad = httpx.post(f"{base}/rank", content=b"{", timeout=10)
        assert bad.status_code == 400 and bad.json()["error"]["field"] == "body"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    # uvicorn shuts down gracefully, then re-raises the signal it caught: -SIGTERM is a clean exit.
    assert code in (0, -signal.SIGTERM)
    assert log.read_text().count("\n") == 1  # drained at shutdown
