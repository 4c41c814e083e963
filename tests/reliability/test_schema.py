"""Schemathesis against the service's own OpenAPI schema, in-process (ASGI app, real lifespan,
real ONNX Runtime): examples, coverage and fuzzing phases with positive and negative data (the
stateful phase has nothing to chain: the schema declares no links, and the engine says so).

Every response must be non-5xx, of a documented status and media type, and match its schema;
schema-violating input must be refused with a 4xx. Admin endpoints are fuzzed with the token
(so the config and reload paths are reached) and without it, where every answer is 401/403.

`make test` runs 50 examples per operation; `make test-slow` runs 500 with another seed
(RANKER_FUZZ_EXAMPLES, RANKER_FUZZ_SEED).
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import pytest

from ranker.registry import MODEL_FILE
from serving.app import create_app
from serving.settings import Settings
from tests.reliability import fuzz
from tests.serving.conftest import AUTH, TOKEN, serve

pytestmark = pytest.mark.filterwarnings(
    # hypothesis warns while printing a large falsifying example; the failure itself is reported
    "ignore:Generating overly large repr"
)
DEFAULT_EXAMPLES, SLOW_EXAMPLES = 50, int(os.environ.get("RANKER_FUZZ_EXAMPLES", "500"))
DEADLINE_S = 240.0


# Bugs reported to the lead, each pinned by a deterministic xfail(strict) test below. The fuzz
# runs set aside problems whose report contains the signature (and print them), so whether a
# seed happens to hit a known bug never decides the outcome. Fixing one: drop its xfail and its
# entry here.
KNOWN_BUGS: dict[str, str] = {}
OPERATIONS = [
    ("POST", "/rank"),
    ("GET", "/livez"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/experiments"),
    ("PUT", "/experiments"),
    ("POST", "/models/reload"),
]
IDS = [f"{method} {path}" for method, path in OPERATIONS]


def limited(settings: Settings) -> Settings:
    return replace(settings, max_candidates=50, max_body_bytes=64 * 1024)


def check(outcome: fuzz.Outcome, known: str | None = None) -> None:
    print(outcome.report())
    unexpected = [p for p in outcome.problems if known is None or known not in p]
    assert not unexpected, outcome.report()
    assert outcome.total > 0


def conforms(settings: Settings, method: str, path: str, examples: int, seed: int) -> None:
    app = create_app(limited(settings))
    cfg = fuzz.config(examples, AUTH, seed=seed)
    outcome = fuzz.run(app, cfg, DEADLINE_S, method=method, path=path)
    check(outcome, KNOWN_BUGS.get(f"{method} {path}"))


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=IDS)
def test_api_conforms(settings: Settings, method: str, path: str) -> None:
    conforms(settings, method, path, DEFAULT_EXAMPLES, seed=8)


@pytest.mark.slow
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=IDS)
def test_api_conforms_long(settings: Settings, method: str, path: str) -> None:
    conforms(
        settings, method, path, SLOW_EXAMPLES, seed=int(os.environ.get("RANKER_FUZZ_SEED", "80"))
    )


@pytest.mark.parametrize(
    ("token", "headers", "status"),
    [
        (TOKEN, {}, 401),
        (TOKEN, {"Authorization": f"Basic {TOKEN}"}, 401),
        (TOKEN, {"Authorization": "Bearer not-the-token"}, 403),
        (TOKEN, {"Authorization": f"Bearer {TOKEN}x"}, 403),
        (None, AUTH, 403),  # no token configured: admin is off for everybody
    ],
    ids=["missing", "wrong-scheme", "wrong-token", "token-prefix", "admin-disabled"],
)
def test_admin_refuses_without_the_token(
    settings: Settings, token: str | None, headers: dict[str, str], status: int
) -> None:
    app = create_app(replace(limited(settings), admin_token=token))
    outcome = fuzz.run(app, fuzz.config(20, headers, seed=9), DEADLINE_S, tag="admin")
    check(outcome)
    assert set(outcome.statuses) <= {status, 405}, outcome.report()  # 405: methods not routed
    assert outcome.statuses[status] > 0
    service: Any = app.state.service
    assert service.manager.status.swaps == 1  # nothing got through: the start-up state only


# -- statuses schemathesis cannot reach: a service that is not ready, a body over the limit -------
def documented(app: Any, method: str, path: str) -> set[int]:
    return {int(code) for code in app.openapi()["paths"][path][method.lower()]["responses"]}


@pytest.mark.anyio
async def test_not_ready_statuses_are_documented(settings: Settings) -> None:
    served_file = settings.registry / "ranker" / "v0002" / MODEL_FILE
    served_file.write_bytes(b"tampered")
    async with serve(settings) as served:
        for method, path in [("POST", "/rank"), ("GET", "/experiments"), ("GET", "/readyz")]:
            response = await served.client.request(method, path, json={}, headers=AUTH)
            assert response.status_code == 503
            assert 503 in documented(served.app, method, path), f"{method} {path}"


@pytest.mark.anyio
async def test_body_limit_status_is_documented(settings: Settings) -> None:
    big = b'{"salt": "' + b"x" * (64 * 1024) + b'"}'
    async with serve(limited(settings)) as served:
        for method, path in [("POST", "/rank"), ("PUT", "/experiments")]:
            response = await served.client.request(method, path, content=big, headers=AUTH)
            assert response.status_code == 413
            assert 413 in documented(served.app, method, path), f"{method} {path}"


# -- the known bugs, deterministically -------------------------------------------------------------
@pytest.mark.anyio
async def test_context_null_is_refused_or_documented(
    settings: Settings, body: dict[str, Any]
) -> None:
    async with serve(settings) as served:
        response = await served.client.post("/rank", json={**body, "context": None})
        context = served.app.openapi()["components"]["schemas"]["RankRequest"]["properties"]
        nullable = {"type": "null"} in context["context"].get("anyOf", [])
        assert nullable if response.status_code == 200 else response.status_code == 422


@pytest.mark.anyio
async def test_metrics_media_type_is_documented(settings: Settings) -> None:
    async with serve(settings) as served:
        response = await served.client.get("/metrics")
        media = response.headers["content-type"].split(";")[0]
        content = served.app.openapi()["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
        assert media in content


@pytest.mark.anyio
@pytest.mark.parametrize(
    "layers", [True, 7, 1.5, [{"name": "a", "buckets": 10, "variants": 3}]], ids=str
)
async def test_config_with_layers_not_a_list_is_refused(settings: Settings, layers: Any) -> None:
    doc = {"salt": "s", "default": {"model": {"name": "ranker", "version": "v0001"}}}
    async with serve(settings) as served:
        put = await served.client.put("/experiments", json={**doc, "layers": layers}, headers=AUTH)
        assert put.status_code == 422 and put.json()["error"]["field"].startswith("layers")
