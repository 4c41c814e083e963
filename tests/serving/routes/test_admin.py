"""Admin endpoints: auth refusals, config validation and storage, reloads, tampered models."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from ranker.registry import MODEL_FILE
from serving.settings import Settings
from tests.serving.conftest import AUTH, TOKEN, Served, republish, sample, serve, wait_for

pytestmark = pytest.mark.anyio

ENDPOINTS = [("GET", "/experiments"), ("PUT", "/experiments"), ("POST", "/models/reload")]


def config_doc(version: str = "v0001", **overrides: Any) -> dict[str, Any]:
    doc = {
        "salt": "s1",
        "default": {
            "model": {"name": "ranker", "version": version},
            "score": {"formula": "weighted_sum", "weights": {"click": 1.0}},
        },
        "layers": [
            {
                "name": "models",
                "buckets": 10,
                "variants": [
                    {
                        "name": "treatment",
                        "buckets": [0, 5],
                        "model": {"name": "ranker", "version": "v0002"},
                    }
                ],
            }
        ],
    }
    doc.update(overrides)
    return doc


async def request(served: Served, method: str, path: str, **kwargs: Any) -> Any:
    return await served.client.request(method, path, **kwargs)


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
async def test_auth_refusals(settings: Settings, method: str, path: str) -> None:
    async with serve(settings) as served:
        missing = await request(served, method, path, json=config_doc())
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == "Bearer"
        assert missing.json()["error"]["field"] == "authorization"
        scheme = await request(served, method, path, headers={"Authorization": f"Basic {TOKEN}"})
        assert scheme.status_code == 401
        wrong = await request(served, method, path, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 403
        assert wrong.json()["error"]["message"] == "invalid token"
        prefix = await request(
            served, method, path, headers={"Authorization": f"Bearer {TOKEN[:-1]}"}
        )
        assert prefix.status_code == 403
    async with serve(replace(settings, admin_token=None)) as served:
        disabled = await request(served, method, path, headers=AUTH)
        assert disabled.status_code == 403
        assert "RANKER_ADMIN_TOKEN" in disabled.json()["error"]["message"]


async def test_get_and_put_experiments(settings: Settings, body: dict[str, Any]) -> None:
    async with serve(settings) as served:
        current = await served.client.get("/experiments", headers=AUTH)
        assert current.status_code == 200
        assert current.headers["etag"] == '"1"'
        assert current.json()["default"]["model"] == {"name": "ranker", "version": "v0002"}

        put = await served.client.put("/experiments", json=config_doc(), headers=AUTH)
        assert put.status_code == 200, put.text
        assert put.json()["version"] == 2
        assert sorted(m["model"] for m in put.json()["models"]) == ["ranker/v0001", "ranker/v0002"]
        # served at once, without waiting for a poll
        ranked = await served.client.post("/rank", json=body)
        assert ranked.json()["experiment"]["layers"][0]["layer"] == "models"
        # and stored: the file now holds version 2
        assert settings.experiments_file is not None
        stored = yaml.safe_load(Path(settings.experiments_file).read_text())
        assert stored["version"] == 2 and stored["salt"] == "s1"

        stale = await served.client.put(
            "/experiments", json=config_doc(), headers={**AUTH, "If-Match": '"1"'}
        )
        assert stale.status_code == 409
        assert stale.json()["error"]["field"] == "if-match"
        fresh = await served.client.put(
            "/experiments", json=config_doc(), headers={**AUTH, "If-Match": '"2"'}
        )
        assert fresh.status_code == 200 and fresh.json()["version"] == 3


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        (config_doc(version="v0099"), "default.model.version"),
        (
            config_doc(layers=[{"name": "m", "buckets": 2, "variants": [{"name": "t", "buckets": [0, 1], "model": {"name": "ranker", "version": "v0042"}}]}]),
            "layers.m.t.model.version",
        ),
        (config_doc(version="latest", salt=""), "salt"),
        (config_doc(layers="x"), "layers"),
        (config_doc(extra=1), "config.extra"),
        (
            config_doc(default={"model": {"name": "ranker", "version": "v0001"}, "score": {"weights": {"likes": 1.0}}}),
            "default.score",
        ),
        (
            config_doc(default={"model": {"name": "ranker", "version": "v0001"}, "score": {"weights": {"click": -1}}}),
            "default.score.weights.click",
        ),
        (config_doc(default={"model": {"name": "nomodel", "version": "latest"}}), "default.model.version"),
    ],
    ids=["missing default model", "missing variant model", "empty salt", "layers type",
         "unknown field", "unknown task", "negative weight", "latest of nothing"],
)  # fmt: skip
async def test_put_rejects_invalid_configs_naming_the_field(
    settings: Settings, doc: dict[str, Any], field: str
) -> None:
    async with serve(settings) as served:
        response = await served.client.put("/experiments", json=doc, headers=AUTH)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["field"] == field, response.json()
        # nothing changed
        assert served.service.manager.state.config.version == 1
    assert settings.experiments_file is not None
    assert yaml.safe_load(Path(settings.experiments_file).read_text())["version"] == 1


async def test_put_bad_json_and_if_match(settings: Settings) -> None:
    async with serve(settings) as served:
        response = await served.client.put("/experiments", content=b"{", headers=AUTH)
        assert response.status_code == 400
        response = await served.client.put(
            "/experiments", json=config_doc(), headers={**AUTH, "If-Match": "abc"}
        )
        assert response.status_code == 422 and response.json()["error"]["field"] == "if-match"


async def test_packaged_default_is_read_only(settings: Settings) -> None:
    async with serve(replace(settings, experiments_file=None)) as served:
        response = await served.client.put("/experiments", json=config_doc(), headers=AUTH)
        assert response.status_code == 503
        assert "read-only" in response.json()["error"]["message"]
        assert served.service.manager.state.config.version == 1


async def test_packaged_default_has_experiments_off(
    settings: Settings, body: dict[str, Any]
) -> None:
    """One arm: no live test ships by default (the demo and the tests write their own)."""
    async with serve(replace(settings, experiments_file=None)) as served:
        assert served.service.manager.state.config.layers == ()
        doc = (await served.client.post("/rank", json=body)).json()
        assert doc["experiment"]["layers"] == [] and doc["model_version"] == "ranker/v0002"


async def test_reload_picks_up_a_new_publish(settings: Settings, body: dict[str, Any]) -> None:
    async with serve(replace(settings, poll_interval_s=60)) as served:
        before = (await served.client.post("/rank", json=body)).json()["model_version"]
        assert before == "ranker/v0002"
        republish(settings.registry, "v0002")  # `latest` is now v0003
        reload = await served.client.post("/models/reload", headers=AUTH)
        assert reload.status_code == 200, reload.text
        assert [m["model"] for m in reload.json()["models"]] == ["ranker/v0003"]
        after = (await served.client.post("/rank", json=body)).json()["model_version"]
        assert after == "ranker/v0003"


async def test_tampered_model_is_refused_and_old_state_kept(
    settings: Settings, body: dict[str, Any]
) -> None:
    async with serve(replace(settings, poll_interval_s=60)) as served:
        state = served.service.manager.state
        served_file = settings.registry / "ranker" / "v0002" / MODEL_FILE
        served_file.write_bytes(served_file.read_bytes() + b"\0")

        reload = await served.client.post("/models/reload", headers=AUTH)
        assert reload.status_code == 503
        error = reload.json()["error"]
        assert error["field"] == "default.model"
        assert "sha256 mismatch" in error["message"]
        assert served.service.manager.state is state  # nothing swapped
        ranked = await served.client.post("/rank", json=body)
        assert ranked.status_code == 200 and ranked.json()["model_version"] == "ranker/v0002"
        ready = (await served.client.get("/readyz")).json()
        assert ready["ready"] and "sha256 mismatch" in ready["rejected"]
        metrics = (await served.client.get("/metrics")).text
        assert sample(metrics, "ranker_config_rejected") == 1

        # A config naming a tampered version not yet loaded is refused at PUT, naming the field.
        # (v0002's session is reused as loaded: it was built from the bytes that were verified.)
        other = settings.registry / "ranker" / "v0001" / MODEL_FILE
        other.write_bytes(other.read_bytes()[:-1])
        put = await served.client.put("/experiments", json=config_doc(), headers=AUTH)
        assert put.status_code == 422
        assert put.json()["error"]["field"] == "default.model"
        assert "sha256 mismatch" in put.json()["error"]["message"]
        assert served.service.manager.state is state


async def test_tampered_model_at_start_up_is_not_served(settings: Settings) -> None:
    served_file = settings.registry / "ranker" / "v0002" / MODEL_FILE
    served_file.write_bytes(b"not an onnx model")
    async with serve(settings) as served:
        ready = await served.client.get("/readyz")
        assert ready.status_code == 503
        assert "sha256 mismatch" in ready.json()["reason"]
        response = await served.client.post("/rank", json={"request_id": "x"})
        assert response.status_code == 503
        assert "not ready" in response.json()["error"]["message"]


async def test_file_store_serves_a_new_publish_without_reload(
    settings: Settings, body: dict[str, Any]
) -> None:
    # The default config names version `latest`: the poll notices the publish on its own.
    async with serve(settings) as served:
        republish(settings.registry, "v0002")
        manager = served.service.manager
        await wait_for(lambda: "ranker/v0003" in {str(r) for r in manager.state.models})
        ranked = await served.client.post("/rank", json=body)
        assert ranked.json()["model_version"] == "ranker/v0003"
