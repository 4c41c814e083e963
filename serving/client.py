"""A typed Python client for the ranker service (httpx; no torch, nothing of the server imported).

    with RankerClient("http://ranker:8000") as client:
        ranking = client.rank({"user_id": 42}, [{"item_id": 7}, {"item_id": 9}], top_k=1)
        ranking.items[0].item_id, ranking.model_version, ranking.experiment.label

Retries only what is safe to repeat: a 503 (not ready, or the model failed: nothing was served
or logged) and a connection that could not be made. A request that timed out after it was sent
is not retried, since the service may have ranked it and logged its impressions. The request id
goes in the body and in `X-Request-ID`, so the service's log line of a refused body carries it.
"""

from __future__ import annotations

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


class RankerClient:
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
        if retries < 0 or backoff_s < 0 or max_backoff_s < 0:
            raise ValueError(
                f"retries, backoff_s and max_backoff_s must be >= 0, got "
                f"{retries}, {backoff_s}, {max_backoff_s}"
            )
        headers = {"Authorization": f"Bearer {admin_token}"} if admin_token else {}
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._http = httpx.Client(
            base_url=url.rstrip("/"), timeout=timeout, headers=headers, transport=transport
        )

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
        request_id = request_id or uuid.uuid4().hex
        body: dict[str, Any] = {"request_id": request_id, "user": user, "candidates": candidates}
        if context is not None:
            body["context"] = context
        if top_k is not None:
            body["top_k"] = top_k
        content = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
        headers = {"Content-Type": "application/json", "X-Request-ID": request_id}
        return Ranking.from_json(self._call("POST", "/rank", content=content, headers=headers))

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

    # -- one call with retries -----------------------------------------------------------------
    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        for attempt in range(1, self.retries + 2):
            last = attempt > self.retries
            try:
                response = self._http.request(method, path, **kwargs)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                if last:
                    raise RankerUnavailable(
                        f"cannot connect to {self._http.base_url}: {exc}", attempts=attempt
                    ) from exc
                self._sleep(attempt, None)
                continue
            except httpx.TimeoutException as exc:
                raise RankerTimeout(
                    f"{method} {path}: {type(exc).__name__}", attempts=attempt
                ) from exc
            if response.status_code == 503 and not last:
                self._sleep(attempt, response.headers.get("retry-after"))
                continue
            if response.status_code >= 400:
                raise _error(response, attempt)
            doc: dict[str, Any] = orjson.loads(response.content)
            return doc
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _sleep(self, attempt: int, retry_after: str | None) -> None:
        """Exponential backoff with full jitter (replicas retrying together spread out); a
        Retry-After the service sends is a floor."""
        delay = random.uniform(0, min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)))
        if retry_after and retry_after.strip().isdigit():  # seconds; an HTTP date is ignored
            delay = max(delay, min(float(retry_after), self.max_backoff_s))
        time.sleep(delay)


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
