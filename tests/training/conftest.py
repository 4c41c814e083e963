"""Training tests use the session fixtures of tests/conftest.py."""

from tests.conftest import TINY, tiny_overrides

__all__ = ["TINY", "tiny_overrides"]
