"""Training commands: train a model (also under torchrun), compare methods, export to the registry."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cli import quantize  # light: no numpy or ONNX at import
from cli.command import AddCommand


def _train(args: argparse.Namespace) -> int:
    from cli.run_report import render_metrics
    from training.checkpoint import CHECKPOINT
    from training.config import load_config
    from training.distributed import barrier, close_world, init_world
    from training.prepare import prepare_data
    from training.trainer import Trainer

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


def _compare(args: argparse.Namespace) -> int:
    from training.compare import load_compare_config, run_compare

    config = load_compare_config(args.config, args.overrides)
    written = run_compare(config, progress=not args.quiet)
    print(written["markdown"].read_text())
    for label, path in written.items():
        print(f"{label:<9} {path}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from training.export import export_run

    if args.ensemble:
        if args.quantize:
            raise ValueError("--ensemble and --quantize: int8 is made from one run's graph")
        from training.ensemble import export_ensemble

        manifest = export_ensemble(
            [Path(args.run_dir), *map(Path, args.ensemble)],
            Path(args.registry),
            args.name,
            parent=args.parent,
            batched=args.batched,
        )
        members = len(manifest.hparams["members"])
        print(
            f"exported {args.name} version {manifest.version}, the mean of {members} runs, to "
            f"{Path(args.registry) / args.name / manifest.version}"
        )
        print(f"ONNX vs PyTorch max abs diff: {manifest.exporter.get('parity_max_diff')}")
        print(manifest.version)
        return 0
    if args.quantize:
        if args.batched:
            raise ValueError(
                "--batched and --quantize: int8 is checked on the single-request graph"
            )
        from cli.quantize import export_quantized

        return export_quantized(args)

    manifest = export_run(
        Path(args.run_dir), Path(args.registry), args.name, parent=args.parent, batched=args.batched
    )
    graph = " (batched graph)" if manifest.batched else ""
    print(
        f"exported {args.name} version {manifest.version}{graph} to {Path(args.registry) / args.name / manifest.version}"
    )
    print(f"ONNX vs PyTorch max abs diff: {manifest.exporter.get('parity_max_diff')}")
    print(manifest.version)
    return 0


def register(add: AddCommand) -> None:
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
    ex.add_argument(
        "--batched",
        action="store_true",
        help="publish the batched graph (many requests per run), which the service's dynamic "
        "batcher feeds when RANKER_BATCH_MAX_REQUESTS > 1",
    )
    ex.add_argument(
        "--ensemble",
        action="append",
        default=[],
        metavar="RUN_DIR",
        help="also average this run's predictions (repeatable): one graph for runs of one "
        "configuration that differ in train.seed; each member's cost per request",
    )
    quantize.add_arguments(ex)
