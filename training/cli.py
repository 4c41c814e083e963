"""The `ranker` command line: one console script, one subcommand per job.

Handlers import their modules lazily, so `ranker serve` never loads torch and `ranker --help` is
fast. Errors a user can act on (bad data, bad config) are printed as one line and exit with code 2;
they never show a stack trace.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from training.world import SimulatorConfig

Handler = Callable[[argparse.Namespace], int]


def _world_config(args: argparse.Namespace, oracle: bool = False) -> SimulatorConfig:
    from training.world import SimulatorConfig

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
    from training.simulate import simulate

    config = _world_config(args, oracle=args.oracle)
    summary = simulate(config, Path(args.out), progress=not args.quiet)
    print(
        f"wrote {summary.rows:,} impressions in {summary.requests:,} requests over "
        f"{len(summary.days)} days to {args.out}"
    )
    return 0


def _import_kuairand(args: argparse.Namespace) -> int:
    from training.kuairand import import_kuairand

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


def _train(args: argparse.Namespace) -> int:
    from training.config import load_config
    from training.distributed import barrier, close_world, init_world
    from training.run_report import render_metrics
    from training.trainer import CHECKPOINT, Trainer, prepare_data

    config = load_config(args.config, args.overrides)
    world = init_world()
    try:
        run_dir = Path(config.out)
        checkpoint = run_dir / CHECKPOINT
        if args.resume and not checkpoint.exists():
            raise FileNotFoundError(f"{checkpoint}: no checkpoint to resume from")
        data = prepare_data(config)
        trainer = Trainer(config, data, run_dir, world=world, progress=not args.quiet)
        if args.resume:
            trainer.load_checkpoint(checkpoint)
        result = trainer.fit()
        if world.is_main:
            print(render_metrics(result))
            print(f"run directory: {run_dir}")
        # Tear the group down together: a rank that destroys it and exits while rank 0 still
        # writes its results can abort in gloo's teardown (seen as SIGABRT under load).
        barrier(world)
        if world.distributed:
            # Past the barrier every rank's results are written. gloo's C++ teardown still
            # aborted a finished rank now and then ("terminate called without an active
            # exception", SIGABRT in CI under load), failing a run that had succeeded: leave
            # without running C++ destructors once everything is flushed.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
    finally:
        close_world(world)
    return 0


def _export(args: argparse.Namespace) -> int:
    from training.export import export_run

    if args.quantize:
        from training.quantize_cli import export_quantized

        return export_quantized(args)
    manifest = export_run(Path(args.run_dir), Path(args.registry), args.name, parent=args.parent)
    print(
        f"exported {args.name} version {manifest.version} to {Path(args.registry) / args.name / manifest.version}"
    )
    print(f"ONNX vs PyTorch max abs diff: {manifest.exporter.get('parity_max_diff')}")
    print(manifest.version)
    return 0


def _tune(args: argparse.Namespace) -> int:
    from training.tune import render, tune, write_outputs

    model_dir = Path(args.model)
    result = tune(
        model_dir,
        args.data,
        days=args.days,
        objective=args.objective,
        constraints=args.constraint or ["click.ndcg@10>=0.98x"],
        trials=args.trials,
        seed=args.seed,
        progress=not args.quiet,
    )
    out = (
        Path(args.out)
        if args.out
        else model_dir.parent.parent.parent / "tuning" / model_dir.parent.name / model_dir.name
    )
    written = write_outputs(result, out, {"name": model_dir.parent.name, "version": model_dir.name})
    print(render(result))
    if "variant" in written:
        print(f"\nvariant for the experiment config ({written['variant']}):")
        print(written["variant"].read_text())
    print(f"Pareto front: {written['pareto']} and {written['png']}")
    return 0 if result.feasible else 3


def _score(args: argparse.Namespace) -> int:
    from training.offline import OfflineModel, load_formula, score_log

    summary = score_log(
        OfflineModel(args.model),
        args.data,
        args.out,
        formula=load_formula(args.formula),
        days=args.days or None,
    )
    print(f"scored {summary.rows:,} impressions of {summary.files} files with {summary.model}")
    print(f"score: {summary.formula}")
    print(f"wrote {summary.out}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from training.offline import OfflineModel, evaluate_log, load_formula, render

    evaluation = evaluate_log(
        OfflineModel(args.model),
        args.data,
        args.out,
        formula=load_formula(args.formula),
        days=args.days or None,
        train_data=args.train_data,
    )
    print(render(evaluation))
    print(f"report, scores.parquet and reliability curves in {args.out}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from training.compare import load_compare_config, run_compare

    config = load_compare_config(args.config, args.overrides)
    written = run_compare(config, progress=not args.quiet)
    print(written["markdown"].read_text())
    for label, path in written.items():
        print(f"{label:<9} {path}")
    return 0


def _retrain(args: argparse.Namespace) -> int:
    from training.retrain import progress_to_stderr, run_command
    from training.retrain_config import load_retrain_config
    from training.schedule import interrupt_on_signals, parse_schedule, run_schedule

    if args.max_runs is not None and (args.schedule is None or args.max_runs < 1):
        raise ValueError("--max-runs: needs --schedule and a count >= 1")
    schedule = parse_schedule(args.schedule) if args.schedule is not None else None
    config = load_retrain_config(args.config, args.overrides)
    if args.cleanup:
        if schedule is not None:
            raise ValueError("--cleanup: runs once, not with --schedule")
        from training.retrain import cleanup_command

        return cleanup_command(config)
    with progress_to_stderr():
        if schedule is None:
            with interrupt_on_signals():
                return run_command(config)
        return run_schedule(schedule, lambda: run_command(config), max_runs=args.max_runs)


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


def _simulate_traffic(args: argparse.Namespace) -> int:
    from training.traffic import TrafficConfig, run_traffic
    from training.world import World

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


def _ab_report(args: argparse.Namespace) -> int:
    from training.ab_render import markdown
    from training.ab_report import ab_report

    report, written = ab_report(
        Path(args.outcomes),
        Path(args.out),
        impressions=None if args.impressions is None else Path(args.impressions),
        redis_url=args.redis_url,
        stream=args.stream,
        control=args.control,
        layer=args.layer,
        experiments=None if args.experiments is None else Path(args.experiments),
    )
    print(markdown(report))
    for label, path in written.items():
        print(f"{label:<9} {path}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from training.demo import run_demo, stop_service

    if args.stop:
        return stop_service(Path(args.workdir))
    return run_demo(Path(args.workdir), quick=args.quick, stop=args.stop_after)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ranker")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ranker", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    sim = add("simulate", _simulate, "write simulated impression logs with known ground truth")
    sim.add_argument("--out", required=True, help="output directory (Parquet partitioned by day)")
    _add_world_args(sim)
    sim.add_argument(
        "--oracle",
        action="store_true",
        help="also write true E[click], E[watch_time], E[completion]",
    )
    sim.add_argument("--quiet", action="store_true", help="no progress bar")

    kr = add(
        "import-kuairand", _import_kuairand, "convert KuaiRand CSV logs to impression-log Parquet"
    )
    kr.add_argument("src", help="directory holding the KuaiRand CSV files")
    kr.add_argument("--out", required=True, help="output directory")
    kr.add_argument(
        "--drop-invalid", action="store_true", help="drop and count bad rows instead of failing"
    )
    kr.add_argument("--quiet", action="store_true", help="no progress bar")

    sm = add("summary", _summary, "validate an impression log and print a summary")
    sm.add_argument("data", nargs="+", help="log directories or files (.parquet, .csv)")
    sm.add_argument(
        "--spec",
        help="feature spec YAML (default: the log's feature_spec.yaml, else the simulator's)",
    )
    sm.add_argument(
        "--drop-invalid", action="store_true", help="drop and count bad rows instead of failing"
    )

    tr = add("train", _train, "train a multi-task model (also under torchrun for data parallelism)")
    tr.add_argument("--config", help="training config YAML (default: built-in defaults)")
    tr.add_argument(
        "--resume", action="store_true", help="continue from the run directory's checkpoint"
    )
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    tr.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.epochs=5"
    )

    cp = add("compare", _compare, "compare architectures x balancers x self-aux heads over seeds")
    cp.add_argument("--config", help="compare config YAML (base training config + grid)")
    cp.add_argument("--quiet", action="store_true", help="no progress bar")
    cp.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides, e.g. seeds=[0]")

    ex = add(
        "export", _export, "export a run's best model to ONNX and publish it to the model registry"
    )
    ex.add_argument("run_dir", help="training run directory (holds best.pt)")
    ex.add_argument("--registry", default="models", help="model registry root")
    ex.add_argument("--name", default="ranker", help="model name in the registry")
    ex.add_argument("--parent", help="version this model would replace (recorded in the manifest)")
    from training import quantize_cli  # light: no numpy or ONNX at import

    quantize_cli.add_arguments(ex)

    for name, handler, text in (
        ("score", _score, "score a log with a published model: ids, predictions, ranking score"),
        ("evaluate", _evaluate, "score a log and measure the model: metrics, oracle, segments"),
    ):
        off = add(name, handler, text)
        off.add_argument(
            "--model", required=True, help="model version dir, e.g. models/ranker/v0001"
        )
        off.add_argument(
            "--data", nargs="+", required=True, help="impression logs (.parquet, .csv)"
        )
        off.add_argument(
            "--out", required=True, help="output: a .parquet file (score), a dir (evaluate)"
        )
        off.add_argument(
            "--formula", help="score formula: YAML/JSON file, inline mapping or variant"
        )
        off.add_argument(
            "--days", nargs="*", help="days to use (default: score all, evaluate held-out)"
        )
        if name == "evaluate":
            off.add_argument("--train-data", nargs="+", help="training log for new vs seen ids")

    tu = add("tune", _tune, "tune the ranking-score weights on held-out requests")
    tu.add_argument(
        "--model", required=True, help="model version directory, e.g. models/ranker/v0001"
    )
    tu.add_argument("--data", nargs="+", required=True, help="impression logs")
    tu.add_argument(
        "--days", nargs="*", help="days to tune on (default: the model's validation days)"
    )
    tu.add_argument("--objective", default="watch_time.ndcg@10", help="TASK.ndcg@K to maximise")
    tu.add_argument(
        "--constraint",
        action="append",
        help="TASK.ndcg@K>=V or >=Fx (fraction of the TASK-only ranking); repeatable",
    )
    tu.add_argument("--trials", type=int, default=150)
    tu.add_argument("--seed", type=int, default=0)
    tu.add_argument("--out", help="output directory (default: <registry>/../tuning/NAME/VERSION)")
    tu.add_argument("--quiet", action="store_true", help="no progress bar")

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

    from training import config_cli

    config_cli.add_arguments(
        add("config", config_cli.run, "print a config's JSON Schema or the resolved config")
    )

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

    ab = add(
        "ab-report",
        _ab_report,
        "A/B metrics with CIs, lift vs control and an SRM check from impressions + outcomes",
    )
    source = ab.add_mutually_exclusive_group(required=True)
    source.add_argument("--impressions", help="impression records (JSONL written by the service)")
    source.add_argument("--redis-url", help="read impression records from this Redis instead")
    ab.add_argument("--stream", default="ranker:impressions", help="Redis stream of the records")
    ab.add_argument("--outcomes", required=True, help="outcome rows (JSONL, e.g. simulate-traffic)")
    ab.add_argument("--out", required=True, help="directory for report.md, report.json, lift.png")
    ab.add_argument("--control", help="control variant (default: 'control', else the first)")
    ab.add_argument("--layer", help="experiment layer to analyse (default: the only one)")
    ab.add_argument("--experiments", help="experiment config for the split (default: equal split)")

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
    return parser


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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ranker.schema import SpecError
    from training.errors import DataError

    try:
        return int(args.handler(args))
    except (DataError, SpecError, ValueError, FileNotFoundError) as exc:
        print(f"ranker {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ranker {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
