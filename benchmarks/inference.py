"""Model inference for one request: ONNX Runtime vs PyTorch eager, user side once vs repeated.

    python -m benchmarks.inference [--repeat 200]

The same MMoE (8 experts [256, 128], towers [64], the simulator's features) scores 100, 500 and
1000 candidates of one request in four ways, in one run:
- `ort user-once`: ONNX Runtime, user inputs batch 1 (the served layout, the baseline);
- `ort repeated`: ONNX Runtime, the user row repeated for every candidate;
- `torch user-once` / `torch repeated`: PyTorch eager (no grad), the same two layouts.

The two ONNX Runtime layouts take turns in one loop and the two PyTorch ones in another, after it:
PyTorch's OpenMP threads keep spinning after a call, and on two cores the ORT call that came next
waited for them (the variant that ran right after `torch repeated` measured 1.2-1.5x slower,
which is how `ort user-once` once read slower than `ort repeated` at 1000 candidates).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from benchmarks.report import machine, write_section
from ranker.features import FeatureEncoder
from ranker.models import build_model
from ranker.schema import DenseStats, load_default_spec
from sim.simulate import SimulatorConfig, simulate
from training.data import encode_log, read_log
from training.export import to_onnx

CONFIG = {"num_experts": 8, "expert_units": [256, 128], "tower_units": [64], "embedding_dim": 16}
COUNTS = (100, 500, 1000)


def request_inputs(rows: dict[str, np.ndarray], n: int, repeat_user: bool) -> dict[str, np.ndarray]:
    out = {}
    for name, values in rows.items():
        if name.startswith("user_"):
            out[name] = np.ascontiguousarray(np.repeat(values[:1], n if repeat_user else 1, axis=0))
        else:
            out[name] = np.ascontiguousarray(values[:n])
    return out


def interleaved(variants: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Median ms of each call, the calls taking turns `repeat` times after one warm-up each."""
    times: dict[str, list[float]] = {k: [] for k in variants}
    for call in variants.values():
        call()
    for _ in range(repeat):
        for key, call in variants.items():
            started = time.perf_counter()
            call()
            times[key].append(time.perf_counter() - started)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    spec = load_default_spec().with_stats(
        {"duration": DenseStats(3.5, 1.0), "upload_age_days": DenseStats(1.5, 1.0)}
    )
    with tempfile.TemporaryDirectory() as tmp:
        simulate(
            SimulatorConfig(users=200, items=3000, authors=100, days=1, requests_per_day=200),
            Path(tmp),
        )
        data = encode_log(read_log(tmp, spec), FeatureEncoder(spec))
    rows = data.inputs
    model = build_model("mmoe", spec, None, CONFIG).eval()
    example = {k: v[:4] for k, v in rows.items()}
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(
        to_onnx(model, example, 18), options, providers=["CPUExecutionProvider"]
    )
    outputs = [o.name for o in session.get_outputs()]

    def ort_call(inputs: dict[str, np.ndarray]) -> Callable[[], object]:
        return lambda: session.run(outputs, inputs)

    def torch_call(inputs: dict[str, np.ndarray]) -> Callable[[], object]:
        tensors = {k: torch.from_numpy(v) for k, v in inputs.items()}

        def call() -> object:
            with torch.inference_mode():
                return model(tensors)

        return call

    table = [
        "| candidates | ort user-once (ms) | ort repeated | torch user-once | torch repeated |",
        "|---:|---:|---:|---:|---:|",
    ]
    for n in COUNTS:
        variants = {
            "ort user-once": ort_call(request_inputs(rows, n, False)),
            "ort repeated": ort_call(request_inputs(rows, n, True)),
            "torch user-once": torch_call(request_inputs(rows, n, False)),
            "torch repeated": torch_call(request_inputs(rows, n, True)),
        }
        median: dict[str, float] = {}
        for engine in ("ort", "torch"):
            time.sleep(0.5)  # let the other engine's threads stop spinning
            median.update(
                interleaved(
                    {k: v for k, v in variants.items() if k.startswith(engine)}, args.repeat
                )
            )
        base = median["ort user-once"]
        table.append(
            f"| {n} | {base:.2f} | {median['ort repeated']:.2f} ({median['ort repeated'] / base:.2f}x) | "
            f"{median['torch user-once']:.2f} ({median['torch user-once'] / base:.2f}x) | "
            f"{median['torch repeated']:.2f} ({median['torch repeated'] / base:.2f}x) |"
        )
    body = "\n".join(
        [
            "## Model inference: ONNX Runtime vs PyTorch eager, user side once vs repeated",
            "",
            f"`python -m benchmarks.inference --repeat {args.repeat} --threads {args.threads}`: MMoE, 8 experts "
            f"[256, 128], towers [64], 16-dim embeddings, the simulator's 15 features; one request; median "
            f"of {args.repeat} calls, the ORT layouts interleaved in one loop and the PyTorch ones in another (PyTorch's spinning "
            f"threads slowed the ORT call after them); ratios to `ort user-once` (the served layout); {machine()}.",
            "",
            *table,
        ]
    )
    print(body)
    write_section("inference", body)


if __name__ == "__main__":
    main()
