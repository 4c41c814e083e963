"""Reading a request body: JSON only, size-limited.

Apart from serving/deps.py because it needs no service: the /rank route, the admin routes and the
tracer (serving/tracing.py, which the service opens) all read bodies, and none of them may pull the
service in through here.
"""

from __future__ import annotations

from starlette.requests import Request

from serving.errors import ApiError


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
