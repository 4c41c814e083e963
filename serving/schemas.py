"""Response, error and experiment-config shapes for the OpenAPI docs only.

The handlers build their answers as bytes and never validate with these models. The /rank
request's schema is written beside its parser's limits (serving/openapi.py): serving/parsing
holds the one request contract.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class RankedItem(BaseModel):
    item_id: str | int
    score: float
    predictions: dict[str, float] = Field(description="task -> prediction in natural units")


class LayerAssignment(BaseModel):
    layer: str
    bucket: int
    variant: str | None = Field(description="null: the user is in no variant of this layer")


class Experiment(BaseModel):
    label: str = Field(description="all layers in one string, e.g. `models=treatment,weights=-`")
    layers: list[LayerAssignment]


class RankResponse(BaseModel):
    request_id: str
    model_version: str = Field(description="`name/version` of the model that scored")
    experiment: Experiment
    items: list[RankedItem] = Field(description="best first, cut to top_k")


class ErrorBody(BaseModel):
    field: str | None = Field(description="the offending input, e.g. `candidates[3].item_id`")
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class ExperimentDocument(BaseModel):
    """An experiment config (see ranker/experiments.py); `version` is assigned by the store."""

    model_config = ConfigDict(extra="allow")
    version: int | None = None
    salt: str
    default: dict[str, Any]
    layers: list[dict[str, Any]] = Field(default_factory=list)


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "malformed JSON",
        413: "body over RANKER_MAX_BODY_BYTES",
        415: "Content-Type is not application/json",
        422: "a field is missing, unknown, of the wrong type or value (named in `error.field`)",
        503: "not ready, or the model failed; the last good state keeps serving",
    }.items()
}
ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    401: {"model": ErrorResponse, "description": "missing bearer token"},
    403: {"model": ErrorResponse, "description": "wrong token, or no admin token configured"},
    409: {"model": ErrorResponse, "description": "If-Match names a stale config version"},
}
