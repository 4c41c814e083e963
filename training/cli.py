"""The `ranker` command line: one console script, one subcommand per job.

Handlers import their modules lazily, so `ranker serve` never loads torch and `ranker --help` is
fast. Errors a user can act on (bad data, bad config) are printed as one line and exit with code 2;
they never show a stack trace.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

Handler = Callable[[argparse.Namespace], int]


def _simulate(args: argparse.Namespace) -> int:
    from training.simulate import SimulatorConfig, simulate

    config = SimulatorConfig(
        users=args.users,
        items=args.items,
        days=args.days,
        requests_per_day=args.requests_per_day,
        seed=args.seed,
        oracle=args.oracle,
        start_date=args.start_date,
    )
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
    from training.data import read_log
    from training.summary import summarize

    spec = FeatureSpec.load(args.spec) if args.spec else load_default_spec()
    log = read_log(args.data, spec, drop_invalid=args.drop_invalid)
    print(summarize(log).render())
    return 0


def _train(args: argparse.Namespace) -> int:
    from training.config import load_config
    from training.distributed import close_world, init_world
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
    finally:
        close_world(world)
    return 0


def _export(args: argparse.Namespace) -> int:
    from training.export import export_run

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


def _compare(args: argparse.Namespace) -> int:
    from training.compare import load_compare_config, run_compare

    config = load_compare_config(args.config, args.overrides)
    written = run_compare(config, progress=not args.quiet)
    print(written["markdown"].read_text())
    for label, path in written.items():
        print(f"{label:<9} {path}")
    return 0


def render_metrics(result: dict) -> str:
    """Test (or validation) metrics of a training run as a few readable lines."""
    split = "test" if "test" in result else "valid"
    lines = [f"best epoch {result['best_epoch']} of {result['epochs_run']}; {split} metrics:"]
    for task, scores in result[split].items():
        if task == "score":
            continue
        shown = ", ".join(
            f"{name} {value:.4g}"
            + (f" (oracle {scores['oracle_' + name]:.4g})" if f"oracle_{name}" in scores else "")
            for name, value in scores.items()
            if not name.startswith(("oracle_", "gap_"))
        )
        lines.append(f"  {task:<11} {shown}")
    return "\n".join(lines)


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


def _demo(args: argparse.Namespace) -> int:
    from training.demo import run_demo

    return run_demo(Path(args.workdir), quick=args.quick)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ranker", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    sim = add("simulate", _simulate, "write simulated impression logs with known ground truth")
    sim.add_argument("--out", required=True, help="output directory (Parquet partitioned by day)")
    sim.add_argument("--users", type=int, default=5000)
    sim.add_argument("--items", type=int, default=20000)
    sim.add_argument("--days", type=int, default=7)
    sim.add_argument("--requests-per-day", type=int, default=5000)
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--start-date", default="2026-01-01")
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
    sm.add_argument("--spec", help="feature spec YAML (default: the simulator's)")
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

    ex = add(
        "export", _export, "export a run's best model to ONNX and publish it to the model registry"
    )
    ex.add_argument("run_dir", help="training run directory (holds best.pt)")
    ex.add_argument("--registry", default="models", help="model registry root")
    ex.add_argument("--name", default="ranker", help="model name in the registry")
    ex.add_argument("--parent", help="version this model would replace (recorded in the manifest)")

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

    demo = add("demo", _demo, "run the main job end to end on embedded defaults")
    demo.add_argument("--workdir", default="out/demo", help="where data, runs and models go")
    demo.add_argument("--quick", action="store_true", help="smallest sizes (used by tests)")
    return parser


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
