"""The `ranker` command line: one console script, one subcommand per job.

The composition root of the project: the only package that wires training, serving and the
simulator together (tests/test_boundaries.py holds the others apart). One module per command group
registers its subcommands; handlers import their modules lazily, so `ranker serve` never loads
torch and `ranker --help` is fast. Errors a user can act on (bad data, bad config) are printed as
one line and exit with code 2; they never show a stack trace.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cli import config, data, evaluate, online, train
from cli.command import Handler

# In the order `ranker --help` lists them: the data, the model, measuring it, running it.
GROUPS = (data, train, evaluate, online, config)


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

    for group in GROUPS:
        group.register(add)
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
