"""Time per training step of each loss balancer relative to equal weighting, in one run.

    python -m benchmarks.train_step [--batch 2048] [--steps 20] [--methods ew,uw,...]

Same model (MMoE, 8 experts, experts [256, 128], towers [64]), same batches, same process. Each method
is timed in both Gramian modes: `representation` (per-task gradients on the expert outputs, one
backward through the experts) and `parameters` (per-task gradients on the expert weights). Methods
that need no Gramian have one mode. Steps are interleaved round-robin so that machine noise hits
every method alike; the figure is the fastest step (the least disturbed on a shared machine),
with the median beside it. One more row: `ew` with the moving average of the weights that
`train.ema_decay` keeps (one pass over every weight, embedding tables included, per step).
Goal (issue 3): emtl and mgda <= 1.5x ew in representation mode and <= 2.5x on parameters; famo and
uw within 1.1x.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.report import machine, write_section
from ranker.balancing import BALANCERS
from sim.simulate import SimulatorConfig, simulate
from training.config import load_config
from training.prepare import prepare_data
from training.trainer import Trainer

# configs/train.yaml's train.ema_decay, for the row that times the weight average.
EMA = 0.995
MODEL = [
    "model.kind=mmoe",
    "model.config.num_experts=8",
    "model.config.expert_units=[256, 128]",
    "model.config.tower_units=[64]",
    "model.config.embedding_dim=16",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--methods", default=",".join(BALANCERS))
    args = parser.parse_args()
    methods = args.methods.split(",")

    with tempfile.TemporaryDirectory() as tmp:
        simulate(SimulatorConfig(users=3000, items=8000, days=3, requests_per_day=1500), Path(tmp))
        base = load_config(None, [f"data.paths=[{tmp}]", f"train.batch_size={args.batch}", *MODEL])
        data = prepare_data(base)
    batch = next(data.train.shuffled_batches(args.batch, seed=0))

    variants: dict[str, Trainer] = {}
    for method in methods:
        modes = ["representation", "parameters"] if BALANCERS[method].requires_gramian else ["-"]
        for mode in modes:
            overrides = [f"train.batch_size={args.batch}", *MODEL, f"balancer.name={method}"]
            if mode != "-":
                overrides.append(f"balancer.gradients={mode}")
            if method == "static":
                overrides.append("balancer.params.weights=[1.0, 1.0, 1.0]")
            trainer = Trainer(
                load_config(None, overrides), data, Path(tmp), progress=False, equity_every=0
            )
            variants[f"{method}|{mode}"] = trainer
    if "ew" in methods:  # the moving average of the weights (train.ema_decay), updated every step
        variants["ew, weight average|-"] = Trainer(
            load_config(
                None,
                [
                    f"train.batch_size={args.batch}",
                    *MODEL,
                    "balancer.name=ew",
                    f"train.ema_decay={EMA}",
                ],
            ),
            data,
            Path(tmp),
            progress=False,
            equity_every=0,
        )
    times: dict[str, list[float]] = {key: [] for key in variants}
    for _ in range(2):  # warm-up
        for trainer in variants.values():
            trainer.train_step(batch)
    for _ in range(args.steps):
        for key, trainer in variants.items():
            started = time.perf_counter()
            trainer.train_step(batch)
            times[key].append(time.perf_counter() - started)

    median = {key: statistics.median(values) for key, values in times.items()}
    best = {key: min(values) for key, values in times.items()}
    ew = best["ew|-"]
    rows = [
        "| method | gradients | ms / step (best) | ms / step (median) | samples / s | ratio to ew |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for key, value in best.items():
        method, mode = key.split("|")
        rows.append(
            f"| {method} | {mode} | {value * 1e3:.1f} | {median[key] * 1e3:.1f} | "
            f"{args.batch / value:,.0f} | {value / ew:.2f} |"
        )
    goals = []
    for method, mode, limit in (
        ("emtl", "representation", 1.5),
        ("mgda", "representation", 1.5),
        ("emtl", "parameters", 2.5),
        ("mgda", "parameters", 2.5),
        ("famo", "-", 1.1),
        ("uw", "-", 1.1),
    ):
        key = f"{method}|{mode}"
        if key in best:
            ratio = best[key] / ew
            goals.append(
                f"- {method} ({mode}): {ratio:.2f}x ew, goal <= {limit}x: {'met' if ratio <= limit else 'NOT met'}"
            )
    body = "\n".join(
        [
            "## Training step: balancers vs equal weighting",
            "",
            f"`python -m benchmarks.train_step --batch {args.batch} --steps {args.steps}`: MMoE with 8 experts "
            f"[256, 128], towers [64], 16-dim embeddings; fastest of {args.steps} interleaved steps; "
            f"{torch.get_num_threads()} torch threads; {machine()}.",
            "",
            *rows,
            "",
            *goals,
        ]
    )
    print(body)
    write_section("train_step", body)


if __name__ == "__main__":
    main()
