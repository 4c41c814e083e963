"""Request and response shapes for the OpenAPI docs only.

The handlers do not validate with these models: /rank parses with orjson and checks columns
against the model's feature spec (serving/validation.py), which is several times cheaper at 500
candidates and names the failing field the same way.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

Scalar = str | int | float | bool | None
FeatureValue = Scalar | list[str | int | float | bool]


class User(BaseModel):
    model_config = ConfigDict(extra="allow")
    user_id: str | int = Field(description="bucketing id; also a feature when the spec names it")


class Candidate(BaseModel):
    model_config = ConfigDict(extra="allow")
    item_id: str | int = Field(description="unique within the request")


class RankRequest(BaseModel):
    """Features sit beside the ids: `{"item_id": 7, "category": 3, "tags": [1, 2]}`. A feature
    left out (or null) takes the spec's default; a name the spec lacks is refused."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "request_id": "r-1",
                "user": {"user_id": 42, "device": "ios"},
                "context": {"hour": 20, "tab": 1},
                "candidates": [
                    {"item_id": 7, "category": 3, "tags": [1, 2], "duration": 31.5},
                    {"item_id": 9, "category": 5, "tags": [], "duration": 12.0},
                ],
                "top_k": 10,
            }
        },
    )
    request_id: str = Field(min_length=1, max_length=256)
    user: User
    context: dict[str, FeatureValue] | None = None
    candidates: list[Candidate] = Field(min_length=1, description="at most RANKER_MAX_CANDIDATES")
    top_k: int | None = Field(default=None, ge=1)


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
