"""POST /rank under load vs its floor, two models, at 100 / 500 / 1000 candidates.

    python -m benchmarks.serving_rank [--quick] [--requests 300] [--rounds 5] [--counts 100,500,1000]
        [--sustained 3000]
    python -m benchmarks.serving_rank --feature-log-only
    python -m benchmarks.serving_rank --batching-only [--counts 100,500] [--requests 200] [--runs 3]

Two models (MMoE, 8 experts, towers [64], the simulator's features): the benchmark's, experts
[256, 128], and the demo's, experts [128, 64]. Each is served by its own `python -m serving.server`
(a single uvicorn worker, file experiment store, no Redis), once with the defaults (requests of
80+ candidates as row chunks), once on ORT's own 2-thread pool (RANKER_SPLIT_MIN_CANDIDATES=0)
and once as its dynamic int8 graph (`ranker export --quantize int8`); beside them a `floor
server` (the same request parsed and answered by FastAPI + orjson without a model) and a `naive
peer` (FastAPI + pydantic + PyTorch eager, user features repeated per candidate, benchmark model).
The load comes from `benchmarks.serving.loadgen` in another process. A model's floor is the floor
server's p50 + its bare ONNX Runtime call on pre-encoded inputs (user side once), the fastest of
four ways to make that call (`BareOrt`), measured in this process. The single-connection runs take turns in `--rounds` rounds with the bare ORT calls, and
each ratio is the median of the per-round ratios: this machine is shared, and its speed drifts
within a minute. Targets (issue 20): p50 / floor <= 1.15x at 500 and <= 1.3x at 100 candidates
with the benchmark model, <= 1.3x and <= 1.5x with the demo's. `--quick` is a smoke run that
writes nothing.

`--feature-log-only`: feature logging (RANKER_LOG_FEATURES, on by default) against a second
server with it off, benchmark model: single-connection p50 in alternating rounds, 4-connection
throughput in alternating runs, and the mean impression record size of each (its own section).

`--batching-only`: dynamic batching (RANKER_BATCH_MAX_REQUESTS) on the CPU, benchmark model, three
servers: the single-request graph (the default deployment), the batched graph (`ranker export
--batched`) with batching off, and the batched graph with batching on (16 requests per run at most,
no wait); closed-loop throughput at 4 and 16 connections in alternating runs, the mean batch read
from the batching server's /metrics (its own section).
"""

from __future__ import annotations

import argparse
import functools
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import torch
import yaml

from benchmarks.interleave import blocked_medians
from benchmarks.report import machine, write_section
from ranker.features import FeatureEncoder, fit_dense_stats
from ranker.models import build_model
from ranker.registry import Publication, publish
from ranker.schema import load_default_spec
from ranker.scoring import DEFAULT_FORMULA
from serving.row_split import RowSplitter, chunk_bounds, exclusive_cpus
from sim.simulate import SimulatorConfig, simulate
from training.data import read_log
from training.export import to_onnx
from training.quantize import quantize_graph

OFF = "ranker, features off"
FLOOR = "floor server"
PEER = "naive peer"
BENCH = "benchmark model"
DEMO = "demo model"
CONFIG = {"num_experts": 8, "expert_units": [256, 128], "tower_units": [64], "embedding_dim": 16}
# The demo's model size (`make demo`): the same features and towers with experts [128, 64]. The
# demo now trains configs/train.yaml's choices, whose dot interactions add 36 expert inputs per
# candidate; this model, and the tables measured with it, have none.
DEMO_CONFIG = {**CONFIG, "expert_units": [128, 64]}
# Each model also as its dynamic int8 graph (`ranker export --quantize int8`); random weights time
# the same work as trained ones (the quality deltas: benchmarks/quantized.py, trained models).
INT8 = ", int8"
MODELS = {BENCH: CONFIG, DEMO: DEMO_CONFIG, BENCH + INT8: CONFIG, DEMO + INT8: DEMO_CONFIG}
REGISTRY_NAMES = {
    BENCH: "bench",
    DEMO: "demo",
    BENCH + INT8: "bench-int8",
    DEMO + INT8: "demo-int8",
}
# ranker server -> (its model, settings beside the defaults). The `ORT pool` servers run every
# request whole on ORT's 2-thread pool, its workers sleeping between parallel sections
# (RANKER_SPLIT_MIN_CANDIDATES=0: the default before row chunks).
POOL = ", ORT pool"
RANKERS: dict[str, tuple[str, dict[str, str]]] = {
    BENCH: (BENCH, {}),
    DEMO: (DEMO, {}),
    BENCH + POOL: (BENCH, {"RANKER_SPLIT_MIN_CANDIDATES": "0"}),
    DEMO + POOL: (DEMO, {"RANKER_SPLIT_MIN_CANDIDATES": "0"}),
    BENCH + INT8: (BENCH + INT8, {}),
    DEMO + INT8: (DEMO + INT8, {}),
}
# p50 / floor targets (issue 20) by model and candidate count.
TARGETS = {(BENCH, 100): 1.3, (BENCH, 500): 1.15, (DEMO, 100): 1.5, (DEMO, 500): 1.3}
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def build_registry(
    tmp: Path,
    config: dict[str, Any] | None = None,
    name: str = "ranker",
    int8: bool = False,
    batched: bool = False,
) -> tuple[Path, pa.Table, Any]:
    """Simulate a little data, build a model (default: the benchmark's), publish it as `name`
    (with `int8`: its dynamic int8 graph, as `ranker export --quantize int8` makes it; with
    `batched`: the batched graph, as `ranker export --batched`); returns (version dir, log, spec)."""
    data = tmp / "data"
    if not any(data.glob("day=*")):  # a second model reuses the first one's log
        simulate(
            SimulatorConfig(users=500, items=5000, authors=200, days=1, requests_per_day=400), data
        )
    spec = load_default_spec()
    log = read_log(data, spec)
    spec = fit_dense_stats(spec, {n: log.table[n] for n in ("duration", "upload_age_days")})
    torch.manual_seed(0)
    model = build_model("mmoe", spec, None, config or CONFIG).eval()
    example = FeatureEncoder(spec).encode({n: log.table[n].slice(0, 4) for n in spec.names}, 4)
    graph = to_onnx(model, example, 18, batched=batched)
    manifest = publish(
        tmp / "models",
        name,
        quantize_graph(graph, "dynamic") if int8 else graph,
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
            batched=batched,
        ),
    )
    version_dir = tmp / "models" / name / manifest.version
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
    the floor, as the fastest of four ways to make it on this machine: 2 intra-op threads
    spinning (ORT's default), 2 threads sleeping between parallel sections, 1 thread, and 2 row
    chunks at once on 1-thread sessions with pinned threads (serving/row_split.py, what the
    service does). The ways take turns in blocks of consecutive calls with a pause between:
    call by call, a spinning session's workers would take the core the next way needs."""

    def __init__(self, version_dir: Path, spec: Any, body: dict[str, Any]) -> None:
        path = str(version_dir / "model.onnx")

        def session(threads: int, spinning: str) -> ort.InferenceSession:
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
            return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

        encoder = FeatureEncoder(spec)
        user = {k: [v] for k, v in {**body["user"], **body["context"]}.items()}
        items = {name: [c.get(name) for c in body["candidates"]] for name in spec.names}
        n = len(body["candidates"])
        self.inputs = {
            **encoder.encode_group("user", user, 1),
            **encoder.encode_group("item", items, n),
        }
        spinning, sleeping, one = session(2, "1"), session(2, "0"), session(1, "0")
        self.outputs = [o.name for o in one.get_outputs()]
        self.splitter = RowSplitter(2, cpus=exclusive_cpus(2))
        chunks = [
            {k: v if k.startswith("user_") else v[start:stop] for k, v in self.inputs.items()}
            for start, stop in chunk_bounds(n, 2)
        ]

        def run_chunk(chunk: dict[str, np.ndarray]) -> object:
            return one.run(self.outputs, chunk)

        def split() -> object:
            # None: a straggler of the last call still runs; whole, as the service does then.
            return self.splitter.map(run_chunk, chunks) or one.run(self.outputs, self.inputs)

        sessions = {
            "2 threads, spinning": spinning,
            "2 threads, sleeping": sleeping,
            "1 thread": one,
        }
        self.ways: dict[str, Callable[[], object]] = {
            name: functools.partial(s.run, self.outputs, self.inputs)
            for name, s in sessions.items()
        }
        self.ways["2 row chunks"] = split
        for call in self.ways.values():
            for _ in range(10):
                call()

    def median_ms(self, repeat: int) -> float:
        """The fastest way's median over about `repeat` calls each."""
        return min(blocked_medians(self.ways, repeat, blocks=4, pause_s=0.02).values())


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
    urls: dict[str, str], body_file: Path, bare: dict[str, BareOrt], args: argparse.Namespace
) -> dict[str, Any]:
    """Single-connection latencies in rounds that take the bare ORT calls and each server in
    turn, so the shared machine's drift hits all of them alike. Per server: percentiles of the
    pooled latencies; per model (`bare`'s keys, each a ranker server): ranker / floor as the
    median of the per-round ratios, and their range."""
    per_round = max(20, args.requests // args.rounds)
    pooled: dict[str, list[float]] = {name: [] for name in urls}
    ort_ms: dict[str, list[float]] = {name: [] for name in bare}
    ratios: dict[str, list[float]] = {name: [] for name in bare}
    time.sleep(1.0)  # let the threads of whatever ran before go idle
    for _ in range(args.rounds):
        this_round: dict[int, float] = {}  # rankers of one model share its session
        for name, session in bare.items():
            if id(session) not in this_round:
                this_round[id(session)] = session.median_ms(100)
            ort_ms[name].append(this_round[id(session)])
        p50 = {}
        for name, url in urls.items():
            measured = loadgen(
                url, body_file, "--requests", str(per_round), "--warmup", "5", "--latencies"
            )
            pooled[name] += measured["latencies_ms"]
            p50[name] = measured["p50"]
        for name in bare:
            ratios[name].append(p50[name] / (p50[FLOOR] + ort_ms[name][-1]))
    row: dict[str, Any] = {name: percentiles(values) for name, values in pooled.items()}
    for name in bare:
        row[name]["ort_ms"] = statistics.median(ort_ms[name])
        row[name]["ratio"] = statistics.median(ratios[name])
        row[name]["ratio_range"] = (min(ratios[name]), max(ratios[name]))
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
    """The impression record's serialisation CPU (median us), with and without the served features:
    the record the service builds for this body (the real parse and item columns), serialised as
    the service does after the response, alternating the two forms."""
    import orjson

    from serving.columns import item_columns
    from serving.impressions import encode_default
    from serving.models import FieldKinds
    from serving.parsing import RequestParser
    from serving.ranking import served
    from serving.served_features import ServedFeatures

    kinds = FieldKinds.of(spec)
    request = RequestParser([kinds.item]).parse(orjson.dumps(body), 2000)
    columns = item_columns(request, kinds)
    n = request.size
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
                record["features"] = ServedFeatures(
                    request.user, request.context, served(columns, request), order
                )
            started = time.perf_counter()
            orjson.dumps(record, default=encode_default, option=option)
            times[key].append(time.perf_counter() - started)
    return {key: statistics.median(values) * 1e6 for key, values in times.items()}


def record_bytes(path: Path) -> dict[int, float]:
    """Mean JSON bytes of an impression record, by the number of items it served (the log and
    its rotated files: a run at several counts writes past the rotation size)."""
    sizes: dict[int, list[int]] = {}
    for part in [path, *path.parent.glob(f"{path.name}.*")]:
        for line in part.read_bytes().splitlines() if part.exists() else []:
            sizes.setdefault(len(json.loads(line)["item_ids"]), []).append(len(line) + 1)
    return {n: statistics.mean(values) for n, values in sizes.items()}


def experiments_file(tmp: Path, name: str, version_dir: Path) -> Path:
    """A file experiment store serving one model version to everyone."""
    path = tmp / f"experiments-{name}.yaml"
    default = {
        "model": {"name": version_dir.parent.name, "version": version_dir.name},
        "score": DEFAULT_FORMULA.to_dict(),
    }
    path.write_text(yaml.safe_dump({"version": 1, "salt": "bench", "default": default}))
    return path


def ranker_env(
    tmp: Path, name: str, version_dir: Path, port: int, counts: list[int]
) -> dict[str, str]:
    return {
        **os.environ,
        "RANKER_REGISTRY": str(tmp / "models"),
        "RANKER_EXPERIMENTS_FILE": str(experiments_file(tmp, name, version_dir)),
        "RANKER_PORT": str(port),
        "RANKER_IMPRESSION_LOG": str(tmp / f"impressions-{name}.jsonl"),
        "RANKER_WARMUP_COUNTS": ",".join(str(c) for c in counts),
        "RANKER_LOG_LEVEL": "warning",
        "RANKER_LOG_FEATURES": "1",
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument(
        "--rounds", type=int, default=5, help="interleaved rounds the single-connection runs take"
    )
    parser.add_argument("--counts", default="100,500,1000")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 100 and 500 candidates, 3 short rounds, no peer, no 4-connection or "
        "fixed-rate runs; prints the table without writing docs/benchmarks.md",
    )
    parser.add_argument(
        "--feature-log-only",
        action="store_true",
        help="only the feature-logging comparison (two ranker servers, benchmark model)",
    )
    parser.add_argument(
        "--batching-only",
        action="store_true",
        help="only dynamic batching on vs off (three servers, benchmark model)",
    )
    parser.add_argument(
        "--runs", type=int, default=3, help="alternating closed-loop runs (--batching-only)"
    )
    parser.add_argument(
        "--rate", type=float, default=40.0, help="fixed-rate load at 500 candidates (req/s)"
    )
    parser.add_argument(
        "--sustained",
        type=int,
        default=3000,
        help="requests of the one-connection run per server that measures the tail",
    )
    args = parser.parse_args()
    if args.quick:
        args.counts, args.requests, args.rounds = "100,500", 60, 3
    return args


def main() -> None:
    args = parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.feature_log_only:
            features = run_feature_logging(tmp, counts, args)
            print(render_features(features, args))
            return
        if args.batching_only:
            batching = run_batching(tmp, counts, args)
            print(render_batching(batching, args))
            return
        results = run_servers(tmp, counts, args)
    print(render(results, args))


def run_servers(
    tmp: Path, counts: list[int], args: argparse.Namespace
) -> dict[int, dict[str, Any]]:
    """The rankers (both models, spinning on and off), the floor server and (unless --quick) the
    naive peer, every count."""
    dirs: dict[str, Path] = {}
    for name, config in MODELS.items():
        dirs[name], table, spec = build_registry(
            tmp, config, REGISTRY_NAMES[name], int8=name.endswith(INT8)
        )
    ports = {name: free_port() for name in (*RANKERS, FLOOR, PEER)}
    servers = []
    for i, (name, (model, extra)) in enumerate(RANKERS.items()):
        env = ranker_env(tmp, f"{REGISTRY_NAMES[model]}-{i}", dirs[model], ports[name], counts)
        servers.append(
            subprocess.Popen(
                [sys.executable, "-m", "serving.server"], env={**env, **extra}, cwd=ROOT
            )
        )
    servers.append(
        subprocess.Popen(
            [sys.executable, "-m", "benchmarks.serving.floor_app", str(ports[FLOOR])], cwd=ROOT
        )
    )
    if not args.quick:
        servers.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.serving.naive_peer",
                    str(ports[PEER]),
                    str(dirs[BENCH]),
                ],
                cwd=ROOT,
            )
        )
    urls = {name: f"http://127.0.0.1:{port}/rank" for name, port in ports.items()}
    results: dict[int, dict[str, Any]] = {}
    try:
        for n in counts:
            body = request_body(table, spec, n)
            body_file = tmp / f"body-{n}.json"
            body_file.write_bytes(json.dumps(body).encode())
            live = {k: v for k, v in urls.items() if k != PEER or not args.quick}
            for url in live.values():
                wait_ready(url, body_file.read_bytes())
            sessions = {model: BareOrt(dirs[model], spec, body) for model in MODELS}
            bare = {name: sessions[model] for name, (model, _) in RANKERS.items()}
            single = {k: v for k, v in live.items() if k != PEER}
            # The peer runs on its own: PyTorch's worker threads spin after its requests and
            # would slow whatever ran next on these two cores.
            row = interleaved(single, body_file, bare, args)
            row["bytes"] = body_file.stat().st_size
            row["load"] = os.getloadavg()[1]  # 5-minute average: others' jobs
            if not args.quick:
                for name in (FLOOR, BENCH, DEMO):  # the tail: one long run each, after warm-up
                    row[f"{name} sustained"] = loadgen(urls[name], body_file, "--requests",
                        str(args.sustained), "--warmup", "50")  # fmt: skip
                row[PEER] = loadgen(urls[PEER], body_file, "--requests", str(args.requests))
                for name in (BENCH, PEER):
                    row[f"{name} c4"] = loadgen(urls[name], body_file, "--mode", "closed",
                        "--requests", str(args.requests), "--concurrency", "4")  # fmt: skip
                    if n == 500:
                        row[f"{name} rate"] = loadgen(urls[name], body_file, "--mode", "rate",
                            "--rate", str(args.rate), "--seconds", "8")  # fmt: skip
                row[f"{FLOOR} rate"] = loadgen(urls[FLOOR], body_file, "--mode", "rate",
                    "--rate", str(args.rate), "--seconds", "8") if n == 500 else None  # fmt: skip
            results[n] = row
            print(f"{n} candidates: " + ", ".join(
                f"{m} {row[m]['p50']:.2f} / {row[m]['p99']:.2f} ms, {row[m]['ratio']:.2f}x"
                for m in RANKERS), flush=True)  # fmt: skip
    finally:
        stop(servers)
    return results


def stop(servers: list[subprocess.Popen[bytes]]) -> None:
    for server in servers:
        server.send_signal(signal.SIGTERM)
    for server in servers:
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def run_feature_logging(
    tmp: Path, counts: list[int], args: argparse.Namespace
) -> dict[int, dict[str, Any]]:
    """The benchmark model served twice, RANKER_LOG_FEATURES=1 and =0, at every count."""
    version_dir, table, spec = build_registry(tmp)
    ports = {"ranker": free_port(), OFF: free_port()}
    env = ranker_env(tmp, "ranker", version_dir, ports["ranker"], counts)
    env_off = {
        **ranker_env(tmp, OFF, version_dir, ports[OFF], counts),
        "RANKER_IMPRESSION_LOG": str(tmp / "impressions-off.jsonl"),
        "RANKER_LOG_FEATURES": "0",
    }
    servers = [
        subprocess.Popen([sys.executable, "-m", "serving.server"], env=env, cwd=ROOT),
        subprocess.Popen([sys.executable, "-m", "serving.server"], env=env_off, cwd=ROOT),
    ]
    features: dict[int, dict[str, Any]] = {}
    try:
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
    finally:
        stop(servers)
    # Stopped: the impression logs are flushed.
    for key, log in (
        ("bytes_on", "impressions-ranker.jsonl"),
        ("bytes_off", "impressions-off.jsonl"),
    ):
        for n, size in record_bytes(tmp / log).items():
            if n in features:
                features[n][key] = size
    return features


# --batching-only: server -> (its registry name, settings beside the defaults).
SINGLE_OFF, BATCHED_OFF, BATCHED_ON = "single graph", "batched graph, off", "batched graph, on"
BATCH_REQUESTS = 16
BATCHING: dict[str, tuple[str, dict[str, str]]] = {
    SINGLE_OFF: ("bench", {}),
    BATCHED_OFF: ("bench-batched", {}),
    BATCHED_ON: ("bench-batched", {"RANKER_BATCH_MAX_REQUESTS": str(BATCH_REQUESTS)}),
}
CONNECTIONS = (4, 16)


def batch_counts(url: str) -> tuple[float, float]:
    """(requests, runs) through the batcher so far, from the server's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url.replace("/rank", "/metrics"), timeout=5) as response:
        text = response.read().decode()
    found = {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name in ("ranker_batch_requests_sum", "ranker_batch_requests_count")
    }
    return found.get("ranker_batch_requests_sum", 0.0), found.get(
        "ranker_batch_requests_count", 0.0
    )


def run_batching(
    tmp: Path, counts: list[int], args: argparse.Namespace
) -> dict[int, dict[Any, Any]]:
    """The three BATCHING servers at every count and connection count: closed-loop throughput
    and p50 (medians of `args.runs` runs in rotating order), the batching server's mean batch."""
    dirs = {}
    for name in ("bench", "bench-batched"):
        dirs[name], table, spec = build_registry(tmp, name=name, batched=name.endswith("batched"))
    ports = {server: free_port() for server in BATCHING}
    servers = []
    for server, (name, extra) in BATCHING.items():
        env = ranker_env(tmp, f"{name}-{ports[server]}", dirs[name], ports[server], counts)
        servers.append(
            subprocess.Popen(
                [sys.executable, "-m", "serving.server"], env={**env, **extra}, cwd=ROOT
            )
        )
    urls = {server: f"http://127.0.0.1:{port}/rank" for server, port in ports.items()}
    results: dict[int, dict[Any, Any]] = {}
    try:
        for n in counts:
            body_file = tmp / f"body-{n}.json"
            body_file.write_bytes(json.dumps(request_body(table, spec, n)).encode())
            for url in urls.values():
                wait_ready(url, body_file.read_bytes())
            row: dict[Any, Any] = {}  # connections -> server -> figures; "load"
            for c in CONNECTIONS:
                measured: dict[str, list[dict[str, float]]] = {s: [] for s in BATCHING}
                before = batch_counts(urls[BATCHED_ON])
                order = list(BATCHING)
                for run in range(args.runs):
                    for server in order[run % 3 :] + order[: run % 3]:
                        measured[server].append(loadgen(urls[server], body_file, "--mode",
                            "closed", "--requests", str(args.requests), "--concurrency", str(c),
                            "--warmup", "0"))  # fmt: skip
                after = batch_counts(urls[BATCHED_ON])
                runs = after[1] - before[1]
                row[c] = {
                    server: {
                        "rps": statistics.median(m["throughput"] for m in series),
                        "p50": statistics.median(m["p50"] for m in series),
                        "errors": sum(int(m["errors"]) for m in series),
                    }
                    for server, series in measured.items()
                }
                row[c]["mean_batch"] = (after[0] - before[0]) / runs if runs else 0.0
            row["load"] = os.getloadavg()[0]  # 1-minute average: this short run and others' jobs
            results[n] = row
            print(f"{n} candidates: " + "; ".join(
                f"{c} conn: on / single {row[c][BATCHED_ON]['rps'] / row[c][SINGLE_OFF]['rps']:.2f}x"
                for c in CONNECTIONS) + f", load {row['load']:.1f}", flush=True)  # fmt: skip
    finally:
        stop(servers)
    return results


def render_batching(results: dict[int, dict[Any, Any]], args: argparse.Namespace) -> str:
    quick = " --quick" if args.quick else ""
    lines = [
        "## Serving: dynamic batching on the CPU",
        "",
        f"`python -m benchmarks.serving_rank --batching-only{quick} --counts "
        f"{','.join(str(n) for n in results)} --requests {args.requests} --runs {args.runs}`: the "
        "benchmark model (MMoE, 8 experts [256, 128], random weights) served three times by "
        "`python -m serving.server` (one uvicorn worker each): its single-request graph (the "
        "default deployment), its batched graph (`ranker export --batched`) with batching off, "
        f"and the batched graph with RANKER_BATCH_MAX_REQUESTS={BATCH_REQUESTS} (no wait: a batch "
        "holds the requests that arrived while the previous one ran). Closed-loop load from a "
        f"separate process, one body; {args.requests} requests per run, median of {args.runs} "
        f"runs in rotating order; {machine()}. Mean batch: requests per run of the batching "
        "server over those runs (its /metrics).",
        "",
        "| candidates | connections | req/s single graph | req/s batched graph, off | req/s "
        "batched graph, on | on / single graph | p50 single / on (ms) | mean batch | errors |",
        "|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for n, row in results.items():
        for c in CONNECTIONS:
            r = row[c]
            single, off, on = r[SINGLE_OFF], r[BATCHED_OFF], r[BATCHED_ON]
            errors = sum(r[s]["errors"] for s in BATCHING)
            lines.append(
                f"| {n} | {c} | {single['rps']:.0f} | {off['rps']:.0f} | {on['rps']:.0f} | "
                f"**{on['rps'] / single['rps']:.2f}x** | {single['p50']:.2f} / {on['p50']:.2f} | "
                f"{r['mean_batch']:.1f} | {errors} |"
            )
    loads = ", ".join(f"{row['load']:.1f}" for row in results.values())
    lines += ["", f"Load average (1 min) on the machine after each count: {loads}."]
    body = "\n".join(lines)
    if not args.quick:
        write_section("serving_rank_batching", body)
    return body


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
        "built and serialised after the response is sent (the writer thread only writes); its serialisation's CPU "
        "per record (median of 200, in this process, the service's own parse, columns and encoder) is the last column.",
        "",
        "| candidates | p50 on / off | p99 on / off | on / off p50 (range) | req/s on / off (4 conn) | record KB on / off | serialisation CPU per record on / off |",
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
    quick = " --quick" if args.quick else ""
    lines = [
        "## Serving: POST /rank vs its floor, two models",
        "",
        f"`python -m benchmarks.serving_rank{quick} --requests {args.requests} --rounds {args.rounds} --rate {args.rate}`: "
        "MMoE, 8 experts, towers [64], the simulator's 15 features: the benchmark model (experts [256, 128]) and the "
        "demo's (experts [128, 64]), each served by its own `python -m serving.server` (one uvicorn worker, JSONL "
        f"impression log with features; requests of 80+ candidates as 2 row chunks; rows `ORT pool`: the same model with RANKER_SPLIT_MIN_CANDIDATES=0, whole requests on ORT's 2-thread pool); the load from a separate process on 127.0.0.1; {machine()}. One connection: "
        f"{args.requests} requests per server in {args.rounds} interleaved rounds (bare ORT calls, floor server, both "
        "rankers in turn), percentiles over all of them. Floor = floor-server p50 (FastAPI + orjson parse and answer, "
        "no model) + the model's bare ONNX Runtime call on pre-encoded inputs (user side once; in each round the fastest "
        "of 2 threads spinning, 2 threads sleeping, 1 thread and 2 pinned row chunks); "
        "ranker / floor is the median of the per-round ratios, with their range; targets from issue 20.",
        "",
        "| model | candidates | floor server p50 | ORT call | floor | ranker p50 / p95 / p99 | p99 / p50 | ranker / floor (range) | target |",
        "|---|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for model in RANKERS:
        for n, row in results.items():
            r = row[model]
            floor = row[FLOOR]["p50"] + r["ort_ms"]
            target = TARGETS.get((model, n))
            verdict = (
                "-"
                if target is None
                else f"<= {target}x: {'met' if r['ratio'] <= target else 'NOT met'}"
            )
            lines.append(
                f"| {model} | {n} | {row[FLOOR]['p50']:.2f} ms | {r['ort_ms']:.2f} ms | {floor:.2f} ms | "
                f"{r['p50']:.2f} / {r['p95']:.2f} / {r['p99']:.2f} ms | {r['p99'] / r['p50']:.2f} | "
                f"**{r['ratio']:.2f}x** ({r['ratio_range'][0]:.2f}-{r['ratio_range'][1]:.2f}) | {verdict} |"
            )
    lines += int8_table(results)
    if not args.quick:
        lines += sustained_table(results, args)
        lines += [
            "",
            f"The benchmark model against a naive peer (FastAPI + pydantic + PyTorch eager, user features repeated per "
            f"candidate): {args.requests} requests, one connection after the rounds; 4 connections: {args.requests} "
            "requests in one run.",
            "",
            "| candidates | body KB | ranker p50 | naive peer p50 | peer / ranker | ranker req/s (4 conn) | peer req/s (4 conn) |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for n, row in results.items():
            ranker, peer = row[BENCH], row[PEER]
            lines.append(
                f"| {n} | {row['bytes'] / 1024:.0f} | {ranker['p50']:.2f} ms | {peer['p50']:.2f} ms | "
                f"{peer['p50'] / ranker['p50']:.2f}x | {row[f'{BENCH} c4']['throughput']:.0f} | "
                f"{row[f'{PEER} c4']['throughput']:.0f} |"
            )
        rate_rows = [row for row in results.values() if f"{BENCH} rate" in row]
        if rate_rows:
            lines += [
                "",
                f"Fixed rate {args.rate:.0f} req/s for 8 s at 500 candidates, benchmark model (latency from the "
                "scheduled send time):",
                "",
                "| server | p50 | p95 | p99 | errors |",
                "|---|---:|---:|---:|---:|",
            ]
            for row in rate_rows:
                for name in (FLOOR, BENCH, PEER):
                    r = row[f"{name} rate"]
                    lines.append(
                        f"| {name} | {r['p50']:.2f} ms | {r['p95']:.2f} ms | {r['p99']:.2f} ms | {r['errors']} |"
                    )
    loads = ", ".join(f"{row['load']:.1f}" for row in results.values())
    lines += ["", f"Load average (5 min) on the machine after each count: {loads}."]
    body = "\n".join(lines)
    if not args.quick:
        write_section("serving_rank", body)
    return body


def sustained_table(results: dict[int, dict[str, Any]], args: argparse.Namespace) -> list[str]:
    """The tail from one long run per server: the rounds' pooled p99 is a handful of requests,
    from rounds that each start on a server that other servers' turns left idle."""
    lines = [
        "",
        f"The tail: one connection, {args.sustained} requests per server in one run after 50 "
        "warm-up requests (after the rounds, servers in turn); issue 20's target is p99 within 2x "
        "p50.",
        "",
        "| server | candidates | p50 | p95 | p99 | p99 / p50 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in (FLOOR, BENCH, DEMO):
        for n, row in results.items():
            r = row.get(f"{name} sustained")
            if r is not None:
                lines.append(
                    f"| {name} | {n} | {r['p50']:.2f} ms | {r['p95']:.2f} ms | {r['p99']:.2f} ms "
                    f"| **{r['p99'] / r['p50']:.2f}** |"
                )
    return lines


def int8_table(results: dict[int, dict[str, Any]]) -> list[str]:
    """int8 vs fp32, same rounds: the bare ORT call and /rank, and whether the whole int8 service
    answers faster than the fp32 model's bare call (issue 20's bar at 500 candidates)."""
    lines = [
        "",
        "int8 (dynamic, `ranker export --quantize int8`) vs fp32, from the same rounds; the quality "
        "deltas of int8 on trained models of both sizes are in the `quantized` section (AUC within "
        "+-0.0002, RMSE within 0.02%, ranking NDCG@10 >= 0.993).",
        "",
        "| model | candidates | ORT call fp32 / int8 | int8 / fp32 | /rank p50 / p99 fp32 | /rank p50 / p99 int8 "
        "| int8 /rank p50 / fp32 ORT call |",
        "|---|---:|---|---:|---|---|---:|",
    ]
    for model in (BENCH, DEMO):
        for n, row in results.items():
            fp32, int8 = row[model], row[model + INT8]
            below = int8["p50"] / fp32["ort_ms"]
            lines.append(
                f"| {model} | {n} | {fp32['ort_ms']:.2f} / {int8['ort_ms']:.2f} ms | "
                f"{int8['ort_ms'] / fp32['ort_ms']:.2f} | {fp32['p50']:.2f} / {fp32['p99']:.2f} ms | "
                f"{int8['p50']:.2f} / {int8['p99']:.2f} ms | **{below:.2f}**"
                f"{' (below)' if below < 1 else ''} |"
            )
    return lines


if __name__ == "__main__":
    main()
