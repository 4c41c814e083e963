"""Where a /rank request's time goes: each stage timed warm in-process, and the real server's own
view of the same requests under load.

    python -m benchmarks.serving.stages [--model demo|benchmark] [--counts 100,500]
        [--requests 1000] [--no-doc]

In-process (one service opened as `ranker serve` opens it, impression log off): the request's
stages one by one on the same parsed body, each the best of 7 repeats of a timed loop: parsing,
the item columns, encoding the user and the items, the ONNX call as the service makes it, score +
sort + the impression record, the response and the record's serialisation; beside them the
model's bare call (the median of the fastest of benchmarks.serving_rank.BareOrt's ways). In a
warm loop a stage runs faster than inside a request (its caches are its own), so the stages do
not add up to a request's time; how much faster shows in the request's whole Python path timed
three ways: back to back, right after an ONNX call, and after 1 ms idle.

Server (`python -m serving.server` with the serving_rank benchmark's settings, one connection
from a separate process): client p50 / p99, and from the service's Prometheus histograms the
mean time in the handler and in the ONNX call; CPU per request of each of the server's threads
from /proc (the event loop's thread, the row-chunk helper, the impression writer). Writes its
table to docs/benchmarks.md (section `serving_stages`) unless --no-doc.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from benchmarks.report import machine, write_section
from benchmarks.serving_rank import (
    CONFIG,
    DEMO_CONFIG,
    ROOT,
    BareOrt,
    build_registry,
    experiments_file,
    free_port,
    loadgen,
    ranker_env,
    request_body,
    wait_ready,
)

BARE = "ONNX call (bare: the fastest way's median)"
PATH_WARM = "all but the ONNX call: warm"
PATH_AFTER_ONNX = "all but the ONNX call: right after an ONNX call"
PATH_AFTER_IDLE = "all but the ONNX call: after 1 ms idle"
STAGES = (
    "parse",
    "item columns",
    "encode user",
    "encode items",
    "ONNX call (service)",
    BARE,
    "score + sort + record",
    "response",
    "record serialisation",
    PATH_WARM,
    PATH_AFTER_ONNX,
    PATH_AFTER_IDLE,
)


def best_us(fn: Callable[[], object], number: int) -> float:
    """Microseconds per call: the best of 7 timed loops of `number` calls."""
    return min(timeit.repeat(fn, number=number, repeat=7)) / number * 1e6


def in_process(tmp: Path, version_dir: Path, table: Any, spec: Any, counts: list[int]) -> dict:
    """Warm per-stage timings at each count (us)."""
    os.environ.update(
        {
            "RANKER_REGISTRY": str(tmp / "models"),
            "RANKER_EXPERIMENTS_FILE": str(experiments_file(tmp, "stages", version_dir)),
            "RANKER_IMPRESSION_LOG": "none",
            "RANKER_LOG_LEVEL": "warning",
        }
    )
    # Imported here: the service reads its settings at open, from the environment set above.
    from serving.service import open_service
    from serving.settings import Settings

    service = open_service(Settings.from_env())
    state = service.manager.state
    assert state is not None, service.manager.not_ready_reason
    try:
        return {
            n: stage_times(state, BareOrt(version_dir, spec, raw), raw)
            for n, raw in ((n, request_body(table, spec, n)) for n in counts)
        }
    finally:
        service.close()


def stage_times(state: Any, bare: BareOrt, raw: dict[str, Any]) -> dict[str, float]:
    """Each stage of one request body, warm (us)."""
    from serving import ranking
    from serving.columns import item_columns, user_columns
    from serving.impressions import encode_default
    from serving.response import render

    n = len(raw["candidates"])
    body = orjson.dumps(raw)
    parsed = state.parser.parse(body, 100_000)
    assignment, model, items, user, item = ranking.encode(state, parsed)
    feeds = {**user, **item}
    predictions = model.predict(feeds)
    result = ranking.finish(parsed, assignment, model, items, predictions, 0.0, True)
    users = user_columns(parsed, model.kinds)
    number = max(20, 20_000 // n)

    def python_path() -> None:  # every stage but the ONNX call, as a request runs them
        request = state.parser.parse(body, 100_000)
        chosen, served_model, columns, _, _ = ranking.encode(state, request)
        render(ranking.finish(request, chosen, served_model, columns, predictions, 0.0, True))

    def record() -> bytes:
        return orjson.dumps(
            result.impression, default=encode_default, option=orjson.OPT_SERIALIZE_NUMPY
        )

    return {
        "parse": best_us(lambda: state.parser.parse(body, 100_000), number),
        "item columns": best_us(lambda: item_columns(parsed, model.kinds), number),
        "encode user": best_us(lambda: model.encoder.encode_group("user", users, 1), number),
        "encode items": best_us(lambda: model.encoder.encode_group("item", items, n), number),
        "ONNX call (service)": best_us(lambda: model.predict(feeds), number),
        BARE: bare.median_ms(number) * 1e3,
        "score + sort + record": best_us(
            lambda: ranking.finish(parsed, assignment, model, items, predictions, 0.0, True),
            number,
        ),
        "response": best_us(lambda: render(result), number),
        "record serialisation": best_us(record, number),
        **after(python_path, lambda: model.predict(feeds), repeat=max(100, number)),
    }


def after(fn: Callable[[], None], onnx_call: Callable[[], object], repeat: int) -> dict[str, float]:
    """Median us of `fn` warm (back to back), right after an ONNX call, and after 1 ms idle: what
    the machine's state before a stage costs it (a request's Python runs after the last request's
    ONNX call and an idle wait for the next request)."""
    times: dict[str, list[float]] = {PATH_WARM: [], PATH_AFTER_ONNX: [], PATH_AFTER_IDLE: []}
    before: dict[str, Callable[[], object]] = {
        PATH_WARM: lambda: None,
        PATH_AFTER_ONNX: onnx_call,
        PATH_AFTER_IDLE: lambda: time.sleep(0.001),
    }
    for _ in range(3):  # conditions in turn, in blocks: the machine drifts
        for name, setup in before.items():
            for _ in range(repeat // 3):
                setup()
                started = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) * 1e6 for name, values in times.items()}


def thread_cpu_ticks(pid: int) -> dict[str, int]:
    """user + system clock ticks of each thread of a process, by 'tid name'."""
    ticks = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks[f"{tid} {name}"] = int(fields[11]) + int(fields[12])
    return ticks


def histogram_means(metrics_url: str) -> dict[str, tuple[float, float]]:
    """(sum, count) of each `_seconds` histogram of the service's /metrics."""
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    found: dict[str, list[float]] = {}
    for name, part, value in re.findall(
        r"^(ranker_\w+_seconds)_(sum|count)(?:\{[^}]*\})? ([0-9.e+-]+)$", text, re.M
    ):
        pair = found.setdefault(name, [0.0, 0.0])
        pair[0 if part == "sum" else 1] += float(value)
    return {name: (s, c) for name, (s, c) in found.items()}


def served(tmp: Path, version_dir: Path, table: Any, spec: Any, args: argparse.Namespace) -> dict:
    """Client percentiles, the service's own handler and ONNX means, CPU per request per thread."""
    counts = [int(c) for c in args.counts.split(",")]
    port = free_port()
    env = ranker_env(tmp, "stages-server", version_dir, port, counts)
    server = subprocess.Popen([sys.executable, "-m", "serving.server"], env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}/rank"
    tick = os.sysconf("SC_CLK_TCK")
    results: dict[int, dict[str, Any]] = {}
    try:
        for n in counts:
            body_file = tmp / f"body-{n}.json"
            body_file.write_bytes(json.dumps(request_body(table, spec, n)).encode())
            wait_ready(url, body_file.read_bytes())
            loadgen(url, body_file, "--requests", "200")  # warm, and past the warm-up's runs
            hist_before = histogram_means(url.replace("/rank", "/metrics"))
            cpu_before = thread_cpu_ticks(server.pid)
            measured = loadgen(url, body_file, "--requests", str(args.requests))
            cpu_after = thread_cpu_ticks(server.pid)
            hist_after = histogram_means(url.replace("/rank", "/metrics"))
            means = {}
            for name, (total, count) in hist_after.items():
                before_total, before_count = hist_before.get(name, (0.0, 0.0))
                if count > before_count:
                    means[name] = (total - before_total) / (count - before_count) * 1e3
            per_thread = {
                key: (cpu_after[key] - cpu_before.get(key, 0)) / tick / args.requests * 1e3
                for key in cpu_after
            }
            busy = sorted((v for v in per_thread.values() if v > 0), reverse=True)
            results[n] = {
                "p50": measured["p50"],
                "p99": measured["p99"],
                "handler_ms": means.get("ranker_request_duration_seconds"),
                "onnx_ms": means.get("ranker_onnx_run_duration_seconds"),
                "cpu_threads_ms": busy,
            }
    finally:
        server.terminate()
        server.wait(timeout=30)
    return results


def render_table(
    stages: dict[int, dict[str, float]], server: dict[int, dict[str, Any]], args: argparse.Namespace
) -> str:
    counts = sorted(stages)
    head = " | ".join(f"{n} candidates" for n in counts)
    lines = [
        f"`python -m benchmarks.serving.stages --model {args.model} --counts {args.counts} "
        f"--requests {args.requests}`: the {args.model} model (MMoE, 8 experts, "
        f"{'[256, 128]' if args.model == 'benchmark' else '[128, 64]'}), {machine()}, load "
        f"average {os.getloadavg()[1]:.1f}. Stages warm in-process, best of 7 loops (a stage "
        "runs faster in a warm loop than inside a request, so they do not add up to it):",
        "",
        f"| stage | {head} |",
        "|---|" + "---:|" * len(counts),
    ]
    for stage in STAGES:
        lines.append(
            f"| {stage} | " + " | ".join(f"{stages[n][stage]:.0f} us" for n in counts) + " |"
        )
    lines += [
        "",
        f"The same model served (`python -m serving.server`, the serving_rank settings), "
        f"{args.requests} requests on one connection after 200 warm-up; handler and ONNX call "
        "are the means of the service's own histograms; CPU per request per thread from /proc, "
        "largest first (the event loop's thread, then the row-chunk helper):",
        "",
        f"| | {head} |",
        "|---|" + "---:|" * len(counts),
        "| client p50 / p99 | "
        + " | ".join(f"{server[n]['p50']:.2f} / {server[n]['p99']:.2f} ms" for n in counts)
        + " |",
        "| handler (mean) | " + " | ".join(_ms(server[n]["handler_ms"]) for n in counts) + " |",
        "| ONNX call in the service (mean) | "
        + " | ".join(_ms(server[n]["onnx_ms"]) for n in counts)
        + " |",
        "| CPU per request, by thread | "
        + " | ".join(
            " + ".join(f"{v:.2f}" for v in server[n]["cpu_threads_ms"]) + " ms" for n in counts
        )
        + " |",
    ]
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("demo", "benchmark"), default="demo")
    parser.add_argument("--counts", default="100,500")
    parser.add_argument("--requests", type=int, default=1000, help="measured requests per count")
    parser.add_argument("--no-doc", action="store_true", help="print only")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        config = CONFIG if args.model == "benchmark" else DEMO_CONFIG
        version_dir, table, spec = build_registry(tmp, config)
        server = served(tmp, version_dir, table, spec, args)
        time.sleep(1.0)  # the server's threads gone before the in-process loops
        stages = in_process(tmp, version_dir, table, spec, counts)
    body = "## Serving: where a /rank request's time goes\n\n" + render_table(stages, server, args)
    print(body)
    if not args.no_doc:
        write_section("serving_stages", body)


if __name__ == "__main__":
    main()
