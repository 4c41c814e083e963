"""Timing several ways of doing one thing on a shared machine, in blocks that take turns."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping


def blocked_medians(
    ways: Mapping[str, Callable[[], object]], repeat: int, blocks: int = 5, pause_s: float = 0.05
) -> dict[str, float]:
    """Median ms of each way over about `repeat` calls, run in `blocks` blocks of consecutive
    calls, the ways taking turns block by block. Each block starts with a pause and one untimed
    call. Call-by-call turns would let a way that leaves threads spinning after its call (ONNX
    Runtime's default pool) take the core the next way needs; a service runs one way, not all."""
    times: dict[str, list[float]] = {key: [] for key in ways}
    for _ in range(blocks):
        for key, call in ways.items():
            time.sleep(pause_s)
            call()
            for _ in range(max(1, repeat // blocks)):
                started = time.perf_counter()
                call()
                times[key].append(time.perf_counter() - started)
    return {key: statistics.median(spent) * 1e3 for key, spent in times.items()}
