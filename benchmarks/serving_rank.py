"""POST /rank under load vs its floor and a naive peer, at 100 / 500 / 1000 candidates.

    python -m benchmarks.serving_rank [--requests 300] [--rounds 5] [--counts 100,500,1000]

One model (MMoE, 8 experts [256, 128], towers [64], the simulator's features), three servers on
127.0.0.1, each a single uvicorn worker in its own process, loaded by a client in another process:
- `ranker`: the real service (`python -m serving.server`), file experiment store, no Redis;
- `floor server`: the same request parsed and answered by FastAPI + orjson without a model;
- `naive peer`: FastAPI + pydantic + PyTorch eager with the user features repeated per candidate.
The floor of /rank is `floor server` p50 + the bare ONNX Runtime call on pre-encoded inputs (user
side once), measured in this process. Goal (issue 6): ranker p50 within 1.3x of that floor at 500.
The single-connection runs take turns in `--rounds` rounds with the bare ORT call, and the ratio is
the median of the per-round ratios: this machine is shared, and its speed drifts within a minute.

Feature logging (RANKER_LOG_FEATURES, on by default) is measured in the same run against a second
`ranker` with it off: single-connection p50 in alternating rounds, 4-connection throughput in
alternating runs, and the mean impression record size of each (its own section of the doc).
`--feature-log-only` starts just those two servers.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import torch
import yaml

from benchmarks.report import machine, write_section
from ranker.features import FeatureEncoder, fit_dense_stats
from ranker.models import build_model
from ranker.registry import Publication, publish
from ranker.schema import load_default_spec
from ranker.scoring import DEFAULT_FORMULA
from sim.simulate import SimulatorConfig, simulate
from training.data import read_log
from training.export import to_onnx

OFF = "ranker, features off"
CONFIG = {"num_experts": 8, "expert_units": [256, 128], "tower_units": [64], "embedding_dim": 16}
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def build_registry(tmp: Path) -> tuple[Path, pa.Table, Any]:
    """Simulate a little data, build the benchmark model, publish it; returns (version dir, log, spec)."""
    data = tmp / "data"
    simulate(
        SimulatorConfig(users=500, items=5000, authors=200, days=1, requests_per_day=400), data
    )
    spec = load_default_spec()
    log = read_log(data, spec)
    spec = fit_dense_stats(spec, {n: log.table[n] for n in ("duration", "upload_age_days")})
    torch.manual_seed(0)
    model = build_model("mmoe", spec, None, CONFIG).eval()
    example = FeatureEncoder(spec).encode({n: log.table[n].slice(0, 4) for n in spec.names}, 4)
    manifest = publish(
        tmp / "models",
        "ranker",
        to_onnx(model, example, 18),
        Publication(
            feature_spec=spec.to_dict(),
            tasks=[t.to_dict() for t in model.tasks],
            inputs={
                "user": [n for n in model.input_names if n.startswith("user_")],
                "item": [n for n in model.input_names if n.startswith("item_")],
            },
            outputs=list(model.task_names),
            opset=18,
            data_window={"train": [], "valid": [], "test": []},
            metrics={},
            parent=None,
            model_kind="mmoe",
            hparams=model.hparams(),
            exporter={"name": "benchmark"},
        ),
    )
    version_dir = tmp / "models" / "ranker" / manifest.version
    torch.save(model.state_dict(), version_dir / "state.pt")
    return version_dir, log.table, spec


def request_body(table: pa.Table, spec: Any, n: int) -> dict[str, Any]:
    """One request: the first row's user and context, n rows with distinct items as candidates."""
    rows = table.to_pylist()
    seen: set[int] = set()
    candidates = []
    for row in rows:
        if row["item_id"] in seen:
            continue
        seen.add(row["item_id"])
        candidates.append(
            {
                "item_id": row["item_id"],
                **{
                    f.name: row[f.name]
                    for f in spec.features
                    if f.side == "item" and f.name != "item_id"
                },
            }
        )
        if len(candidates) == n:
            break
    first = rows[0]
    return {
        "request_id": f"bench-{n}",
        "user": {f.name: first[f.name] for f in spec.features if f.side == "user"},
        "context": {f.name: first[f.name] for f in spec.features if f.side == "context"},
        "candidates": candidates,
    }


class BareOrt:
    """The bare ONNX Runtime call on pre-encoded inputs, user side once: the model's share of
    the floor. Same session options as the service's defaults."""

    def __init__(self, version_dir: Path, spec: Any, body: dict[str, Any]) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            str(version_dir / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        encoder = FeatureEncoder(spec)
        user = {k: [v] for k, v in {**body["user"], **body["context"]}.items()}
        items = {name: [c.get(name) for c in body["candidates"]] for name in spec.names}
        self.inputs = {
            **encoder.encode_group("user", user, 1),
            **encoder.encode_group("item", items, len(body["candidates"])),
        }
        self.outputs = [o.name for o in self.session.get_outputs()]
        for _ in range(10):
            self.session.run(self.outputs, self.inputs)

    def median_ms(self, repeat: int) -> float:
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            self.session.run(self.outputs, self.inputs)
            times.append(time.perf_counter() - started)
        return statistics.median(times) * 1e3


def wait_ready(url: str, body: bytes, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            request = urllib.request.Request(
                url, data=body, headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{url} did not come up in {seconds} s")


def loadgen(url: str, body_file: Path, *extra: str) -> dict[str, float]:
    command = [sys.executable, "-m", "benchmarks.serving.loadgen", url, str(body_file), *extra]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=600, cwd=ROOT, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def percentiles(latencies_ms: list[float]) -> dict[str, float]:
    values = np.asarray(latencies_ms)
    return {f"p{q}": float(np.percentile(values, q)) for q in (50, 95, 99)}


def interleaved(
    urls: dict[str, str], body_file: Path, bare: BareOrt, args: argparse.Namespace
) -> dict[str, Any]:
    """Single-connection latencies in rounds that take the bare ORT call and each server in
    turn, so the shared machine's drift hits all of them alike. Per server: percentiles of the
    pooled latencies; ranker / floor: the median of the per-round ratios, and their range."""
    per_round = max(20, args.requests // args.rounds)
    pooled: dict[str, list[float]] = {name: [] for name in urls}
    ort_ms: list[float] = []
    ratios: list[float] = []
    time.sleep(1.0)  # let the threads of whatever ran before go idle
    for _ in range(args.rounds):
        ort_ms.append(bare.median_ms(100))
        p50 = {}
        for name, url in urls.items():
            measured = loadgen(
                url, body_file, "--requests", str(per_round), "--warmup", "5", "--latencies"
            )
            pooled[name] += measured["latencies_ms"]
            p50[name] = measured["p50"]
        ratios.append(p50["ranker"] / (p50["floor server"] + ort_ms[-1]))
    row: dict[str, Any] = {name: percentiles(values) for name, values in pooled.items()}
    row["ort_ms"] = statistics.median(ort_ms)
    row["ratio"] = statistics.median(ratios)
    row["ratio_range"] = (min(ratios), max(ratios))
    return row


def feature_logging(
    urls: dict[str, str], body_file: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """`ranker` (features on) vs OFF: per-round p50s in alternating order (the drift of a shared
    machine hits both alike), then 4-connection throughput in alternating runs."""
    per_round = max(20, args.requests // args.rounds)
    p50: dict[str, list[float]] = {"ranker": [], OFF: []}
    pooled: dict[str, list[float]] = {"ranker": [], OFF: []}
    for round_ in range(args.rounds):
        for name in ("ranker", OFF) if round_ % 2 == 0 else (OFF, "ranker"):
            measured = loadgen(
                urls[name], body_file, "--requests", str(per_round), "--warmup", "5", "--latencies"
            )
            p50[name].append(measured["p50"])
            pooled[name] += measured["latencies_ms"]
    ratios = [on / off for on, off in zip(p50["ranker"], p50[OFF], strict=True)]
    throughput: dict[str, list[float]] = {"ranker": [], OFF: []}
    for run in range(3):
        for name in ("ranker", OFF) if run % 2 == 0 else (OFF, "ranker"):
            closed = loadgen(urls[name], body_file, "--mode", "closed", "--requests",
                             str(args.requests), "--concurrency", "4")  # fmt: skip
            throughput[name].append(closed["throughput"])
    return {
        "on": percentiles(pooled["ranker"]),
        "off": percentiles(pooled[OFF]),
        "ratio": statistics.median(ratios),
        "ratio_range": (min(ratios), max(ratios)),
        "rps_on": statistics.median(throughput["ranker"]),
        "rps_off": statistics.median(throughput[OFF]),
    }


def writer_cost(body: dict[str, Any], spec: Any, repeat: int = 200) -> dict[str, float]:
    """The impression writer's CPU per record (median us), with and without the served features:
    the record the service builds for this body (the real parse and item columns), serialised as
    the writer thread does, alternating the two forms."""
    import orjson

    from serving.decoding import RequestDecoder
    from serving.impressions import encode_default
    from serving.models import FieldKinds
    from serving.served_features import ServedFeatures
    from serving.validation import item_columns, parse_request

    kinds = FieldKinds.of(spec)
    request = parse_request(orjson.dumps(body), 2000, RequestDecoder(kinds.item))
    columns = item_columns(request, kinds)
    n = len(request.candidates)
    order = np.random.default_rng(0).permutation(n)
    values = np.random.default_rng(1).random(n, dtype=np.float32)
    base = {
        "request_id": request.request_id, "user_id": request.user_id, "ts": 0, "model": "ranker",
        "model_version": "v0001", "variant": "default", "layers": [],
        "item_ids": [request.item_ids[i] for i in order.tolist()],
        "scores": values.astype(np.float64),
        "predictions": {t: values for t in ("click", "watch_time", "completion")},
    }  # fmt: skip
    option = orjson.OPT_SERIALIZE_NUMPY
    times: dict[str, list[float]] = {"on": [], "off": []}
    for _ in range(repeat):
        for key in ("on", "off"):
            record = dict(base)
            if key == "on":
                record["positions"] = np.arange(n)
                record["features"] = ServedFeatures(request.user, request.context, columns, order)
            started = time.perf_counter()
            orjson.dumps(record, default=encode_default, option=option)
            times[key].append(time.perf_counter() - started)
    return {key: statistics.median(values) * 1e6 for key, values in times.items()}


def record_bytes(path: Path) -> dict[int, float]:
    """Mean JSON bytes of an impression record, by the number of items it served."""
    sizes: dict[int, list[int]] = {}
    for line in path.read_bytes().splitlines() if path.exists() else []:
        sizes.setdefault(len(json.loads(line)["item_ids"]), []).append(len(line) + 1)
    return {n: statistics.mean(values) for n, values in sizes.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument(
        "--rounds", type=int, default=5, help="interleaved rounds the single-connection runs take"
    )
    parser.add_argument("--counts", default="100,500,1000")
    parser.add_argument(
        "--feature-log-only",
        action="store_true",
        help="only the feature-logging comparison (two ranker servers)",
    )
    parser.add_argument(
        "--rate", type=float, default=40.0, help="fixed-rate load at 500 candidates (req/s)"
    )
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        version_dir, table, spec = build_registry(tmp)
        experiments = tmp / "experiments.yaml"
        experiments.write_text(
            yaml.safe_dump(
                {
                    "version": 1,
                    "salt": "bench",
                    "default": {
                        "model": {"name": "ranker", "version": version_dir.name},
                        "score": DEFAULT_FORMULA.to_dict(),
                    },
                }
            )
        )
        ports = {"ranker": free_port(), OFF: free_port()}
        if not args.feature_log_only:
            ports.update({"floor server": free_port(), "naive peer": free_port()})
        env = {
            **os.environ,
            "RANKER_REGISTRY": str(tmp / "models"),
            "RANKER_EXPERIMENTS_FILE": str(experiments),
            "RANKER_PORT": str(ports["ranker"]),
            "RANKER_IMPRESSION_LOG": str(tmp / "impressions.jsonl"),
            "RANKER_WARMUP_COUNTS": ",".join(str(c) for c in counts),
            "RANKER_LOG_LEVEL": "warning",
            "RANKER_LOG_FEATURES": "1",
        }
        env_off = {
            **env,
            "RANKER_PORT": str(ports[OFF]),
            "RANKER_IMPRESSION_LOG": str(tmp / "impressions-off.jsonl"),
            "RANKER_LOG_FEATURES": "0",
        }
        servers = [
            subprocess.Popen([sys.executable, "-m", "serving.server"], env=env, cwd=ROOT),
            subprocess.Popen([sys.executable, "-m", "serving.server"], env=env_off, cwd=ROOT),
        ]
        servers += (
            []
            if args.feature_log_only
            else [
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "benchmarks.serving.floor_app",
                        str(ports["floor server"]),
                    ],
                    cwd=ROOT,
                ),
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "benchmarks.serving.naive_peer",
                        str(ports["naive peer"]),
                        str(version_dir),
                    ],
                    cwd=ROOT,
                ),
            ]
        )
        try:
            results: dict[int, dict[str, Any]] = {}
            features: dict[int, dict[str, Any]] = {}
            for n in counts:
                body = request_body(table, spec, n)
                body_file = tmp / f"body-{n}.json"
                body_file.write_bytes(json.dumps(body).encode())
                urls = {name: f"http://127.0.0.1:{port}/rank" for name, port in ports.items()}
                for url in urls.values():
                    wait_ready(url, body_file.read_bytes())
                features[n] = feature_logging(urls, body_file, args)
                features[n]["writer_us"] = writer_cost(body, spec)
                features[n]["load"] = os.getloadavg()[1]  # 5-minute average: others' jobs
                if args.feature_log_only:
                    continue
                urls = {k: v for k, v in urls.items() if k != OFF}
                # The peer runs on its own: PyTorch's worker threads spin after its requests and
                # would slow whatever ran next on these two cores.
                floor_and_ranker = {k: v for k, v in urls.items() if k != "naive peer"}
                row = interleaved(
                    floor_and_ranker, body_file, BareOrt(version_dir, spec, body), args
                )
                row["naive peer"] = loadgen(
                    urls["naive peer"], body_file, "--requests", str(args.requests)
                )
                row["bytes"] = body_file.stat().st_size
                for name, url in urls.items():
                    row[f"{name} c4"] = loadgen(
                        url,
                        body_file,
                        "--mode",
                        "closed",
                        "--requests",
                        str(args.requests),
                        "--concurrency",
                        "4",
                    )
                    if n == 500:
                        row[f"{name} rate"] = loadgen(
                            url,
                            body_file,
                            "--mode",
                            "rate",
                            "--rate",
                            str(args.rate),
                            "--seconds",
                            "8",
                        )
                results[n] = row
        finally:
            for server in servers:
                server.send_signal(signal.SIGTERM)
            for server in servers:
                try:
                    server.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    server.kill()
        # Stopped: the impression logs are flushed.
        for key, log in (("bytes_on", "impressions.jsonl"), ("bytes_off", "impressions-off.jsonl")):
            for n, size in record_bytes(tmp / log).items():
                if n in features:
                    features[n][key] = size
    print(render_features(features, args))
    if results:
        print(render(results, args))


def render_features(results: dict[int, dict[str, Any]], args: argparse.Namespace) -> str:
    flags = " --feature-log-only" if args.feature_log_only else ""
    lines = [
        "## Serving: what feature logging costs /rank",
        "",
        f"`python -m benchmarks.serving_rank{flags} --requests {args.requests} --rounds {args.rounds}`: "
        "the real service twice, RANKER_LOG_FEATURES=1 (the default) and =0, same model and body (no top_k: every "
        "candidate is served and logged); one uvicorn worker each, JSONL impression log, load from a separate "
        f"process; {machine()}. p50: single connection, {args.rounds} alternating rounds, on / off is the median "
        "of the per-round ratios (range); throughput: 4 connections, median of 3 alternating runs. The record is "
        "built after the response; the features are serialised on the impression writer thread, whose CPU per "
        "record (median of 200, in this process, the service's own parse, columns and encoder) is the last column.",
        "",
        "| candidates | p50 on / off | p99 on / off | on / off p50 (range) | req/s on / off (4 conn) | record KB on / off | writer CPU per record on / off |",
        "|---:|---|---|---:|---|---|---|",
    ]
    for n, row in results.items():
        size = (
            f"{row['bytes_on'] / 1024:.1f} / {row['bytes_off'] / 1024:.1f}"
            if "bytes_on" in row and "bytes_off" in row
            else "-"
        )
        lines.append(
            f"| {n} | {row['on']['p50']:.2f} / {row['off']['p50']:.2f} ms | "
            f"{row['on']['p99']:.2f} / {row['off']['p99']:.2f} ms | **{row['ratio']:.2f}x** "
            f"({row['ratio_range'][0]:.2f}-{row['ratio_range'][1]:.2f}) | "
            f"{row['rps_on']:.0f} / {row['rps_off']:.0f} | {size} | "
            f"{row['writer_us']['on']:.0f} / {row['writer_us']['off']:.0f} us |"
        )
    loads = ", ".join(f"{row['load']:.1f}" for row in results.values())
    lines += ["", f"Load average (5 min) on the machine at the end of each count: {loads}."]
    body = "\n".join(lines)
    write_section("serving_rank_features", body)
    return body


def render(results: dict[int, dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        "## Serving: POST /rank vs the floor and a naive peer",
        "",
        f"`python -m benchmarks.serving_rank --requests {args.requests} --rounds {args.rounds} --rate {args.rate}`: "
        "MMoE with 8 experts [256, 128], towers [64]; one uvicorn worker per server, the load from a separate "
        f"process on 127.0.0.1; {machine()}. One connection: {args.requests} requests per server in {args.rounds} "
        "interleaved rounds (bare ORT call, floor server, ranker in turn; the naive peer after them), percentiles over all of them; "
        f"4 connections: {args.requests} requests in one run. "
        "Floor = floor-server p50 (parse + answer, no model) + the bare ONNX Runtime call (user side once); "
        "ranker / floor is the median of the per-round ratios, with their range.",
        "",
        "| candidates | body KB | floor server p50 | ORT call | floor | ranker p50 / p95 / p99 | ranker / floor (range) | naive peer p50 | peer / ranker | ranker req/s (4 conn) | peer req/s (4 conn) |",
        "|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for n, row in results.items():
        floor = row["floor server"]["p50"] + row["ort_ms"]
        ranker, peer = row["ranker"], row["naive peer"]
        lines.append(
            f"| {n} | {row['bytes'] / 1024:.0f} | {row['floor server']['p50']:.2f} ms | {row['ort_ms']:.2f} ms | {floor:.2f} ms | "
            f"{ranker['p50']:.2f} / {ranker['p95']:.2f} / {ranker['p99']:.2f} ms | **{row['ratio']:.2f}x** ({row['ratio_range'][0]:.2f}-{row['ratio_range'][1]:.2f}) | "
            f"{peer['p50']:.2f} ms | {peer['p50'] / ranker['p50']:.2f}x | {row['ranker c4']['throughput']:.0f} | {row['naive peer c4']['throughput']:.0f} |"
        )
    rate_rows = [(n, row) for n, row in results.items() if "ranker rate" in row]
    if rate_rows:
        lines += [
            "",
            f"Fixed rate {args.rate:.0f} req/s for 8 s at 500 candidates (latency from the scheduled send time):",
            "",
            "| server | p50 | p95 | p99 | errors |",
            "|---|---:|---:|---:|---:|",
        ]
        for _, row in rate_rows:
            for name in ("floor server", "ranker", "naive peer"):
                r = row[f"{name} rate"]
                lines.append(
                    f"| {name} | {r['p50']:.2f} ms | {r['p95']:.2f} ms | {r['p99']:.2f} ms | {r['errors']} |"
                )
    if 500 in results:
        ratio = results[500]["ratio"]
        lines += [
            "",
            f"Goal: ranker p50 within 1.3x of the floor at 500 candidates: {ratio:.2f}x, {'met' if ratio <= 1.3 else 'NOT met'}.",
        ]
    body = "\n".join(lines)
    write_section("serving_rank", body)
    return body


if __name__ == "__main__":
    main()
