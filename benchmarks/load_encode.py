"""Loader throughput: read + validate + encode a simulated log vs pyarrow reading the same files.

    python benchmarks/load_encode.py [--rows-per-day 140000] [--days 7] [--repeat 3]

Target (issue 2): encoding adds no more than 1x the read time, i.e. load+encode <= 2x the read.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq

from benchmarks.report import machine, write_section
from ranker.features import FeatureEncoder
from ranker.schema import load_default_spec
from sim.simulate import SimulatorConfig, simulate
from training.data import encode_log, log_files, read_log, required_columns


def best_of(repeat: int, work: Callable[[], object]) -> float:
    """Fastest of `repeat` runs: on a shared machine the minimum is the least disturbed."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests-per-day", type=int, default=7000)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    spec = load_default_spec()
    encoder = FeatureEncoder(spec)
    with tempfile.TemporaryDirectory() as tmp:
        config = SimulatorConfig(
            users=20000, items=50000, days=args.days, requests_per_day=args.requests_per_day
        )
        rows = simulate(config, Path(tmp)).rows
        files = log_files(tmp)
        columns = required_columns(spec)

        def arrow_read() -> None:
            for file in files:
                pq.read_table(file, columns=columns, partitioning=None)

        log = read_log(tmp, spec)
        last = log.days()[-1:]
        read = best_of(args.repeat, arrow_read)
        load = best_of(args.repeat, lambda: read_log(tmp, spec))
        encode = best_of(args.repeat, lambda: encode_log(log, encoder))
        # One day (the gate day of a retrain, an export's held-out rows): pruned partitions vs
        # the whole log read and filtered, as before pyarrow.dataset discovery.
        day_filtered = best_of(args.repeat, lambda: read_log(tmp, spec).filter_days(last))
        day_pruned = best_of(args.repeat, lambda: read_log(tmp, spec, days=last))

    total = load + encode
    table = [
        "| step | seconds | rows/s | ratio to pyarrow read |",
        "|---|---:|---:|---:|",
        f"| pyarrow read (baseline) | {read:.3f} | {rows / read:,.0f} | 1.00 |",
        f"| read_log (read + validate) | {load:.3f} | {rows / load:,.0f} | {load / read:.2f} |",
        f"| encode_log (all features) | {encode:.3f} | {rows / encode:,.0f} | {encode / read:.2f} |",
        f"| load + encode | {total:.3f} | {rows / total:,.0f} | {total / read:.2f} |",
        "",
        f"Reading one day of the {args.days}: the whole log read then filtered {day_filtered:.3f} s, "
        f"day partitions pruned (`read_log(..., days=)`) {day_pruned:.3f} s: "
        f"{day_filtered / day_pruned:.1f}x faster.",
    ]
    verdict = "met" if encode <= read else "NOT met"
    body = "\n".join(
        [
            "## Loader: load + encode vs pyarrow's own read",
            "",
            f"`python benchmarks/load_encode.py --requests-per-day {args.requests_per_day} "
            f"--days {args.days}`: {rows:,} simulated rows, {len(columns)} columns, "
            f"best of {args.repeat}; {machine()}.",
            "",
            *table,
            "",
            f"Target: encoding adds no more than 1x the read time: {verdict} "
            f"(encode / read = {encode / read:.2f}).",
        ]
    )
    print(body)
    write_section("load_encode", body)


if __name__ == "__main__":
    main()
