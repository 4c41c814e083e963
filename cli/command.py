"""What a command group module gets to register its subcommands: `add(name, handler, help)`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Protocol

# A subcommand's handler: the parsed arguments in, the process exit code out.
Handler = Callable[[argparse.Namespace], int]


class AddCommand(Protocol):
    def __call__(self, name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser: ...
