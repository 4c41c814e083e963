"""POST /rank end to end: equal to offline scoring of the same rows, response shape, impressions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import torch

from ranker.experiments import ExperimentConfig
from ranker.features import FeatureEncoder
from ranker.registry import load_manifest
from ranker.scoring import rank_order, score
from serving.response import render_items
from serving.settings import Settings
from tests.serving.conftest import Built, body_of, requests_of, serve, wait_for
from training.checkpoint import BEST, load_best

pytestmark = pytest.mark.anyio


def offline(built: Built, body: dict[str, Any], config: ExperimentConfig) -> dict[str, Any]:
    """Score a body's rows the training way: one row per candidate (user features repeated),
    encoded with the manifest's spec, through the PyTorch model, ranked by ranker.scoring."""
    spec = load_manifest(built.registry / "ranker" / "v0001").spec()
    n = len(body["candidates"])
    columns: dict[str, list[Any]] = {}
    for name in spec.names:
        side = spec[name].side
        if side == "item":
            columns[name] = [c[name] for c in body["candidates"]]
        else:
            columns[name] = [body[side][name]] * n
    inputs = FeatureEncoder(spec).encode(columns, n)
    model = load_best(built.run_dir / BEST)
    with torch.no_grad():
        out = model({k: torch.from_numpy(v) for k, v in inputs.items()})
    predictions = {task: out[task].numpy().astype(np.float64) for task in model.task_names}
    formula = config.assign(body["user"]["user_id"]).score
    scores = score(formula, predictions)
    order = rank_order(scores)
    return {
        "item_ids": [body["candidates"][i]["item_id"] for i in order],
        "scores": scores[order],
        "predictions": {t: p[order] for t, p in predictions.items()},
    }


async def test_ranking_equals_offline_scoring(
    built: Built, settings: Settings, log_rows: list[dict[str, Any]]
) -> None:
    requests = list(requests_of(log_rows).values())[:6]
    async with serve(settings) as served:
        config = served.service.manager.state.config
        for i, rows in enumerate(requests):
            body = body_of(rows, request_id=f"offline-{i}")
            response = await served.client.post("/rank", json=body)
            assert response.status_code == 200, response.text
            got = response.json()
            want = offline(built, body, config)
            items = got["items"]
            assert len(items) == len(body["candidates"])
            np.testing.assert_allclose([x["score"] for x in items], want["scores"], atol=1e-5)
            for task, values in want["predictions"].items():
                served_values = [x["predictions"][task] for x in items]
                np.testing.assert_allclose(served_values, values, rtol=1e-4, atol=1e-5)
            # Same order, up to candidates whose scores tie within float noise.
            scores = np.array([x["score"] for x in items])
            for pos, (mine, theirs) in enumerate(
                zip([x["item_id"] for x in items], want["item_ids"], strict=True)
            ):
                if mine != theirs:
                    assert abs(scores[pos] - want["scores"][pos]) < 1e-5
            assert got["request_id"] == body["request_id"]
            assert got["model_version"] == "ranker/v0002"  # `latest` resolved at load


async def test_response_shape_top_k_and_experiment(
    settings: Settings, body: dict[str, Any]
) -> None:
    async with serve(settings) as served:
        response = await served.client.post("/rank", json={**body, "top_k": 3})
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        doc = response.json()
        assert set(doc) == {"request_id", "model_version", "experiment", "items"}
        assert len(doc["items"]) == 3
        scores = [x["score"] for x in doc["items"]]
        assert scores == sorted(scores, reverse=True)
        for item in doc["items"]:
            assert set(item) == {"item_id", "score", "predictions"}
            assert list(item["predictions"]) == ["click", "watch_time", "completion"]
            assert 0 <= item["predictions"]["click"] <= 1
            assert item["predictions"]["watch_time"] >= 0
        (layer,) = doc["experiment"]["layers"]
        assert layer["layer"] == "weights" and 0 <= layer["bucket"] < 100
        assert layer["variant"] in ("control", "watch_heavy")
        assert doc["experiment"]["label"] == f"weights={layer['variant']}"
        # top_k above the candidate count returns them all
        response = await served.client.post("/rank", json={**body, "top_k": 1000})
        assert len(response.json()["items"]) == len(body["candidates"])


async def test_unknown_categories_and_missing_features_are_valid(
    settings: Settings, body: dict[str, Any]
) -> None:
    body["user"]["device"] = "a-device-never-seen"
    body["user"]["user_id"] = "brand-new-user"
    body["context"] = {}
    body["candidates"][0] = {"item_id": "new-item", "category": "new", "tags": ["x", 3]}
    body["candidates"][1]["tags"] = None
    body["candidates"][2]["duration"] = None
    async with serve(settings) as served:
        response = await served.client.post("/rank", json=body)
        assert response.status_code == 200, response.text
        assert "new-item" in [x["item_id"] for x in response.json()["items"]]


async def test_same_rows_alone_or_among_others_score_the_same(
    settings: Settings, body: dict[str, Any]
) -> None:
    # The user side runs once per request and is broadcast: a candidate's score cannot depend on
    # which other candidates came with it.
    async with serve(settings) as served:
        full = (await served.client.post("/rank", json=body)).json()["items"]
        alone = await served.client.post(
            "/rank", json={**body, "candidates": body["candidates"][:1]}
        )
        (item,) = alone.json()["items"]
        twin = next(x for x in full if x["item_id"] == item["item_id"])
        assert item["predictions"] == pytest.approx(twin["predictions"], abs=1e-6)


async def test_impressions_written_to_jsonl(settings: Settings, body: dict[str, Any]) -> None:
    async with serve(settings) as served:
        for i in range(3):
            response = await served.client.post(
                "/rank", json={**body, "request_id": f"imp-{i}", "top_k": 4}
            )
            assert response.status_code == 200
        await wait_for(lambda: served.service.impressions.written == 3)
        ranked = response.json()
    assert settings.impression_log is not None
    records = [
        orjson.loads(line) for line in Path(settings.impression_log).read_bytes().splitlines()
    ]
    assert [r["request_id"] for r in records] == ["imp-0", "imp-1", "imp-2"]
    last = records[-1]
    assert last["user_id"] == body["user"]["user_id"]
    assert last["model"] == "ranker" and last["model_version"] == "v0002"
    assert last["item_ids"] == [x["item_id"] for x in ranked["items"]]
    assert last["scores"] == pytest.approx([x["score"] for x in ranked["items"]])
    assert last["predictions"]["click"] == pytest.approx(
        [x["predictions"]["click"] for x in ranked["items"]]
    )
    assert last["layers"] == ranked["experiment"]["layers"]
    assert last["variant"] == ranked["experiment"]["label"]
    assert isinstance(last["ts"], int) and last["ts"] > 1_600_000_000_000


@pytest.mark.parametrize(
    "item_ids",
    [
        [5, 3, 2**62, -1],
        ["a,b", 'quote"d', "naïve ✓", "plain"],
        [7, "7,x", 2**64 - 1, "z"],
        [42],
    ],
)
def test_spliced_items_are_the_json_of_the_dict_form(item_ids: list[Any]) -> None:
    rng = np.random.default_rng(len(item_ids))
    tasks = ("click", "watch_time", "completion")
    scores = rng.random(len(item_ids)) * 1e3
    predictions = {t: rng.random(len(item_ids)).astype(np.float32) for t in tasks}
    predictions["watch_time"][0] = np.nan  # orjson's null, in both forms
    got = orjson.loads(b"[" + render_items(item_ids, scores, predictions, tasks) + b"]")
    want = [
        {
            "item_id": item_id,
            "score": float(scores[i]),
            "predictions": {t: float(predictions[t][i]) for t in tasks},
        }
        for i, item_id in enumerate(item_ids)
    ]
    want = orjson.loads(orjson.dumps(want))
    assert [list(item) for item in got] == [["item_id", "score", "predictions"]] * len(want)
    for mine, theirs in zip(got, want, strict=True):
        assert mine["item_id"] == theirs["item_id"] and mine["score"] == theirs["score"]
        assert list(mine["predictions"]) == list(tasks)
        for t in tasks:  # float32 printed in its shortest form: equal as float32
            if theirs["predictions"][t] is None:
                assert mine["predictions"][t] is None
            else:
                assert np.float32(mine["predictions"][t]) == np.float32(theirs["predictions"][t])


def test_spliced_items_of_an_empty_ranking() -> None:
    empty = np.zeros(0)
    assert render_items([], empty, {"click": empty.astype(np.float32)}, ("click",)) == b""
