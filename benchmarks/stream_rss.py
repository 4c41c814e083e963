"""Peak memory of `ranker train` as the log grows: the streaming path vs loading the log.

    python -m benchmarks.stream_rss [--rows 1000000 5000000 20000000] [--memory-up-to 5000000]

For each size a simulated log (14 days, Parquet, one file per day) is written, then `ranker train`
runs in a child process for one whole epoch with a small model (the data path dominates) on the
streaming path (`data.stream=true`, shuffle buffer `--buffer` rows) and, up to `--memory-up-to`
rows, on the in-memory path. The figure is the child's peak resident set size (`wait4`'s
ru_maxrss), with the wall time and the rows it trained on.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from benchmarks.report import machine, write_section
from sim.simulate import SimulatorConfig, simulate

DAYS = 14
IMPRESSIONS_PER_REQUEST = 20  # the simulator's mean (10-30)
SMALL_MODEL = [
    "model.kind=mmoe",
    "model.config.num_experts=2",
    "model.config.expert_units=[16]",
    "model.config.tower_units=[8]",
    "model.config.embedding_dim=4",
    "train.epochs=1",
    "train.batch_size=8192",
    "train.patience=0",
    "balancer.name=ew",
    "aux.form=none",
]


def write_log(rows: int, out: Path) -> tuple[int, float]:
    """The simulated log's rows and the seconds writing it took."""
    per_day = max(1, rows // (DAYS * IMPRESSIONS_PER_REQUEST))
    config = SimulatorConfig(
        users=20_000, items=50_000, authors=5_000, days=DAYS, requests_per_day=per_day
    )
    summary = simulate(config, out)
    return summary.rows, summary.seconds


def train_peak_rss(log: Path, run_dir: Path, stream: bool, buffer: int) -> dict[str, float]:
    """Peak RSS (MB), seconds and training rows of one `ranker train` child process."""
    command = [
        sys.executable,
        "-m",
        "cli.main",
        "train",
        "--quiet",
        f"data.paths=[{log}]",
        f"data.stream={str(stream).lower()}",
        f"data.shuffle_buffer_rows={buffer}",
        f"out={run_dir}",
        *SMALL_MODEL,
    ]
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    stderr = child.stderr.read().decode() if child.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"ranker train failed: {stderr[-2000:]}")
    doc = json.loads((run_dir / "metrics.json").read_text())
    return {
        "peak_mb": usage.ru_maxrss / 1024,  # kilobytes on Linux
        "seconds": seconds,
        "train_rows": doc["rows"]["train"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=float, nargs="+", default=[1e6, 5e6, 20e6])
    parser.add_argument("--memory-up-to", type=float, default=5e6)
    parser.add_argument("--buffer", type=int, default=262_144)
    args = parser.parse_args()
    lines = [
        "| log rows | rows per row group | path | peak RSS MB | ratio to the first | "
        "training rows | simulate s | train s |",
        "|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    first: float | None = None
    with tempfile.TemporaryDirectory() as tmp:
        for target in [int(r) for r in args.rows]:
            log = Path(tmp) / f"log{target}"
            # In a child: a forked-then-exec'd process's ru_maxrss starts at its parent's RSS
            # (Linux keeps the pre-exec high-water mark), so the parent stays small.
            with ProcessPoolExecutor(1) as pool:
                rows, simulated = pool.submit(write_log, target, log).result()
            paths = [True] + ([False] if target <= args.memory_up_to else [])
            for stream in paths:
                run = Path(tmp) / f"run{target}{stream}"
                result = train_peak_rss(log, run, stream, args.buffer)
                first = first or result["peak_mb"]
                name = f"streaming (buffer {args.buffer:,})" if stream else "in memory"
                line = (
                    f"| {rows:,} | {rows // DAYS:,} | {name} | {result['peak_mb']:,.0f} | "
                    f"{result['peak_mb'] / first:.3f} | {result['train_rows']:,} | "
                    f"{simulated:.0f} | {result['seconds']:.0f} |"
                )
                print(line, flush=True)
                lines.append(line)
                write_section("stream_rss", _body(args, lines))  # each size as it finishes
            for part in log.rglob("*.parquet"):
                part.unlink()
    print(_body(args, lines))


def _body(args: argparse.Namespace, lines: list[str]) -> str:
    return "\n".join(
        [
            "## Training memory as the log grows: streaming vs in memory",
            "",
            f"`python -m benchmarks.stream_rss --rows {' '.join(f'{r:g}' for r in args.rows)} "
            f"--memory-up-to {args.memory_up_to:g}`: simulated logs of {DAYS} days (Parquet, a "
            "file per day, one row group per file), `ranker train` for one whole epoch in a "
            "child process with a small MMoE (2 experts [16], 4-dim embeddings, batch 8192), "
            "validation and test days evaluated; peak resident set size of the child (`wait4`), "
            f"ratio to the first run; {machine()}.",
            "",
            *lines,
        ]
    )


if __name__ == "__main__":
    main()
