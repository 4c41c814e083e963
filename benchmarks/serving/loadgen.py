"""Load generator run in its own process: POSTs one body to 127.0.0.1 and reports latencies.

    python -m benchmarks.serving.loadgen URL BODY_FILE --mode closed --requests 300 --concurrency 1
    python -m benchmarks.serving.loadgen URL BODY_FILE --mode rate --rate 50 --seconds 6

`closed`: each of `concurrency` connections sends its next request when the last answer arrives.
`rate`: requests are scheduled at a fixed rate and latency is measured from the scheduled time,
so a slow server cannot hide queueing (no coordinated omission). Both stop by count or time.
Prints one JSON line: count, errors, p50/p95/p99 in ms and throughput.
"""

from __future__ import annotations

import argparse
import http.client
import json
import threading
import time
from urllib.parse import urlsplit

import numpy as np

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _connection(url: str) -> tuple[http.client.HTTPConnection, str]:
    parts = urlsplit(url)
    if parts.hostname not in LOOPBACK:
        raise SystemExit(f"loadgen: refusing non-loopback host {parts.hostname!r}")
    return http.client.HTTPConnection(
        parts.hostname, parts.port or 80, timeout=30
    ), parts.path or "/"


def _post(conn: http.client.HTTPConnection, path: str, body: bytes) -> int:
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    return response.status


def closed_loop(
    url: str, body: bytes, requests: int, concurrency: int, seconds: float
) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds
    remaining = [requests]

    def worker() -> None:
        nonlocal errors
        conn, path = _connection(url)
        while time.perf_counter() < deadline:
            with lock:
                if remaining[0] <= 0:
                    break
                remaining[0] -= 1
            started = time.perf_counter()
            status = _post(conn, path, body)
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                errors += status != 200
        conn.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors, time.perf_counter() - started


def fixed_rate(
    url: str, body: bytes, rate: float, seconds: float, connections: int
) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    count = int(rate * seconds)
    start = time.perf_counter() + 0.05
    slots = iter(range(count))

    def worker() -> None:
        nonlocal errors
        conn, path = _connection(url)
        while True:
            with lock:
                index = next(slots, None)
            if index is None:
                break
            scheduled = start + index / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            status = _post(conn, path, body)
            elapsed = time.perf_counter() - scheduled
            with lock:
                latencies.append(elapsed)
                errors += status != 200
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("body")
    parser.add_argument("--mode", choices=("closed", "rate"), default="closed")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument(
        "--latencies", action="store_true", help="also print every latency (ms), for pooling"
    )
    args = parser.parse_args()
    with open(args.body, "rb") as handle:
        body = handle.read()
    conn, path = _connection(args.url)
    for _ in range(args.warmup):
        _post(conn, path, body)
    conn.close()
    if args.mode == "closed":
        latencies, errors, wall = closed_loop(
            args.url, body, args.requests, args.concurrency, args.seconds
        )
    else:
        latencies, errors, wall = fixed_rate(
            args.url, body, args.rate, args.seconds, max(args.concurrency, 8)
        )
    ms = np.asarray(latencies) * 1e3
    report = {
        "count": len(latencies),
        "errors": errors,
        "p50": float(np.percentile(ms, 50)),
        "p95": float(np.percentile(ms, 95)),
        "p99": float(np.percentile(ms, 99)),
        "throughput": len(latencies) / wall,
    }
    if args.latencies:
        report["latencies_ms"] = ms.round(4).tolist()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
