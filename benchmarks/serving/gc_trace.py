"""`python -m serving.server` with the garbage collector's pauses recorded (for the tail study).

    RANKER_GC_TRACE=/path/out.json python -m benchmarks.serving.gc_trace

Every collection's generation, duration and end time go to the JSON file at exit (SIGTERM), with the
collector's thresholds; benchmarks/serving/profile_rank.py --gc starts the server this way.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import time
from typing import Any

from serving import server

_started: list[float] = []
pauses: list[tuple[int, float, float]] = []  # generation, seconds, time.time() at the end


def _callback(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started.append(time.perf_counter())
    elif _started:
        pauses.append((info["generation"], time.perf_counter() - _started.pop(), time.time()))


def _dump(*_: Any) -> None:
    with open(os.environ["RANKER_GC_TRACE"], "w") as handle:
        json.dump({"threshold": gc.get_threshold(), "pauses": pauses}, handle)
    raise SystemExit(0)


def main() -> None:
    gc.callbacks.append(_callback)
    # uvicorn shuts down on SIGTERM, then raises it again for the handler it found: this one.
    signal.signal(signal.SIGTERM, _dump)
    server.main()


if __name__ == "__main__":
    main()
