"""One /rank request against one serving state: assign, build columns, encode, one ONNX run,
score, sort, cut, and the impression record of what was served.

Pure computation on an immutable state (no I/O), so `rank` runs inline on the event loop: a thread
hop would cost more than it frees on two cores. A state with dynamic batching on (a version with
a RequestBatcher, serving/models.py) is ranked by `rank_batched`, the same steps with the ONNX run
awaited: it happens on a thread, in one run with the requests that arrived meanwhile. Errors are
ApiErrors: 422 for input the model's feature spec refuses, 503 when the model itself fails (the
caller keeps serving; a failed batch fails each of its requests alike).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ranker.experiments import Assignment
from ranker.features import Ragged
from ranker.schema import SpecError
from ranker.scoring import ScoreError, rank_order, score
from serving.columns import item_columns, user_columns
from serving.errors import ApiError, bad_request, split_field
from serving.impressions import now_ms
from serving.models import LoadedModel
from serving.parsing import RankRequest
from serving.served_features import ServedFeatures
from serving.state import ServingState

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
    # perf_counter at the ONNX call's start (the tracer's `ort` span; serving.tracing).
    onnx_started: float
    item_ids: list[Any]  # of the returned items, best first
    # The impression record: numpy arrays (and the served features) are serialised later, by
    # the impression writer thread, after the response is sent.
    impression: dict[str, Any]


Feeds = dict[str, np.ndarray]


def rank(state: ServingState, request: RankRequest, log_features: bool = False) -> RankResult:
    assignment, model, items, user, item = encode(state, request)
    user.update(item)  # one run takes both groups
    started = time.perf_counter()
    try:
        predictions = model.predict(user)
    except Exception as exc:  # ORT's own exception types; the service must keep serving
        raise model_failed(model, assignment, exc) from None
    return finish(request, assignment, model, items, predictions, started, log_features)


async def rank_batched(
    state: ServingState, request: RankRequest, log_features: bool = False
) -> RankResult:
    """`rank` for a state that batches: a version with a batcher awaits its share of a batch's
    run (`onnx_seconds` then counts the wait for the batch too), any other runs inline."""
    assignment, model, items, user, item = encode(state, request)
    started = time.perf_counter()
    try:
        if model.batcher is None:
            user.update(item)
            predictions = model.predict(user)
        else:
            predictions = await model.predict_batched(user, item)
    except Exception as exc:  # the whole batch's error, told to each of its requests
        raise model_failed(model, assignment, exc) from None
    return finish(request, assignment, model, items, predictions, started, log_features)


def encode(
    state: ServingState, request: RankRequest
) -> tuple[Assignment, LoadedModel, dict[str, Any], Feeds, Feeds]:
    """The user's variant and model, the item columns, and the user and item feeds."""
    assignment = state.config.assign(request.user_id)
    model = state.models[assignment.model]
    users = user_columns(request, model.kinds)
    items = item_columns(request, model.kinds)
    try:
        user = model.encoder.encode_group("user", users, 1)
        item = model.encoder.encode_group("item", items, request.size)
    except SpecError as exc:  # a value the type checks let through but the encoder refuses
        field, message = split_field(str(exc), "candidates")
        raise bad_request(field, message) from None
    return assignment, model, items, user, item


def model_failed(model: LoadedModel, assignment: Assignment, exc: Exception) -> ApiError:
    log.exception(
        "model %s failed",
        model.ref,
        extra={"model_version": str(model.ref), "variant": assignment.label},
        exc_info=exc,
    )
    return ApiError(503, None, f"model {model.ref} failed: {exc}")


def finish(
    request: RankRequest,
    assignment: Assignment,
    model: LoadedModel,
    items: dict[str, Any],
    predictions: Mapping[str, np.ndarray],
    started: float,
    log_features: bool,
) -> RankResult:
    """Score, sort, cut, and the impression record, once the predictions are in."""
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
    ids = request.item_ids
    item_ids = [ids[i] for i in order.tolist()]
    scores = scores[order]
    predictions = {task: values[order] for task, values in predictions.items()}
    record = impression_record(request, assignment, model, item_ids, scores, predictions)
    if log_features:
        record["positions"] = np.arange(len(item_ids))
        record["features"] = ServedFeatures(
            request.user, request.context, served(items, request), order
        )
    return RankResult(
        request=request,
        assignment=assignment,
        model=model,
        order=order,
        scores=scores,
        predictions=predictions,
        onnx_seconds=onnx_seconds,
        onnx_started=started,
        item_ids=item_ids,
        impression=record,
    )


def served(items: dict[str, Any], request: RankRequest) -> dict[str, Any]:
    """The item columns to log: the encoder's arrays, but a list column as the request gave it
    (lists, not the flattened `Ragged` the encoder took): gathering 500 lists in served order
    costs 13 us, cutting them back out of a Ragged 77 us."""
    return {
        name: request.items[name] if isinstance(column, Ragged) else column
        for name, column in items.items()
    }


def impression_record(
    request: RankRequest,
    assignment: Assignment,
    model: LoadedModel,
    item_ids: list[Any],
    scores: np.ndarray,
    predictions: dict[str, np.ndarray],
) -> dict[str, Any]:
    """What was served, for the impression log (numpy arrays are serialised later, after the
    response is sent)."""
    return {
        "request_id": request.request_id,
        "user_id": request.user_id,
        "ts": now_ms(),
        "model": model.ref.name,
        "model_version": model.ref.version,
        "variant": assignment.label,
        "layers": experiment_doc(assignment)["layers"],
        "item_ids": item_ids,
        "scores": scores,
        "predictions": predictions,
    }


def experiment_doc(assignment: Assignment) -> dict[str, Any]:
    """The response's `experiment` (and the record's `layers`): the layers the user landed in."""
    return {
        "label": assignment.label,
        "layers": [
            {"layer": layer, "bucket": bucket, "variant": variant}
            for layer, bucket, variant in assignment.layers
        ],
    }
