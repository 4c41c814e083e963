"""`ranker demo`: the main job end to end on embedded defaults (no Redis, no data to download)."""

from __future__ import annotations

import time
from pathlib import Path

from ranker.schema import load_default_spec
from training.data import read_log
from training.simulate import SimulatorConfig, simulate
from training.summary import summarize


def _step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def run_demo(workdir: Path, *, quick: bool = False) -> int:
    """Simulate logs, load and validate them, and print what they hold."""
    started = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    data_dir = workdir / "data"
    config = (
        SimulatorConfig(
            users=500, items=2000, authors=200, days=3, requests_per_day=300, oracle=True
        )
        if quick
        else SimulatorConfig(users=5000, items=20000, days=7, requests_per_day=5000, oracle=True)
    )
    _step(f"simulate impression logs -> {data_dir}")
    sim = simulate(config, data_dir, progress=not quick)
    print(
        f"{sim.rows:,} impressions, {sim.requests:,} requests, days {sim.days[0]} .. {sim.days[-1]}"
    )

    _step("load and validate with the simulator's feature spec")
    spec = load_default_spec()
    log = read_log(data_dir, spec)
    print(summarize(log).render())
    print(f"\ndemo finished in {time.perf_counter() - started:.1f} s")
    return 0
