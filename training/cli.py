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
    print(f"rows in   {report.rows_in:,}")
    print(
        f"rows out  {report.rows_out:,} in {report.requests:,} requests over {len(report.days)} days"
    )
    for reason, count in report.dropped.items():
        print(f"dropped   {count:,} rows: {reason}")
    print(f"spec      {report.spec_path}")
    return 0


def _summary(args: argparse.Namespace) -> int:
    from ranker.schema import FeatureSpec, load_default_spec
    from training.data import read_log
    from training.summary import summarize

    spec = FeatureSpec.load(args.spec) if args.spec else load_default_spec()
    log = read_log(args.data, spec, drop_invalid=args.drop_invalid)
    print(summarize(log).render())
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
