"""One /rank request against one serving state: assign, encode, one ONNX run, score, sort, cut.

Pure computation on an immutable state (no I/O), so it runs inline on the event loop: a thread
hop would cost more than it frees on two cores. Errors are ApiErrors: 422 for input the model's
feature spec refuses, 503 when the model itself fails (the caller keeps serving).
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from ranker.experiments import Assignment
from ranker.schema import SpecError
from ranker.scoring import ScoreError, rank_order, score
from serving.errors import ApiError, bad_request, split_field
from serving.models import LoadedModel
from serving.state import ServingState
from serving.validation import RankRequest, item_columns, user_columns

log = logging.getLogger("ranker.serving.ranking")


@dataclass(slots=True)
class RankResult:
    request: RankRequest
    assignment: Assignment
    model: LoadedModel
    # Positions (into the request's candidates) of the returned items, best first.
    order: np.ndarray
    scores: np.ndarray  # [k] float64, best first
    predictions: dict[str, np.ndarray]  # task -> [k], best first
    onnx_seconds: float
    item_ids: list[Any]  # of the returned items, best first


def rank(state: ServingState, request: RankRequest) -> RankResult:
    assignment = state.config.assign(request.user_id)
    model = state.models[assignment.model]
    users = user_columns(request, model.kinds)
    items = item_columns(request, model.kinds)
    n = len(request.candidates)
    try:
        feeds = model.encoder.encode_group("user", users, 1)
        feeds.update(model.encoder.encode_group("item", items, n))
    except SpecError as exc:  # a value the type checks let through but the encoder refuses
        field, message = split_field(str(exc), "candidates")
        raise bad_request(field, message) from None
    started = time.perf_counter()
    try:
        predictions = model.predict(feeds)
    except Exception as exc:  # ORT's own exception types; the service must keep serving
        log.exception("model %s failed on request %s", model.ref, request.request_id)
        raise ApiError(503, None, f"model {model.ref} failed: {exc}") from None
    onnx_seconds = time.perf_counter() - started
    try:
        scores = score(assignment.score, predictions)
    except ScoreError as exc:
        raise ApiError(503, None, f"score formula: {exc}") from None
    if not np.isfinite(scores).all():
        raise ApiError(503, None, f"model {model.ref} produced non-finite scores")
    order = rank_order(scores)
    if request.top_k is not None:
        order = order[: request.top_k]
    return RankResult(
        request=request,
        assignment=assignment,
        model=model,
        order=order,
        scores=scores[order],
        predictions={task: values[order] for task, values in predictions.items()},
        onnx_seconds=onnx_seconds,
        item_ids=[request.item_ids[i] for i in order.tolist()],
    )


def experiment_doc(assignment: Assignment) -> dict[str, Any]:
    return {
        "label": assignment.label,
        "layers": [
            {"layer": layer, "bucket": bucket, "variant": variant}
            for layer, bucket, variant in assignment.layers
        ],
    }


def render(result: RankResult) -> bytes:
    """The response body: items best first with score and per-task predictions."""
    tasks = result.model.tasks
    columns = [result.predictions[t].tolist() for t in tasks]
    # map/zip build the per-item prediction dicts in C: ~2x a comprehension with dict(zip(...)).
    rows = map(dict, map(zip, itertools.repeat(tasks), zip(*columns, strict=True)))
    items = [
        {"item_id": item_id, "score": s, "predictions": p}
        for item_id, s, p in zip(result.item_ids, result.scores.tolist(), rows, strict=True)
    ]
    return orjson.dumps(
        {
            "request_id": result.request.request_id,
            "model_version": str(result.model.ref),
            "experiment": experiment_doc(result.assignment),
            "items": items,
        }
    )
