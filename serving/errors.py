"""Errors the API answers with: `{"error": {"field": ..., "message": ...}}` and an HTTP status."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response


class ApiError(Exception):
    """A request the service refuses; `field` names the offending part of the input."""

    def __init__(self, status: int, field: str | None, message: str, **extra: Any) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.status = status
        self.field = field
        self.message = message
        self.extra = extra
        self.headers: dict[str, str] = {}


def bad_request(field: str | None, message: str) -> ApiError:
    """422: the body parsed but a field is wrong (missing, extra, wrong type or value)."""
    return ApiError(422, field, message)


def split_field(text: str, default_field: str) -> tuple[str, str]:
    """`"layers.x.buckets: must be ..."` -> (field, message), the style of ranker's errors."""
    head, sep, tail = text.partition(": ")
    if sep and head and " " not in head:
        return head, tail
    return default_field, text


def error_response(error: ApiError) -> Response:
    body = {"error": {"field": error.field, "message": error.message, **error.extra}}
    return Response(
        orjson.dumps(body),
        status_code=error.status,
        media_type="application/json",
        headers=error.headers or None,
    )
