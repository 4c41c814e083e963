"""A typed Python client for the ranker service (httpx; no torch, nothing of the server imported).

    with RankerClient("http://ranker:8000") as client:
        ranking = client.rank({"user_id": 42}, [{"item_id": 7}, {"item_id": 9}], top_k=1)
        ranking.items[0].item_id, ranking.model_version, ranking.experiment.label

`AsyncRankerClient` is the same on asyncio (`await client.rank(...)`). Retries only what is safe
to repeat: a 503 (not ready, or the model failed: nothing was served or logged) and a connection
that could not be made. A request that timed out (or whose connection broke) after it was sent
is not retried, since the service may have ranked it and logged its impressions. The request id
goes in the body and in `X-Request-ID`, so the service's log line of a refused body carries it.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import orjson


class RankerError(Exception):
    """The service refused or could not answer; `field` names the offending input when it did."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        field: str | None = None,
        attempts: int = 1,
    ) -> None:
        where = f"{field}: " if field else ""
        super().__init__(f"{status or 'no answer'}: {where}{message}")
        self.message = message
        self.status = status
        self.field = field
        self.attempts = attempts


class RequestRejected(RankerError):
    """4xx: the request itself is wrong (unknown or mistyped feature, too many candidates...)."""


class RankerUnavailable(RankerError):
    """503 or no connection, still so after every retry."""


class RankerServerError(RankerError):
    """Another 5xx."""


class RankerTimeout(RankerError):
    """No answer in time after the request was sent (not retried: it may have been served)."""


@dataclass(frozen=True, slots=True)
class RankedItem:
    item_id: str | int
    score: float
    predictions: dict[str, float]  # task -> prediction in natural units


@dataclass(frozen=True, slots=True)
class LayerAssignment:
    layer: str
    bucket: int
    variant: str | None  # None: the user is in no variant of this layer


@dataclass(frozen=True, slots=True)
class Experiment:
    label: str  # all layers in one string, e.g. `weights=control`
    layers: tuple[LayerAssignment, ...]


@dataclass(frozen=True, slots=True)
class Ranking:
    request_id: str
    model_version: str  # `name/version` of the model that scored
    experiment: Experiment
    items: tuple[RankedItem, ...]  # best first, cut to top_k

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Ranking:
        experiment = doc["experiment"]
        return cls(
            request_id=doc["request_id"],
            model_version=doc["model_version"],
            experiment=Experiment(
                experiment["label"],
                tuple(LayerAssignment(**layer) for layer in experiment["layers"]),
            ),
            items=tuple(RankedItem(**item) for item in doc["items"]),
        )


@dataclass(frozen=True)
class RetryPolicy:
    """What is retried and how long to wait: exponential backoff with full jitter (replicas
    retrying together spread out); a numeric Retry-After from the service is a floor."""

    retries: int = 3
    backoff_s: float = 0.05
    max_backoff_s: float = 2.0

    def __post_init__(self) -> None:
        if self.retries < 0 or self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError(
                f"retries, backoff_s and max_backoff_s must be >= 0, got "
                f"{self.retries}, {self.backoff_s}, {self.max_backoff_s}"
            )

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        cap = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
        delay = random.uniform(0, cap)
        if retry_after and retry_after.strip().isdigit():  # seconds; an HTTP date is ignored
            delay = max(delay, min(float(retry_after), self.max_backoff_s))
        return delay


class _Client:
    """What the sync and async clients share: the requests they build and how they read answers."""

    def __init__(
        self,
        url: str,
        timeout: float | httpx.Timeout,
        retries: int,
        backoff_s: float,
        max_backoff_s: float,
        admin_token: str | None,
    ) -> None:
        self.policy = RetryPolicy(retries, backoff_s, max_backoff_s)
        self._options: dict[str, Any] = {
            "base_url": url.rstrip("/"),
            "timeout": timeout,
            "headers": {"Authorization": f"Bearer {admin_token}"} if admin_token else {},
        }

    @staticmethod
    def _rank_request(
        user: Mapping[str, Any],
        candidates: Sequence[Mapping[str, Any]],
        context: Mapping[str, Any] | None,
        top_k: int | None,
        request_id: str | None,
    ) -> dict[str, Any]:
        request_id = request_id or uuid.uuid4().hex
        body: dict[str, Any] = {"request_id": request_id, "user": user, "candidates": candidates}
        if context is not None:
            body["context"] = context
        if top_k is not None:
            body["top_k"] = top_k
        return {
            "content": orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
            "headers": {"Content-Type": "application/json", "X-Request-ID": request_id},
        }

    def _answer(
        self, response: httpx.Response | Exception, attempt: int, where: str
    ) -> dict[str, Any] | float:
        """The answer's JSON, or the seconds to wait before the next attempt; raises when the
        call is over (an error answer, or no retry left)."""
        last = attempt > self.policy.retries
        if isinstance(response, httpx.ConnectError | httpx.ConnectTimeout):
            if last:
                raise RankerUnavailable(
                    f"cannot connect to {self._options['base_url']}: {response}", attempts=attempt
                ) from response
            return self.policy.delay(attempt)
        if isinstance(response, httpx.TimeoutException):
            raise RankerTimeout(
                f"{where}: {type(response).__name__}", attempts=attempt
            ) from response
        if isinstance(response, Exception):  # the connection broke after the request was sent
            raise RankerError(f"{where}: {type(response).__name__}: {response}", attempts=attempt)
        if response.status_code == 503 and not last:
            return self.policy.delay(attempt, response.headers.get("retry-after"))
        if response.status_code >= 400:
            raise _error(response, attempt)
        doc: dict[str, Any] = orjson.loads(response.content)
        return doc


class RankerClient(_Client):
    """One connection pool to one service. Thread-safe (httpx.Client is)."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float | httpx.Timeout = 2.0,
        retries: int = 3,
        backoff_s: float = 0.05,
        max_backoff_s: float = 2.0,
        admin_token: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(url, timeout, retries, backoff_s, max_backoff_s, admin_token)
        self._http = httpx.Client(transport=transport, **self._options)

    def rank(
        self,
        user: Mapping[str, Any],
        candidates: Sequence[Mapping[str, Any]],
        context: Mapping[str, Any] | None = None,
        top_k: int | None = None,
        *,
        request_id: str | None = None,
    ) -> Ranking:
        """Rank `candidates` for `user` (which holds `user_id`); features beside the ids, as
        `GET /models/{name}/{version}` lists them. numpy values are accepted."""
        request = self._rank_request(user, candidates, context, top_k, request_id)
        return Ranking.from_json(self._call("POST", "/rank", **request))

    def models(self) -> dict[str, Any]:
        """`GET /models`: what serves now and what the registry holds."""
        return self._call("GET", "/models")

    def model(self, name: str, version: str) -> dict[str, Any]:
        """`GET /models/{name}/{version}`: features, inputs, tasks, limits, metrics, provider."""
        return self._call("GET", f"/models/{name}/{version}")

    def ready(self) -> bool:
        """True when the service serves a warmed model (one try, no retries)."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RankerClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        attempt = 0
        while True:
            attempt += 1
            try:
                response: httpx.Response | Exception = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                response = exc
            outcome = self._answer(response, attempt, f"{method} {path}")
            if isinstance(outcome, dict):
                return outcome
            time.sleep(outcome)


class AsyncRankerClient(_Client):
    """The same on asyncio (httpx.AsyncClient), for callers that serve requests themselves."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float | httpx.Timeout = 2.0,
        retries: int = 3,
        backoff_s: float = 0.05,
        max_backoff_s: float = 2.0,
        admin_token: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(url, timeout, retries, backoff_s, max_backoff_s, admin_token)
        self._http = httpx.AsyncClient(transport=transport, **self._options)

    async def rank(
        self,
        user: Mapping[str, Any],
        candidates: Sequence[Mapping[str, Any]],
        context: Mapping[str, Any] | None = None,
        top_k: int | None = None,
        *,
        request_id: str | None = None,
    ) -> Ranking:
        """As `RankerClient.rank`."""
        request = self._rank_request(user, candidates, context, top_k, request_id)
        return Ranking.from_json(await self._call("POST", "/rank", **request))

    async def models(self) -> dict[str, Any]:
        return await self._call("GET", "/models")

    async def model(self, name: str, version: str) -> dict[str, Any]:
        return await self._call("GET", f"/models/{name}/{version}")

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncRankerClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        attempt = 0
        while True:
            attempt += 1
            try:
                response: httpx.Response | Exception = await self._http.request(
                    method, path, **kwargs
                )
            except httpx.TransportError as exc:
                response = exc
            outcome = self._answer(response, attempt, f"{method} {path}")
            if isinstance(outcome, dict):
                return outcome
            await asyncio.sleep(outcome)


def _error(response: httpx.Response, attempts: int) -> RankerError:
    status = response.status_code
    try:
        error = orjson.loads(response.content)["error"]
        field, message = error.get("field"), str(error.get("message"))
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        field, message = None, response.text[:500] or response.reason_phrase
    kind: type[RankerError]
    if status == 503:
        kind = RankerUnavailable
    elif status >= 500:
        kind = RankerServerError
    else:
        kind = RequestRejected
    return kind(message, status=status, field=field, attempts=attempts)
