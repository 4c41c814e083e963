"""Shared request plumbing: the service, admin auth, body reading and JSON responses."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

import orjson
from fastapi import Depends, Request
from starlette.responses import Response

from serving.errors import ApiError
from serving.service import Service


def get_service(request: Request) -> Service:
    return request.app.state.service  # type: ignore[no-any-return]


ServiceDep = Annotated[Service, Depends(get_service)]


def require_admin(request: Request) -> None:
    """Bearer-token check, constant-time; refused outright when no token is configured."""
    token = get_service(request).settings.admin_token
    if token is None:
        raise ApiError(
            403, "authorization", "admin endpoints are disabled: RANKER_ADMIN_TOKEN is not set"
        )
    header = request.headers.get("authorization")
    if header is None:
        error = ApiError(401, "authorization", "missing bearer token")
        error.headers["WWW-Authenticate"] = "Bearer"
        raise error
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        error = ApiError(401, "authorization", "expected 'Authorization: Bearer <token>'")
        error.headers["WWW-Authenticate"] = "Bearer"
        raise error
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ApiError(403, "authorization", "invalid token")


AdminDep = Depends(require_admin)


def require_json(request: Request) -> None:
    """Refuse bodies declared as anything but JSON: a form or text/plain post is what a foreign web
    page can send cross-site without a CORS preflight. No Content-Type at all is accepted."""
    content_type = request.headers.get("content-type")
    if content_type is None:
        return
    media = content_type.split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise ApiError(415, "content-type", f"expected application/json, got {media[:60]!r}")


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing more than `limit` bytes by Content-Length and by what actually arrives."""
    length = request.headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise ApiError(400, "content-length", f"not an integer: {length!r}") from None
        if declared > limit:
            raise ApiError(413, "body", f"{declared} bytes; at most {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "body", f"more than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def json_response(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )
