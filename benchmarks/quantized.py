"""int8 vs fp32 scoring: bare ONNX Runtime call time and quality, for two model sizes, in one run.

    python -m benchmarks.quantized [--repeat 300] [--epochs 1]

Both models (the benchmark's MMoE, 8 experts [256, 128], towers [64]; the demo's, 8 experts
[128, 64]) are trained briefly on one simulated log (the quality numbers need a trained model),
exported (fp32, checked against PyTorch) and quantised both ways with `training.quantize`: dynamic
(activation scales per run) and static (scales calibrated on training-day requests). Quality is the
parity report each int8 version carries in its manifest: validation day, one run per request,
against the fp32 parent. Time is one request in the served layout (user inputs batch 1, N items of
the validation day) through sessions built with the service's options (serving.models) at
`--threads` and at 1 thread, fp32 and both int8 graphs called in turn `--repeat` times, so drift on
this shared machine hits all three alike; ratios are int8 / fp32 of the same run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from benchmarks.report import machine, write_section
from ranker.onnx_model import CPU
from ranker.registry import MODEL_FILE, Manifest, load_manifest
from serving.models import runtime_options
from serving.settings import Settings
from sim.simulate import SimulatorConfig, simulate
from training.config import load_config
from training.data import EncodedData
from training.export import export_run
from training.prepare import prepare_data
from training.quantize import quantize_version, read_days
from training.quantize_config import Mode, QualityBound, QuantizeOptions
from training.quantize_parity import request_rows, violations
from training.trainer import Trainer

COUNTS = (100, 500, 1000)
MODELS = {
    "benchmark [256, 128]": ["model.config.expert_units=[256, 128]"],
    "demo [128, 64]": ["model.config.expert_units=[128, 64]"],
}
COMMON = [
    "model.kind=mmoe",
    "model.config.num_experts=8",
    "model.config.tower_units=[64]",
    "model.config.embedding_dim=16",
]
MODES: tuple[Mode, ...] = ("dynamic", "static")
# Publish whatever the quantiser gives; the table says whether the default bound would refuse it.
ANY = QualityBound(max_auc_drop=1.0, max_rmse_rise=1.0)


def train(log: Path, run: Path, extra: Sequence[str], epochs: int, threads: int) -> Path:
    config = load_config(
        None,
        [
            f"data.paths=[{log}]",
            f"out={run}",
            f"train.epochs={epochs}",
            f"train.threads={threads}",
            *COMMON,
            *extra,
        ],
    )
    Trainer(config, prepare_data(config), run, progress=False).fit()
    return run


def candidate_feeds(data: EncodedData, manifest: Manifest, n: int) -> dict[str, np.ndarray]:
    """One served request of `n` validation-day items (rows reused when the day has fewer)."""
    first = request_rows(data, 1)[0]
    index = np.arange(n) % data.rows
    user = set(manifest.inputs["user"])
    return {
        k: np.ascontiguousarray(v[first[:1]] if k in user else v[index])
        for k, v in data.inputs.items()
    }


def time_calls(
    sessions: Mapping[str, ort.InferenceSession], feeds: Mapping[str, np.ndarray], repeat: int
) -> dict[str, tuple[float, float]]:
    """(p50, p99) in ms per session, the sessions called in turn."""
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for session in sessions.values():
        for _ in range(5):
            session.run(None, dict(feeds))
    for _ in range(repeat):
        for key, session in sessions.items():
            started = time.perf_counter()
            session.run(None, dict(feeds))
            times[key].append(time.perf_counter() - started)
    return {
        k: (float(np.percentile(v, 50)) * 1e3, float(np.percentile(v, 99)) * 1e3)
        for k, v in times.items()
    }


def measure_model(
    root: Path, log: Path, key: int, label: str, args: argparse.Namespace
) -> tuple[list[str], list[str]]:
    """Train, export, quantise both ways, time and report one model: (time rows, quality rows)."""
    started = time.perf_counter()
    run = train(log, root / f"run{key}", MODELS[label], args.epochs, args.threads)
    registry, name = root / "models", f"model{key}"
    fp32 = export_run(run, registry, name)
    versions = {"fp32": registry / name / fp32.version}
    for mode in MODES:
        options = QuantizeOptions(mode=mode, bound=ANY, parity_requests=args.parity_requests)
        manifest = quantize_version(registry, name, fp32.version, [log], options)
        versions[mode] = registry / name / manifest.version
    print(f"{label}: trained, exported and quantised in {time.perf_counter() - started:.0f} s")
    valid = read_days([log], fp32, fp32.data_window["valid"], False)
    time_rows = []
    # The service's thread count, and one thread: a 2-thread call waits for both cores at every
    # parallel op, so when other processes hold the cores its time says more about them than
    # about the graph; the 1-thread ratio is the cleaner measure of the work saved.
    for threads in sorted({args.threads, 1}, reverse=True):
        settings = Settings(intra_op_threads=threads)
        options = runtime_options(settings, (CPU,)).session_options()
        sessions = {
            k: ort.InferenceSession(
                str(v / MODEL_FILE), options, providers=["CPUExecutionProvider"]
            )
            for k, v in versions.items()
        }
        for n in COUNTS:
            got = time_calls(sessions, candidate_feeds(valid, fp32, n), args.repeat)
            base50, base99 = got["fp32"]
            cells = [f"{base50:.2f} / {base99:.2f}"]
            for mode in MODES:
                p50, p99 = got[mode]
                cells.append(f"{p50:.2f} / {p99:.2f} ({p50 / base50:.2f}x / {p99 / base99:.2f}x)")
            time_rows.append(f"| {label} | {threads} | {n} | " + " | ".join(cells) + " |")
            print(time_rows[-1], flush=True)
    quality_rows = []
    for mode in MODES:
        report: dict[str, Any] = load_manifest(versions[mode]).exporter["quantization"]["parity"]
        delta, base, ranking = report["delta"], report["fp32"], report["ranking"]
        refused = violations(report, QualityBound())
        oracle = fp32.metrics["valid"]["click"].get("oracle_auc", float("nan"))
        quality_rows.append(
            f"| {label} | {mode} | {base['click_auc']:.4f} ({oracle:.4f}) | "
            f"{delta['click_auc']:+.5f} | "
            f"{delta['watch_time_rmse']:+.3%} | {delta['completion_rmse']:+.3%} | "
            f"{ranking['mean']:.4f} / {ranking['min']:.4f} | "
            f"{'yes' if not refused else 'no: ' + '; '.join(refused)} |"
        )
        print(quality_rows[-1], flush=True)
    return time_rows, quality_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=300, help="timed calls per variant and count")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parity-requests", type=int, default=5000)
    parser.add_argument("--days", type=int, default=5, help="simulated days (train, valid, test)")
    parser.add_argument("--requests-per-day", type=int, default=4000)
    parser.add_argument(
        "--no-write", action="store_true", help="print the tables, leave docs/benchmarks.md alone"
    )
    args = parser.parse_args()
    started = time.perf_counter()
    sim = SimulatorConfig(
        users=5000,
        items=20000,
        days=args.days,
        requests_per_day=args.requests_per_day,
        oracle=True,
    )
    time_rows: list[str] = []
    quality_rows: list[str] = []
    with tempfile.TemporaryDirectory(prefix="ranker-quantized-") as tmp:
        root = Path(tmp)
        simulate(sim, root / "log")
        for key, label in enumerate(MODELS):
            t, q = measure_model(root, root / "log", key, label, args)
            time_rows += t
            quality_rows += q
    elapsed = time.perf_counter() - started
    body = "\n".join(
        [
            "## int8 scoring: ONNX Runtime quantisation vs fp32 (bare call and quality)",
            "",
            f"`python -m benchmarks.quantized --repeat {args.repeat} --epochs {args.epochs}`: "
            f"MMoE, 8 experts, towers [64], 16-dim embeddings, trained {args.epochs} epoch(s) on a "
            f"simulated log ({sim.users} users, {sim.items} items, {sim.days} days x "
            f"{sim.requests_per_day} requests), exported, then quantised by `ranker export "
            "--quantize int8` (MatMul/Gemm weights int8 per tensor, uint8 activations): "
            "`dynamic` scales activations per run, `static` fixes their scales on 256 "
            "training-day requests (MinMax, QDQ). One request in the served layout (user batch 1, "
            f"N items), sessions with the service's options at {args.threads} and 1 thread, the three "
            f"graphs called in turn {args.repeat} times per count; p50 / p99 in ms, ratios int8 / "
            f"fp32 of the same run. {machine()}; whole run {elapsed:.0f} s.",
            "",
            "| model | threads | candidates | fp32 p50 / p99 | dynamic int8 | static int8 |",
            "|---|---:|---:|---:|---:|---:|",
            *time_rows,
            "",
            f"Quality (each int8 version's manifest parity report): validation day, up to "
            f"{args.parity_requests} requests scored one run each by both graphs; click AUC change "
            "(int8 - fp32), RMSE change relative to fp32, ranking agreement = NDCG@10 of the int8 "
            "ranking (default score formula) graded by the fp32 ranking, mean / min over requests; "
            "the default bound is AUC -0.001, RMSE +0.5%.",
            "",
            "| model | mode | fp32 click AUC (oracle) | AUC change | watch RMSE | completion RMSE | "
            "ranking NDCG@10 mean / min | within default bound |",
            "|---|---|---:|---:|---:|---:|---:|---|",
            *quality_rows,
        ]
    )
    print(body)
    if not args.no_write:
        write_section("quantized", body)


if __name__ == "__main__":
    main()
