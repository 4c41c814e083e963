"""Where a /rank request's time goes: py-spy on the real service under load from another process.

    python -m benchmarks.serving.profile_rank [--model benchmark|demo] [--counts 100,500]
        [--seconds 15] [--rate 1000] [--out out/profile]

Starts `python -m serving.server` on the serving_rank benchmark's model (or the demo's smaller
one), loads it from `benchmarks.serving.loadgen` (one connection, closed loop) and samples the
server's main thread with py-spy. Prints, per candidate count, the share of the samples each
function takes inclusive of its callees (the request's stages) and its own ("self", what to cut),
and writes py-spy's raw collapsed stacks under --out for a flamegraph. Needs `py-spy` (dev extra).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.serving_rank import (
    CONFIG,
    DEMO_CONFIG,
    ROOT,
    build_registry,
    experiments_file,
    free_port,
    request_body,
    wait_ready,
)


def summarise(raw: Path, top: int) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """(inclusive, self) shares of the main thread's samples, largest first."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        frames = stack.split(";")
        if "MainThread" not in frames[0]:  # `--threads` puts the thread's name first
            continue
        count = int(count_text)
        total += count
        names = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].rsplit("/", 1)[-1]
                 if " (" in f else f for f in frames[1:]]  # fmt: skip
        for name in set(names):
            inclusive[name] += count
        if names:
            own[names[-1]] += count
    share = 100.0 / max(total, 1)
    return (
        [(k, v * share) for k, v in inclusive.most_common(top)],
        [(k, v * share) for k, v in own.most_common(top)],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("benchmark", "demo"), default="benchmark")
    parser.add_argument("--counts", default="100,500")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rate", type=int, default=1000, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "profile")
    parser.add_argument("--native", action="store_true", help="py-spy --native (C frames too)")
    parser.add_argument(
        "--gc", action="store_true", help="also record every GC pause (benchmarks.serving.gc_trace)"
    )
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        config = CONFIG if args.model == "benchmark" else DEMO_CONFIG
        version_dir, table, spec = build_registry(tmp, config)
        experiments = experiments_file(tmp, "ranker", version_dir)
        port = free_port()
        counts = [int(c) for c in args.counts.split(",")]
        env = {
            **os.environ,
            "RANKER_REGISTRY": str(tmp / "models"),
            "RANKER_EXPERIMENTS_FILE": str(experiments),
            "RANKER_PORT": str(port),
            "RANKER_IMPRESSION_LOG": str(tmp / "impressions.jsonl"),
            "RANKER_WARMUP_COUNTS": ",".join(map(str, counts)),
            "RANKER_LOG_LEVEL": "warning",
        }
        module = "serving.server"
        if args.gc:
            module = "benchmarks.serving.gc_trace"
            env["RANKER_GC_TRACE"] = str(args.out / f"gc-{args.model}.json")
        server = subprocess.Popen([sys.executable, "-m", module], env=env, cwd=ROOT)
        url = f"http://127.0.0.1:{port}/rank"
        loaded: list[tuple[float, float]] = []
        try:
            for n in counts:
                body_file = tmp / f"body-{n}.json"
                body_file.write_bytes(json.dumps(request_body(table, spec, n)).encode())
                wait_ready(url, body_file.read_bytes())
                raw = args.out / f"{args.model}-{n}.txt"
                load = threading.Thread(
                    target=subprocess.run,
                    args=(
                        [
                            sys.executable,
                            "-m",
                            "benchmarks.serving.loadgen",
                            url,
                            str(body_file),
                            "--requests",
                            "1000000",
                            "--seconds",
                            str(args.seconds + 2),
                        ],
                    ),
                    kwargs={"cwd": ROOT, "capture_output": True},
                )
                load.start()
                started = time.time()
                command = [spy, "record", "--pid", str(server.pid), "--rate", str(args.rate),
                           "--duration", str(int(args.seconds)), "--format", "raw",
                           "--output", str(raw), "--threads"]  # fmt: skip
                if args.native:
                    command.append("--native")
                subprocess.run(command, check=True, capture_output=True)
                load.join()
                loaded.append((started, time.time()))
                inclusive, own = summarise(raw, args.top)
                print(f"\n## {args.model} model, {n} candidates ({raw})")
                print("inclusive %:")
                for name, value in inclusive:
                    print(f"  {value:5.1f}  {name}")
                print("self %:")
                for name, value in own:
                    print(f"  {value:5.1f}  {name}")
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
    if args.gc:
        print_gc(args.out / f"gc-{args.model}.json", loaded)


def print_gc(path: Path, loaded: list[tuple[float, float]]) -> None:
    """Collections per generation while the load ran: how many, median and longest pause."""
    pauses = json.loads(path.read_text())["pauses"]
    during = [(g, s) for g, s, end in pauses if any(a <= end <= b for a, b in loaded)]
    seconds = sum(b - a for a, b in loaded)
    print(f"\n## GC pauses under load ({path}): {seconds:.0f} s, {len(pauses) - len(during)} "
          "collections outside it (start-up, warm-up)")  # fmt: skip
    for generation in (0, 1, 2):
        times = sorted(s * 1e3 for g, s in during if g == generation)
        if times:
            print(
                f"  gen {generation}: {len(times)} collections, median {times[len(times) // 2]:.3f} ms, "
                f"max {times[-1]:.3f} ms"
            )


if __name__ == "__main__":
    main()
