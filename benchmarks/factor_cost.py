"""What the per-task factor terms cost: a training step and the served ONNX Runtime call, with vs without.

    python -m benchmarks.factor_cost [--steps 30] [--repeat 200] [--threads 1]

Two model sizes, each in configs/train.yaml's recommended configuration (read from the file) with
its `model.config.factor_rank` (4) against 0, everything else the same (completion's `zi_bce`
head included): the quality benchmark's model (4 experts [64, 32], towers [32]) and the demo's
(8 experts [128, 64], towers [64]). A training
step of a 2048-row batch (the two variants' steps interleaved, fastest and median of `--steps`), and
the ONNX Runtime call of one request at 100 / 500 / 1000 candidates (user side once, the served
layout; the two graphs interleaved, median of `--repeat` calls). Ratios are with / without, in the
same run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from benchmarks.inference import interleaved, request_inputs
from benchmarks.report import machine, write_section
from sim.simulate import SimulatorConfig, simulate
from training.config import load_config
from training.data import EncodedData
from training.export import to_onnx
from training.prepare import PreparedData, prepare_data
from training.trainer import Trainer

RECOMMENDED = Path(__file__).resolve().parent.parent / "configs" / "train.yaml"
SIZES = {
    "quality benchmark (4 x [64, 32], towers [32])": [
        "model.config.num_experts=4",
        "model.config.expert_units=[64, 32]",
        "model.config.tower_units=[32]",
    ],
    "demo (8 x [128, 64], towers [64])": [
        "model.config.num_experts=8",
        "model.config.expert_units=[128, 64]",
        "model.config.tower_units=[64]",
    ],
}
COUNTS = (100, 500, 1000)


def trainers(data: PreparedData, out: Path, size: list[str], batch: int) -> dict[str, Trainer]:
    """The size's recommended model without and with the factor terms, same data."""
    common = [*size, f"train.batch_size={batch}"]
    return {
        name: Trainer(
            load_config(RECOMMENDED, [*common, *extra]), data, out, progress=False, equity_every=0
        )
        for name, extra in (("without", ["model.config.factor_rank=0"]), ("with", []))
    }


def step_times(
    variants: dict[str, Trainer], batch: EncodedData, steps: int
) -> dict[str, list[float]]:
    """Seconds of each variant's training steps, the variants taking turns on one batch."""
    times: dict[str, list[float]] = {k: [] for k in variants}
    for trainer in variants.values():  # warm-up
        trainer.train_step(batch)
    for _ in range(steps):
        for key, trainer in variants.items():
            started = time.perf_counter()
            trainer.train_step(batch)
            times[key].append(time.perf_counter() - started)
    return times


Inputs = dict[str, np.ndarray]


def ort_calls(
    variants: dict[str, Trainer], rows: Inputs, threads: int
) -> dict[str, Callable[[Inputs], Callable[[], object]]]:
    """One ONNX Runtime session per variant: inputs -> a call that runs it on them."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    example = {k: v[:4] for k, v in rows.items()}
    calls: dict[str, Callable[[Inputs], Callable[[], object]]] = {}
    for key, trainer in variants.items():
        model = trainer.wrapper.model.eval()
        session = ort.InferenceSession(
            to_onnx(model, example, 18), options, providers=["CPUExecutionProvider"]
        )
        outputs = [o.name for o in session.get_outputs()]
        calls[key] = partial(_runner, session, outputs)
    return calls


def _runner(
    session: ort.InferenceSession, outputs: list[str], inputs: Inputs
) -> Callable[[], object]:
    return lambda: session.run(outputs, inputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    train_rows = [
        "| model | ms / step without (best, median) | with factors | ratio (best) |",
        "|---|---:|---:|---:|",
    ]
    ort_rows = [
        "| model | candidates | ms / call without | with factors | ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        simulate(SimulatorConfig(users=3000, items=8000, days=3, requests_per_day=1500), Path(tmp))
        data = prepare_data(load_config(RECOMMENDED, [f"data.paths=[{tmp}]"]))
        assert isinstance(data, PreparedData)
        batch = next(data.train.shuffled_batches(args.batch, seed=0))
        data_rank = load_config(RECOMMENDED, []).model.config.get("factor_rank", 0)
        for title, size in SIZES.items():
            variants = trainers(data, Path(tmp), size, args.batch)
            times = step_times(variants, batch, args.steps)
            best = {k: min(v) * 1e3 for k, v in times.items()}
            median = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            train_rows.append(
                f"| {title} | {best['without']:.1f}, {median['without']:.1f} | "
                f"{best['with']:.1f}, {median['with']:.1f} | "
                f"{best['with'] / best['without']:.2f} |"
            )
            calls = ort_calls(variants, data.train.inputs, args.threads)
            for n in COUNTS:
                inputs = request_inputs(data.train.inputs, n, False)
                ms = interleaved({k: call(inputs) for k, call in calls.items()}, args.repeat)
                ort_rows.append(
                    f"| {title} | {n} | {ms['without']:.3f} | {ms['with']:.3f} | "
                    f"{ms['with'] / ms['without']:.2f} |"
                )
    body = "\n".join(
        [
            "## Factor terms: training step and ONNX Runtime call, with vs without",
            "",
            f"`python -m benchmarks.factor_cost --steps {args.steps} --repeat {args.repeat} "
            f"--threads {args.threads}`: configs/train.yaml with its `factor_rank` "
            f"({data_rank}) vs 0 (everything else the same) at two model sizes; training steps of "
            f"{args.batch} rows interleaved (fastest and median of {args.steps}); one request's "
            f"ORT call, user side once, the two graphs interleaved (median of {args.repeat}); "
            f"{args.threads} thread(s); {machine()}.",
            "",
            *train_rows,
            "",
            *ort_rows,
        ]
    )
    print(body)
    write_section("factor_cost", body)


if __name__ == "__main__":
    main()
