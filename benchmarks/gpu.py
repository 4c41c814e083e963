"""GPU serving and training, measured in one call on a machine with a CUDA device.

    python -m benchmarks.gpu [--quick] [--out DIR]        (make bench-gpu)

The benchmark MMoE (8 experts [256, 128], towers [64], the simulator's features, random weights):
1. one request at 100 / 500 / 1000 candidates, p50 and p99 per backend: ONNX Runtime on the CPU
   (all cores, the baseline), ONNX Runtime's CUDA provider through IO binding (the serving path,
   `ranker/onnx_model.py`) when this onnxruntime build has it, and torch on CUDA as the reference
   (inputs copied in, outputs copied out, synchronised: what a service would pay);
2. C requests of 500 candidates at once (C = 1 .. 64): one after another on the single-request
   graph vs merged into one run of the batched graph, and C closed-loop clients through the
   dynamic batcher (`serving/batching.py`): requests per second and latency;
3. a training step (ew and emtl) on CUDA vs the CPU at two batch sizes.
Without a CUDA device the GPU rows say "not measured" and why, and an existing measured section of
docs/benchmarks.md is kept (pass --force to replace it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from benchmarks.report import DOC, machine, write_section
from ranker.features import FeatureEncoder
from ranker.models import MultiTaskModel, build_model
from ranker.onnx_model import run_bound
from ranker.schema import DenseStats, load_default_spec
from serving.batching import RequestBatcher, merge
from sim.simulate import SimulatorConfig, simulate
from training.data import EncodedData, encode_log, read_log
from training.export import to_onnx

CONFIG = {"num_experts": 8, "expert_units": [256, 128], "tower_units": [64], "embedding_dim": 16}
COUNTS = (100, 500, 1000)
CONCURRENCY = (1, 2, 4, 8, 16, 32, 64)
CUDA_EP = "CUDAExecutionProvider"
# The batcher waits for no company: batches form while the previous one runs. A wait under 1 ms
# costs a whole millisecond anyway (the event loop's epoll timer has 1 ms resolution).
DELAY_US = 0
Feeds = dict[str, np.ndarray]
Run = Callable[[Feeds], list[np.ndarray]]


@dataclass(frozen=True)
class Backend:
    name: str
    single: Run  # the single-request graph (user batch 1)
    batched: Run  # the batched graph (user rows [B], request_index [N])


def ort_backend(name: str, single: bytes, batched: bytes, providers: list[str]) -> Backend:
    device = "cuda" if providers[0] == CUDA_EP else "cpu"
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL

    def runner(graph: bytes) -> Run:
        session = ort.InferenceSession(graph, options, providers=providers)
        if session.get_providers()[0] != providers[0]:
            raise RuntimeError(f"{name}: asked for {providers[0]}, got {session.get_providers()}")
        outputs = [o.name for o in session.get_outputs()]
        return lambda feeds: run_bound(session, feeds, outputs, device)

    return Backend(name, runner(single), runner(batched))


def torch_cuda_backend(model: MultiTaskModel) -> Backend:
    """torch eager on CUDA: the same forward for both layouts (request_index selects batched)."""
    gpu = model.to("cuda").eval()

    def run(feeds: Feeds) -> list[np.ndarray]:
        with torch.inference_mode():
            inputs = {k: torch.from_numpy(v).to("cuda") for k, v in feeds.items()}
            return [v.cpu().numpy() for v in gpu(inputs).values()]  # .cpu() synchronises

    return Backend("torch CUDA (eager)", run, run)


def torch_cuda_graph_backend(model: MultiTaskModel) -> Backend:
    """torch on CUDA with one CUDA graph per input shape: the forward's ~100 small kernel launches
    replayed as one. A server would capture a few candidate-count buckets (pad to the bucket); this
    is the floor such a runtime (ORT's CUDA graphs, TensorRT) reaches, the copies in and out kept."""
    gpu = model.to("cuda").eval()
    graphs: dict[tuple[object, ...], tuple[dict[str, torch.Tensor], list[torch.Tensor], Any]] = {}

    def capture(feeds: Feeds) -> tuple[dict[str, torch.Tensor], list[torch.Tensor], Any]:
        static = {k: torch.from_numpy(v).to("cuda") for k, v in feeds.items()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.no_grad(), torch.cuda.stream(side):
            for _ in range(3):  # warm-up outside the graph: lazy initialisation, cuBLAS handles
                gpu(static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph):
            out = list(gpu(static).values())
        return static, out, graph

    def run(feeds: Feeds) -> list[np.ndarray]:
        key = tuple((k, v.shape) for k, v in sorted(feeds.items()))
        if key not in graphs:
            graphs[key] = capture(feeds)
        static, out, graph = graphs[key]
        with torch.no_grad():
            for k, v in feeds.items():
                static[k].copy_(torch.from_numpy(v))
            graph.replay()
            return [v.cpu().numpy() for v in out]

    return Backend("torch CUDA graphs", run, run)


def request(rows: Feeds, user_row: int, n: int, rng: np.random.Generator) -> tuple[Feeds, Feeds]:
    total = len(rows["item_cat"])
    items = rng.choice(total, size=n, replace=n > total)
    user = {k: v[user_row : user_row + 1] for k, v in rows.items() if k.startswith("user_")}
    item = {k: np.ascontiguousarray(v[items]) for k, v in rows.items() if k.startswith("item_")}
    return user, item


def percentiles(seconds: Sequence[float]) -> tuple[float, float]:
    ms = np.asarray(seconds) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def latency_table(
    backends: list[Backend], rows: Feeds, repeat: int, missing: list[str]
) -> list[str]:
    rng = np.random.default_rng(0)
    table = [
        "| backend | " + " | ".join(f"{n} cand. p50 / p99 (ms)" for n in COUNTS) + " |",
        "|---|" + "---:|" * len(COUNTS),
    ]
    cells: dict[str, list[str]] = {b.name: [] for b in backends}
    for n in COUNTS:
        feeds = [{**u, **i} for u, i in (request(rows, r, n, rng) for r in range(8))]
        times: dict[str, list[float]] = {b.name: [] for b in backends}
        for b in backends:
            for f in feeds:
                b.single(f)  # warm-up: allocations, kernels, cuDNN/cuBLAS choices
        for k in range(repeat):  # interleaved, so drift hits every backend alike
            for b in backends:
                started = time.perf_counter()
                b.single(feeds[k % len(feeds)])
                times[b.name].append(time.perf_counter() - started)
        for b in backends:
            p50, p99 = percentiles(times[b.name])
            cells[b.name].append(f"{p50:.2f} / {p99:.2f}")
    table += [f"| {name} | " + " | ".join(c) + " |" for name, c in cells.items()]
    table += [f"| {line} |" + " not measured |" * len(COUNTS) for line in missing]
    return table


def closed_loop(
    backend: Backend, requests: list[tuple[Feeds, Feeds]], seconds: float
) -> dict[str, float]:
    """len(requests) clients, each sending its request again as soon as the answer comes."""

    async def main() -> dict[str, float]:
        with ThreadPoolExecutor(1) as pool:
            batcher = RequestBatcher(
                backend.batched, max_batch=64, max_delay_us=DELAY_US, executor=pool
            )
            latencies: list[float] = []
            stop = time.perf_counter() + seconds

            async def client(user: Feeds, item: Feeds) -> None:
                while time.perf_counter() < stop:
                    started = time.perf_counter()
                    await batcher.predict(user, item)
                    latencies.append(time.perf_counter() - started)

            started = time.perf_counter()
            await asyncio.gather(*(client(u, i) for u, i in requests))
            elapsed = time.perf_counter() - started
            await batcher.close()
            p50, p99 = percentiles(latencies)
            sizes = batcher.batch_sizes
            mean_batch = sum(k * v for k, v in sizes.items()) / max(1, sum(sizes.values()))
            return {"rps": len(latencies) / elapsed, "p50": p50, "p99": p99, "batch": mean_batch}

    return asyncio.run(main())


def throughput_table(backend: Backend, rows: Feeds, repeat: int, seconds: float) -> list[str]:
    rng = np.random.default_rng(1)
    table = [
        f"Backend: {backend.name}; 500 candidates per request; requests per second (higher is better).",
        "",
        "| concurrent requests | one by one (req/s) | one batched run (req/s) | batched / one by one "
        "| dynamic batcher (no wait), closed loop (req/s) | its p50 / p99 (ms) | mean batch |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in CONCURRENCY:
        requests = [request(rows, r, 500, rng) for r in range(c)]
        singles = [{**u, **i} for u, i in requests]
        backend.batched(merge(requests)[0])  # warm-up for this batch shape
        one_by_one, batched = [], []
        for _ in range(repeat):
            started = time.perf_counter()
            for f in singles:
                backend.single(f)
            one_by_one.append(time.perf_counter() - started)
            started = time.perf_counter()
            backend.batched(merge(requests)[0])  # the merge is part of the batched cost
            batched.append(time.perf_counter() - started)
        a, b = c / statistics.median(one_by_one), c / statistics.median(batched)
        loop = closed_loop(backend, requests, seconds)
        table.append(
            f"| {c} | {a:,.0f} | {b:,.0f} | {b / a:.2f}x | {loop['rps']:,.0f} | "
            f"{loop['p50']:.2f} / {loop['p99']:.2f} | {loop['batch']:.1f} |"
        )
    return table


def training_table(tmp: Path, steps: int, cuda: bool) -> list[str]:
    from training.config import load_config
    from training.distributed import DistributedWorld
    from training.prepare import prepare_data
    from training.trainer import Trainer

    model = [f"model.config.{k}={v}" for k, v in CONFIG.items()]
    devices = ["cuda", "cpu"] if cuda else ["cpu"]
    table = [
        "| balancer | batch | "
        + " | ".join(f"{d} ms / step" for d in devices)
        + " | "
        + " | ".join(f"{d} samples / s" for d in devices)
        + " |",
        "|---|---:|" + "---:|" * (2 * len(devices)),
    ]
    data = prepare_data(load_config(None, [f"data.paths=[{tmp}]", "model.kind=mmoe", *model]))
    for method in ("ew", "emtl"):
        for size in (2048, 8192):
            assert isinstance(data.train, EncodedData)  # in memory: no streaming here
            batch = next(data.train.shuffled_batches(size, seed=0))
            ms: dict[str, float] = {}
            for device in devices:
                overrides = [
                    f"data.paths=[{tmp}]", "model.kind=mmoe", *model,
                    f"balancer.name={method}", f"train.batch_size={size}",
                ]  # fmt: skip
                config = load_config(None, overrides)
                world = DistributedWorld(device=device)
                trainer = Trainer(config, data, tmp, progress=False, equity_every=0, world=world)
                times = []
                for step in range(steps + 3):
                    started = time.perf_counter()
                    trainer.train_step(batch)
                    if device == "cuda":
                        torch.cuda.synchronize()
                    if step >= 3:
                        times.append(time.perf_counter() - started)
                ms[device] = statistics.median(times) * 1e3
            table.append(
                f"| {method} | {size} | "
                + " | ".join(f"{ms[d]:.1f}" for d in devices)
                + " | "
                + " | ".join(f"{size / ms[d] * 1e3:,.0f}" for d in devices)
                + " |"
            )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repeats: a smoke run")
    parser.add_argument("--out", type=Path, help="also write the section to DIR/gpu.md")
    parser.add_argument(
        "--force", action="store_true", help="replace a measured section without CUDA"
    )
    args = parser.parse_args()
    repeat, loop_seconds, steps = (20, 0.5, 3) if args.quick else (300, 3.0, 20)
    torch.manual_seed(0)
    cuda = torch.cuda.is_available()
    providers = ort.get_available_providers()
    ort_cuda = CUDA_EP in providers
    where = torch.cuda.get_device_name(0) if cuda else "no CUDA device"
    header = (
        f"{where}; torch {torch.__version__}, onnxruntime {ort.__version__} (providers "
        f"{', '.join(providers)}); host {machine()}."
    )
    print(header, flush=True)

    spec = load_default_spec().with_stats(
        {"duration": DenseStats(3.5, 1.0), "upload_age_days": DenseStats(1.5, 1.0)}
    )
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        simulate(SimulatorConfig(users=3000, items=8000, days=3, requests_per_day=1000), tmp)
        rows = encode_log(read_log(tmp, spec), FeatureEncoder(spec)).inputs
        model = build_model("mmoe", spec, None, CONFIG).eval()
        example = {k: v[:8] for k, v in rows.items()}
        single, batched = to_onnx(model, example, 18), to_onnx(model, example, 18, batched=True)

        cpu = ort_backend(
            f"ORT CPU ({os.cpu_count()} cores)", single, batched, ["CPUExecutionProvider"]
        )
        backends, missing = [cpu], []
        if ort_cuda:
            backends.append(
                ort_backend(
                    "ORT CUDA, IO binding", single, batched, [CUDA_EP, "CPUExecutionProvider"]
                )
            )
        else:
            missing.append(f"ORT CUDA: this onnxruntime build has no {CUDA_EP}")
        if cuda:
            backends.append(torch_cuda_backend(model))
            graphs = torch_cuda_graph_backend(model)
            try:
                graphs.single(
                    {**example, **{k: v[:1] for k, v in example.items() if k.startswith("user_")}}
                )
                backends.append(graphs)
            except Exception as exc:  # capture can fail on an op CUDA graphs refuse: say so
                missing.append(f"torch CUDA graphs: capture failed: {exc}")
        else:
            missing.append("torch CUDA: torch.cuda.is_available() is False")
        gpu = len(backends) > 1

        body = [
            "## GPU: serving latency, batched throughput, training step",
            "",
            f"`python -m benchmarks.gpu{' --quick' if args.quick else ''}` (`make bench-gpu`): "
            f"the benchmark MMoE (8 experts [256, 128], towers [64], random weights); {header}",
            "",
            f"### One request: p50 / p99 of {repeat} interleaved calls",
            "",
            *latency_table(backends, rows, repeat, missing),
            "",
            "### Concurrent requests: one by one vs one batched run vs the dynamic batcher",
            "",
        ]
        for b in [*backends[1:], cpu]:
            print(f"throughput: {b.name}", flush=True)
            body += [*throughput_table(b, rows, max(3, repeat // 20), loop_seconds), ""]
        if not gpu:
            body += ["GPU throughput not measured: " + "; ".join(missing) + ".", ""]
        body += [
            f"### Training step: median of {steps} steps after 3 warm-ups, batch from the simulated log",
            "",
        ]
        body += training_table(tmp, steps, cuda)

    text = "\n".join(body)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu.md").write_text(text + "\n")
    measured = "<!-- gpu:start -->" in (DOC.read_text() if DOC.exists() else "")
    if gpu or args.force or not measured:
        write_section("gpu", text)
    else:
        print(
            "no CUDA here: docs/benchmarks.md keeps its measured GPU section (--force replaces it)"
        )


if __name__ == "__main__":
    main()
