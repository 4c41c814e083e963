"""Progress bars that show only on a terminal.

tqdm's `disable=None` turns a bar off when its stream (stderr) is not a TTY: docker and Kubernetes
logs, CI and pipes would otherwise collect every carriage-return frame (95 KB for one training run).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress_bar(
    iterable: Iterable[T] | None = None, *, enabled: bool = True, **kwargs: Any
) -> tqdm:
    """A tqdm bar when `enabled` and stderr is a terminal; a silent one otherwise."""
    return tqdm(iterable, disable=None if enabled else True, **kwargs)


def on_terminal() -> bool:
    """Whether progress output would reach a person (stderr is a TTY)."""
    return sys.stderr.isatty()
