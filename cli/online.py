"""Commands that run the system: the service, the scheduled retraining job and the demo."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cli.command import AddCommand


def _serve(args: argparse.Namespace) -> int:
    from serving.server import run
    from serving.settings import Settings, SettingsError

    overrides: dict = {}
    for name in ("host", "port", "redis_url"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.registry is not None:
        overrides["registry"] = Path(args.registry)
    if args.experiments is not None:
        overrides["experiments_file"] = Path(args.experiments)
    try:
        settings = Settings.from_env(**overrides)
        run(settings)
    except SettingsError as exc:
        print(f"ranker serve: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _retrain(args: argparse.Namespace) -> int:
    from training.retrain.config import load_retrain_config
    from training.retrain.run import progress_to_stderr, run_command
    from training.schedule import interrupt_on_signals, parse_schedule, run_schedule

    if args.max_runs is not None and (args.schedule is None or args.max_runs < 1):
        raise ValueError("--max-runs: needs --schedule and a count >= 1")
    schedule = parse_schedule(args.schedule) if args.schedule is not None else None
    config = load_retrain_config(args.config, args.overrides)
    if args.cleanup:
        if schedule is not None:
            raise ValueError("--cleanup: runs once, not with --schedule")
        from training.retrain.run import cleanup_command

        return cleanup_command(config)
    with progress_to_stderr():
        if schedule is None:
            with interrupt_on_signals():
                return run_command(config)
        return run_schedule(schedule, lambda: run_command(config), max_runs=args.max_runs)


def _demo(args: argparse.Namespace) -> int:
    from cli.demo import run_demo, stop_service

    if args.stop:
        return stop_service(Path(args.workdir))
    return run_demo(Path(args.workdir), quick=args.quick, stop=args.stop_after)


def register(add: AddCommand) -> None:
    sv = add(
        "serve",
        _serve,
        "start the ranking service (FastAPI + ONNX Runtime); RANKER_* env vars configure it",
    )
    sv.add_argument("--host", help="bind address (RANKER_HOST, default 127.0.0.1)")
    sv.add_argument("--port", type=int, help="port (RANKER_PORT, default 8000)")
    sv.add_argument("--registry", help="model registry root (RANKER_REGISTRY)")
    sv.add_argument(
        "--experiments", help="experiment config YAML used without Redis (RANKER_EXPERIMENTS_FILE)"
    )
    sv.add_argument(
        "--redis-url", help="Redis for experiment config and impressions (RANKER_REDIS_URL)"
    )

    rt = add(
        "retrain",
        _retrain,
        "retrain on the newest logs; publish and roll out only a model that beats production",
    )
    rt.add_argument(
        "--config", help="retrain config YAML (configs/retrain.yaml documents every key)"
    )
    rt.add_argument(
        "--schedule",
        metavar="CRON",
        help='run on a cron schedule in UTC, e.g. "0 3 * * *" (a 6th field: seconds)',
    )
    rt.add_argument("--max-runs", type=int, help="with --schedule: stop after N runs")
    rt.add_argument(
        "--cleanup",
        action="store_true",
        help="only remove what a killed run left (every run does this first) and exit",
    )
    rt.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides, e.g. gate.min_improvement=0.002 train.train.epochs=2",
    )

    demo = add("demo", _demo, "run the main job end to end on embedded defaults")
    demo.add_argument("--workdir", default="out/demo", help="where data, runs and models go")
    demo.add_argument(
        "--quick", action="store_true", help="smallest sizes, service stopped at the end (tests)"
    )
    demo.add_argument(
        "--stop-after",
        action="store_true",
        help="stop the service when the demo finishes instead of leaving it running",
    )
    demo.add_argument(
        "--stop",
        action="store_true",
        help="only stop the service an earlier `ranker demo` left running (runs nothing else)",
    )
