"""Measuring commands: score and evaluate logs with a published model, tune the score weights,
analyse an A/B test.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cli.command import AddCommand


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
    from training.offline import OfflineModel, evaluate_log, load_formula
    from training.offline_report import render

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


def _tune(args: argparse.Namespace) -> int:
    from training.tune import tune
    from training.tune_report import render, write_outputs

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


def _ab_report(args: argparse.Namespace) -> int:
    from training.ab.render import markdown
    from training.ab.report import ab_report

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


def register(add: AddCommand) -> None:
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
