"""Deterministic A/B buckets: bucket = xxh3_64(salt : layer : user_id) mod buckets.

A stable hash (never Python's `hash()`, which is salted per process), so every replica and every
restart puts a user in the same bucket until the salt changes; layers hash independently.
"""

from __future__ import annotations

import xxhash


def user_key(user_id: str | int) -> str:
    """Canonical text of a user id: `42` and `"42"` are the same user."""
    if isinstance(user_id, bool):
        raise TypeError("user_id must be a string or an integer")
    return str(int(user_id)) if isinstance(user_id, int) else str(user_id)


def bucket_of(salt: str, layer: str, user_id: str | int, buckets: int) -> int:
    """The user's bucket in [0, buckets) of one experiment layer."""
    digest = xxhash.xxh3_64_intdigest(f"{salt}:{layer}:{user_key(user_id)}".encode())
    return digest % buckets
