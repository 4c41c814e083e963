"""POST /rank of the serving code in this tree against the serving code of a base commit, A/B.

    python -m benchmarks.serving_ab --base COMMIT [--head COMMIT] [--count 500] [--rounds 10]

Both servers run `python -m serving.server` from their own copy of the code: `ranker/` of the
base commit and `serving/` of the base commit (A) or of `--head` (B; default: this working tree),
so only the serving change differs. Same model (the serving_rank benchmark's MMoE), same settings, log level `info`
with stderr to a file, as deployed. Single-connection rounds take A and B in turn (the order
alternates), and B / A is the median of the per-round p50 ratios: the shared machine drifts
within a minute. Beside latency, each server's CPU seconds per request (user + system, from
/proc, every thread: the access log and impression writer included), which other load on the
machine disturbs far less than latency. Prints one JSON line and a Markdown row; writes nothing
into docs/.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any, cast

from benchmarks.report import machine, write_section
from benchmarks.serving_rank import (
    DEMO_CONFIG,
    ROOT,
    build_registry,
    experiments_file,
    free_port,
    loadgen,
    percentiles,
    request_body,
    stop,
    wait_ready,
)


def checkout(commit: str, paths: list[str], target: Path) -> None:
    """`paths` of `commit` into `target` (git archive: the working tree and index are untouched)."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit, *paths],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")


def start(code: Path, env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    # `python -m` puts the working directory first on sys.path, ahead of the editable install.
    with log.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "serving.server"],
            cwd=code,
            env={**env, "RANKER_PORT": str(port)},
            stdout=sink,
            stderr=sink,
        )


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, help="commit whose serving/ is A")
    parser.add_argument("--head", help="commit whose serving/ is B (default: the working tree)")
    parser.add_argument(
        "--env-b", action="append", default=[], help="NAME=VALUE for B only (e.g. a switch)"
    )
    parser.add_argument("--count", type=int, default=500, help="candidates per request")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--requests", type=int, default=300, help="per server, all rounds")
    parser.add_argument(
        "--model",
        choices=("benchmark", "demo"),
        default="benchmark",
        help="demo: experts [128, 64]",
    )
    parser.add_argument(
        "--no-doc", action="store_true", help="print only; leave docs/benchmarks.md as it is"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        version_dir, table, spec = build_registry(
            tmp, DEMO_CONFIG if args.model == "demo" else None
        )
        experiments = experiments_file(tmp, "ranker", version_dir)
        trees = {"A": tmp / "a", "B": tmp / "b"}
        checkout(args.base, ["ranker", "serving"], trees["A"])
        checkout(args.base, ["ranker"], trees["B"])
        if args.head:
            checkout(args.head, ["serving"], trees["B"])
        else:
            shutil.copytree(ROOT / "serving", trees["B"] / "serving")
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RANKER_")},
            "RANKER_REGISTRY": str(tmp / "models"),
            "RANKER_EXPERIMENTS_FILE": str(experiments),
            "RANKER_WARMUP_COUNTS": str(args.count),
            "RANKER_LOG_LEVEL": "info",
        }
        body_file = tmp / "body.json"
        body_file.write_bytes(json.dumps(request_body(table, spec, args.count)).encode())
        urls: dict[str, str] = {}
        pids: dict[str, int] = {}
        servers = []
        for name, code in trees.items():
            port = free_port()
            server_env = {**env, "RANKER_IMPRESSION_LOG": str(tmp / f"impressions-{name}.jsonl")}
            if name == "B":
                server_env.update(item.split("=", 1) for item in args.env_b)
            servers.append(start(code, server_env, port, tmp / f"server-{name}.log"))
            urls[name] = f"http://127.0.0.1:{port}/rank"
            pids[name] = servers[-1].pid
        try:
            for url in urls.values():
                wait_ready(url, body_file.read_bytes())
            load_before = os.getloadavg()[0]
            result = rounds(urls, pids, body_file, args)
            log_lines = {n: (tmp / f"server-{n}.log").read_text().count("\n") for n in trees}
        finally:
            stop(servers)
    result.update(base=args.base, head=args.head or "working tree", count=args.count)
    result.update(machine=machine(), log_lines=log_lines, load=(load_before, os.getloadavg()[0]))
    print(json.dumps(result))
    print(render(result, args))


def render(result: dict[str, Any], args: argparse.Namespace) -> str:
    a, b = result["A"], result["B"]
    low, high = result["ratio_range"]
    cpu = result["cpu_ms_per_request"]
    head = f"`{args.head}`" if args.head else "this working tree"
    lines = [
        "## Serving A/B: this serving code against a base commit",
        "",
        f"`python -m benchmarks.serving_ab --base {args.base}"
        + (f" --head {args.head}" if args.head else "")
        + "".join(f" --env-b {item}" for item in args.env_b)
        + f" --count {args.count} --rounds {args.rounds} --requests {args.requests}`: "
        f"A = serving/ of `{args.base}`, B = serving/ of {head}, both on ranker/ of `{args.base}`; "
        "the serving_rank benchmark's MMoE, one uvicorn worker each, log level info (stderr to a "
        f"file), single connection, rounds alternating A and B; {result['machine']}; load average "
        f"{result['load'][0]:.1f} at the start, {result['load'][1]:.1f} at the end.",
        "",
        "| candidates | A p50 / p99 | B p50 / p99 | B / A p50 (median of rounds, range) "
        "| CPU per request A / B | B / A CPU |",
        "|---:|---|---|---:|---|---:|",
        f"| {args.count} | {a['p50']:.2f} / {a['p99']:.2f} ms | {b['p50']:.2f} / {b['p99']:.2f} ms "
        f"| **{result['ratio']:.3f}** ({low:.2f}-{high:.2f}) "
        f"| {cpu['A']:.2f} / {cpu['B']:.2f} ms | **{result['cpu_ratio']:.3f}** |",
    ]
    body = "\n".join(lines)
    if not args.no_doc:
        write_section("serving_ab", body)
    return body


def rounds(
    urls: dict[str, str], pids: dict[str, int], body_file: Path, args: argparse.Namespace
) -> dict[str, Any]:
    per_round = max(20, args.requests // args.rounds)
    warmup = 5
    pooled: dict[str, list[Any]] = {name: [] for name in urls}
    cpu = {name: 0.0 for name in urls}
    ratios = []
    for i in range(args.rounds):
        order = list(urls) if i % 2 == 0 else list(reversed(urls))
        p50 = {}
        for name in order:
            before = cpu_seconds(pids[name])
            measured = loadgen(
                urls[name],
                body_file,
                "--requests",
                str(per_round),
                "--warmup",
                str(warmup),
                "--latencies",
            )
            cpu[name] += cpu_seconds(pids[name]) - before
            pooled[name].extend(cast(list[float], measured["latencies_ms"]))
            p50[name] = measured["p50"]
        ratios.append(p50["B"] / p50["A"])
    out: dict[str, Any] = {name: percentiles(values) for name, values in pooled.items()}
    out["ratio"] = statistics.median(ratios)
    out["ratio_range"] = (min(ratios), max(ratios))
    out["ratios"] = [round(r, 4) for r in ratios]
    served = args.rounds * (per_round + warmup)
    out["cpu_ms_per_request"] = {name: 1e3 * cpu[name] / served for name in urls}
    out["cpu_ratio"] = cpu["B"] / cpu["A"]
    return out


if __name__ == "__main__":
    main()
