"""Shared request plumbing for routes: the service, admin auth and JSON responses (reading a
body is serving/body.py, which needs no service)."""

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


def json_response(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )
