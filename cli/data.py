"""Data commands: simulate a world and its traffic, import KuaiRand, validate a log, build logs
from served impressions and outcome events.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from cli.command import AddCommand

if TYPE_CHECKING:
    from sim.world import SimulatorConfig


def _world_config(args: argparse.Namespace, oracle: bool = False) -> SimulatorConfig:
    from sim.world import SimulatorConfig

    return SimulatorConfig(
        users=args.users,
        items=args.items,
        authors=args.authors,
        days=args.days,
        requests_per_day=args.requests_per_day,
        seed=args.seed,
        oracle=oracle,
        start_date=args.start_date,
    )


def _simulate(args: argparse.Namespace) -> int:
    from sim.simulate import simulate

    config = _world_config(args, oracle=args.oracle)
    summary = simulate(config, Path(args.out), progress=not args.quiet)
    print(
        f"wrote {summary.rows:,} impressions in {summary.requests:,} requests over "
        f"{len(summary.days)} days to {args.out}"
    )
    return 0


def _simulate_traffic(args: argparse.Namespace) -> int:
    from sim.traffic import TrafficConfig, run_traffic
    from sim.world import World

    config = TrafficConfig(
        url=args.url,
        out=Path(args.out),
        requests=args.requests,
        seconds=args.seconds,
        concurrency=args.concurrency,
        seed=args.traffic_seed,
        day=args.day,
        top_k=args.top_k,
        position_bias=args.position_bias,
        timeout_s=args.timeout,
        log_dir=None if args.log_dir is None else Path(args.log_dir),
        events_redis_url=args.events_redis_url,
        events_stream=args.events_stream,
    )
    summary = run_traffic(World(_world_config(args)), config)
    print("\n".join(summary.lines()))
    return 0 if summary.served else 1


def _import_kuairand(args: argparse.Namespace) -> int:
    from training.datasets.kuairand.importer import import_kuairand

    report = import_kuairand(
        Path(args.src), Path(args.out), drop_invalid=args.drop_invalid, progress=not args.quiet
    )
    print(report.summary())
    return 0


def _summary(args: argparse.Namespace) -> int:
    from ranker.schema import FeatureSpec, load_default_spec
    from training.data import find_log_spec, read_log
    from training.summary import summarize

    spec_path = args.spec or find_log_spec(args.data)
    spec = FeatureSpec.load(spec_path) if spec_path else load_default_spec()
    log = read_log(args.data, spec, drop_invalid=args.drop_invalid)
    print(summarize(log).render())
    return 0


def _build_log(args: argparse.Namespace) -> int:
    from ranker.schema import FeatureSpec
    from training.build_log import BuildConfig, Source, run_command

    def source(paths: list[str] | None, stream: str) -> Source:
        return Source(tuple(paths or ()), None if paths else args.redis_url, stream)

    config = BuildConfig(
        impressions=source(args.impressions, args.impressions_stream),
        events=source(args.events, args.events_stream),
        out=Path(args.out),
        spec=FeatureSpec.load(args.spec) if args.spec else None,
        late_window_s=args.late_window,
        open_days=args.open_days,
        rebuild=args.rebuild,
    )
    return run_command(config, args.schedule, args.max_runs)


def register(add: AddCommand) -> None:
    """The data commands, one declaration each."""
    for declare in (_simulate_cmd, _simulate_traffic_cmd, _import_kuairand_cmd, _summary_cmd,
                    _build_log_cmd):  # fmt: skip
        declare(add)


def _simulate_cmd(add: AddCommand) -> None:
    sim = add("simulate", _simulate, "write simulated impression logs with known ground truth")
    sim.add_argument("--out", required=True, help="output directory (Parquet partitioned by day)")
    _add_world_args(sim)
    sim.add_argument(
        "--oracle",
        action="store_true",
        help="also write true E[click], E[watch_time], E[completion]",
    )
    sim.add_argument("--quiet", action="store_true", help="no progress bar")


def _simulate_traffic_cmd(add: AddCommand) -> None:
    st = add(
        "simulate-traffic",
        _simulate_traffic,
        "send simulated users' requests to a loopback service and log the outcomes of what it served",
    )
    st.add_argument("--url", default="http://127.0.0.1:8000", help="service root (loopback only)")
    st.add_argument("--out", required=True, help="directory for outcomes.jsonl and summary.json")
    st.add_argument("--requests", type=int, default=1000, help="at most this many requests")
    st.add_argument("--seconds", type=float, default=60.0, help="and at most this long")
    st.add_argument("--concurrency", type=int, default=4, help="requests in flight at once")
    st.add_argument("--traffic-seed", type=int, default=0, help="seed of the sampled requests")
    st.add_argument("--day", type=int, help="simulated day index (default: after the logged days)")
    st.add_argument("--top-k", type=int, help="items the service returns (default: all)")
    st.add_argument(
        "--position-bias", type=float, default=1.0, help="examination (1/log2(p+2))^this; 0: none"
    )
    st.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    st.add_argument(
        "--log-dir", help="also write the served rows as day=YYYY-MM-DD/part-traffic-SEED.parquet"
    )
    st.add_argument("--events-redis-url", help="also add the outcome events to a Redis stream")
    st.add_argument("--events-stream", default="ranker:events", help="that stream's key")
    _add_world_args(st, "the world of the simulated logs: give the same values as to `simulate`")


def _import_kuairand_cmd(add: AddCommand) -> None:
    kr = add(
        "import-kuairand", _import_kuairand, "convert KuaiRand CSV logs to impression-log Parquet"
    )
    kr.add_argument("src", help="directory holding the KuaiRand CSV files")
    kr.add_argument("--out", required=True, help="output directory")
    kr.add_argument(
        "--drop-invalid", action="store_true", help="drop and count bad rows instead of failing"
    )
    kr.add_argument("--quiet", action="store_true", help="no progress bar")


def _summary_cmd(add: AddCommand) -> None:
    sm = add("summary", _summary, "validate an impression log and print a summary")
    sm.add_argument("data", nargs="+", help="log directories or files (.parquet, .csv)")
    sm.add_argument(
        "--spec",
        help="feature spec YAML (default: the log's feature_spec.yaml, else the simulator's)",
    )
    sm.add_argument(
        "--drop-invalid", action="store_true", help="drop and count bad rows instead of failing"
    )


def _build_log_cmd(add: AddCommand) -> None:
    bl = add(
        "build-log",
        _build_log,
        "join served impressions (with their features) and outcome events into training days",
    )
    bl.add_argument("--impressions", nargs="+", help="JSONL impression logs (files, directories)")
    bl.add_argument("--events", nargs="+", help="JSONL outcome events (files, directories)")
    bl.add_argument("--redis-url", help="read impressions and/or events from Redis streams")
    bl.add_argument("--impressions-stream", default="ranker:impressions", help="field `record`")
    bl.add_argument("--events-stream", default="ranker:events", help="field `event`")
    bl.add_argument("--out", required=True, help="log directory: day=YYYY-MM-DD/ partitions")
    bl.add_argument("--spec", help="the served model's feature spec (default: the package's)")
    bl.add_argument("--late-window", type=float, default=3600.0, help="seconds events may lag")
    bl.add_argument("--open-days", action="store_true", help="also build days still open")
    bl.add_argument("--rebuild", action="store_true", help="rebuild closed days built before")
    bl.add_argument("--schedule", metavar="CRON", help="run on a cron schedule (UTC)")
    bl.add_argument("--max-runs", type=int, help="with --schedule: stop after N runs")


def _add_world_args(parser: argparse.ArgumentParser, title: str | None = None) -> None:
    """The simulator's world: `simulate` and `simulate-traffic` must agree on these."""
    group = parser.add_argument_group(title)
    group.add_argument("--users", type=int, default=5000)
    group.add_argument("--items", type=int, default=20000)
    group.add_argument("--authors", type=int, default=2000)
    group.add_argument("--days", type=int, default=7)
    group.add_argument("--requests-per-day", type=int, default=5000)
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--start-date", default="2026-01-01")
