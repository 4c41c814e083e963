"""Data-parallel training step with the gradient all-reduce overlapped with the backward pass
(`train.overlap_allreduce`, bucket sizes `train.bucket_mb`) vs one all-reduce after it.

    python -m benchmarks.allreduce_overlap [--steps 60] [--batch 2048] [--buckets 0.25,1,4]

Launches 2 ranks under torchrun on loopback (gloo, one torch thread each). Every rank holds one
trainer per mode, same model, seed and batches; the modes' steps are interleaved, each mode
taking each place in a round in turn, so that machine noise hits them alike. Rank 0's times are
reported; every step ends in collectives, so the ranks move together. The load average is read
before and after the timed steps, and one bare all-reduce of the dense gradients' size is timed:
the most an overlap could hide.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.report import machine, write_section
from benchmarks.train_step import MODEL as STEP_MODEL
from cli.demo import free_port

MODEL = [*STEP_MODEL, "train.threads=1"]  # the step benchmark's MMoE, one thread per rank
AFTER = "after backward"


def _modes(buckets: list[float]) -> dict[str, tuple[bool, float]]:
    """Mode name -> (overlap_allreduce, bucket_mb)."""
    modes = {AFTER: (False, 4.0)}
    modes.update({f"overlapped, {mb:g} MB buckets": (True, mb) for mb in buckets})
    return modes


def worker(data_dir: Path, out: Path, steps: int, batch: int, buckets: list[float]) -> None:
    """One rank: time each mode's `train_step` on the same batches, interleaved."""
    import torch

    from training.config import load_config
    from training.distributed import close_world, init_world
    from training.grad_reducer import OverlappedReducer
    from training.prepare import PreparedData, prepare_data
    from training.trainer import Trainer

    world = init_world()
    config = load_config(None, [f"data.paths=[{data_dir}]", f"train.batch_size={batch}", *MODEL])
    data = prepare_data(config)
    assert isinstance(data, PreparedData)  # the in-memory path
    trainers = {}
    for name, (overlap, mb) in _modes(buckets).items():
        loop = dataclasses.replace(config.train, overlap_allreduce=overlap, bucket_mb=mb)
        mode = dataclasses.replace(config, train=loop)
        torch.manual_seed(0)
        trainers[name] = Trainer(mode, data, out.parent, world, progress=False, equity_every=0)
    batches = list(data.train.shuffled_batches(batch, seed=0))[:8]
    times: dict[str, list[float]] = {name: [] for name in trainers}
    load_before = os.getloadavg()
    names = list(trainers)
    for step in range(steps + 3):
        turn = step % len(names)  # each mode takes each place in the round in turn
        for name in names[turn:] + names[:turn]:
            started = time.perf_counter()
            trainers[name].train_step(batches[step % len(batches)])
            if step >= 3:  # warm-up
                times[name].append(time.perf_counter() - started)
    bare = _bare_allreduce(trainers[AFTER])
    if world.is_main:
        overlapped = {}
        for name, trainer in trainers.items():
            if isinstance(trainer.gradients, OverlappedReducer):
                reducer = trainer.gradients
                overlapped[name] = [reducer.overlapped, len(reducer.buckets)]
        doc = {
            "times": times,
            "load": [load_before, os.getloadavg()],
            "buckets": overlapped,
            "bare": bare,
        }
        out.write_text(json.dumps(doc))
    close_world(world)


def _bare_allreduce(trainer: Any) -> list[float]:
    """Median seconds of one all-reduce of a flat float32 tensor as large as the trainer's dense
    gradients, and its size in MB."""
    import torch
    import torch.distributed as dist

    numel = sum(p.numel() for g in trainer.optimizer.dense.param_groups for p in g["params"])
    flat = torch.ones(numel)
    seconds = []
    for _ in range(23):
        started = time.perf_counter()
        dist.all_reduce(flat)
        seconds.append(time.perf_counter() - started)
    return [statistics.median(seconds[3:]), numel * 4 / 2**20]


def _launch(data_dir: Path, out: Path, args: argparse.Namespace) -> None:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port(0)}",  # any free port
        "-m",
        "benchmarks.allreduce_overlap",
        "--worker",
        str(data_dir),
        str(out),
        f"--steps={args.steps}",
        f"--batch={args.batch}",
        f"--buckets={args.buckets}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(command, check=True, env=env, cwd=Path(__file__).resolve().parent.parent)


def render(doc: dict[str, Any], args: argparse.Namespace, load_start: float) -> str:
    times: dict[str, list[float]] = doc["times"]
    best = {k: min(v) for k, v in times.items()}
    median = {k: statistics.median(v) for k, v in times.items()}
    rows = [
        "| all-reduce | buckets started during backward | ms / step (best) | ms / step (median) "
        "| steps / s (median) | speed vs after backward (best) | (median) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in times:
        started, total = doc["buckets"].get(name, ["-", "-"])
        rows.append(
            f"| {name} | {started} of {total} | {best[name] * 1e3:.1f} | {median[name] * 1e3:.1f} "
            f"| {1 / median[name]:.2f} | {best[AFTER] / best[name]:.3f}x "
            f"| {median[AFTER] / median[name]:.3f}x |"
        )
    (before, after) = doc["load"]
    seconds, mb = doc["bare"]
    return "\n".join(
        [
            "## Data-parallel step: gradient all-reduce overlapped with the backward",
            "",
            f"`python -m benchmarks.allreduce_overlap --steps {args.steps} --batch {args.batch} "
            f"--buckets {args.buckets}`: 2 ranks under torchrun on loopback (gloo), one torch "
            f"thread each, global batch {args.batch} (each rank {args.batch // 2} rows); MMoE 8 "
            "experts [256, 128], towers [64], 16-dim embeddings (sparse, gathered after the "
            "backward in every mode), equal weights; rank 0's times over "
            f"{args.steps} interleaved steps; {machine()}. Load average (1, 5, 15 min) before "
            f"launching {load_start:.2f}; on rank 0 before the timed steps "
            f"{', '.join(f'{v:.2f}' for v in before)}, after {', '.join(f'{v:.2f}' for v in after)}. "
            f"One bare all-reduce of the {mb:.1f} MB of dense gradients (the most an overlap can "
            f"hide): {seconds * 1e3:.1f} ms (median).",
            "",
            *rows,
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--buckets", default="0.25,1,4", help="bucket sizes (MB) to time")
    parser.add_argument("--worker", nargs=2, metavar=("DATA", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    buckets = [float(b) for b in args.buckets.split(",")]
    if args.worker:
        worker(Path(args.worker[0]), Path(args.worker[1]), args.steps, args.batch, buckets)
        return
    from sim.simulate import SimulatorConfig, simulate

    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        data_dir, out = Path(tmp) / "data", Path(tmp) / "result.json"
        simulate(SimulatorConfig(users=3000, items=8000, days=3, requests_per_day=2000), data_dir)
        _launch(data_dir, out, args)
        doc = json.loads(out.read_text())
    body = render(doc, args, load_start)
    print(body)
    write_section("allreduce_overlap", body)


if __name__ == "__main__":
    main()
