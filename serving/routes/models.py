"""Model metadata: `GET /models` and `GET /models/{name}/{version}`.

What a client needs to build a request without reading our code (what Triton and KServe answer at
`/v2/models/{name}`): features with sides, kinds and defaults, input names, tasks in output order,
request limits, offline metrics and the provider the session runs on.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from starlette.responses import Response

from ranker.experiments import ExperimentConfig, ModelRef
from ranker.registry import RegistryError, list_versions, model_path, verify
from ranker.schema import Feature, FeatureSpec
from serving.deps import ServiceDep, json_response
from serving.errors import ApiError
from serving.models import LoadedModel
from serving.parsing.form import MAX_REQUEST_ID
from serving.schemas import ErrorResponse
from serving.settings import Settings

router = APIRouter(tags=["models"])
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "no such model version"}
}


@router.get("/models", summary="Models served now, and the versions the registry holds")
async def list_models(service: ServiceDep) -> Response:
    state = service.manager.state
    if state is None:
        raise ApiError(503, None, f"not ready: {service.manager.not_ready_reason}")
    registry = service.settings.registry
    names = sorted({ref.name for ref in state.models})
    published = await asyncio.to_thread(
        lambda: {name: list_versions(registry, name) for name in names}
    )
    usage = served_by(state.config)
    return json_response(
        {
            "config_version": state.config.version,
            "models": [
                {
                    "model": str(ref),
                    "name": ref.name,
                    "version": ref.version,
                    "provider": model.provider,
                    "tasks": list(model.tasks),
                    "served_by": usage.get(ref, []),
                    "metadata": f"/models/{ref.name}/{ref.version}",
                }
                for ref, model in state.models.items()
            ],
            "registry": published,
        }
    )


@router.get(
    "/models/{name}/{version}",
    summary="One model version: features, inputs, tasks, limits, offline metrics, provider",
    description="A version the registry holds but nobody serves is answered from its verified "
    "manifest, with `serving: false` and no provider.",
    responses=NOT_FOUND,
)
async def get_model(name: str, version: str, service: ServiceDep) -> Response:
    ref = ModelRef(name, version)
    state = service.manager.state
    loaded = state.models.get(ref) if state is not None else None
    if loaded is not None:
        assert state is not None
        return json_response(describe(loaded, service.settings, served_by(state.config)))
    try:
        path = model_path(service.settings.registry, name, version)
        manifest = await asyncio.to_thread(verify, path.parent)
    except RegistryError as exc:
        raise ApiError(404, "version", str(exc)) from None
    doc = manifest_doc(manifest.spec(), manifest.to_dict(), service.settings)
    return json_response({"model": str(ref), "serving": False, "provider": None, **doc})


def served_by(config: ExperimentConfig) -> dict[ModelRef, list[str]]:
    """Where the config routes to each model: `default`, or `layer=variant`."""
    usage: dict[ModelRef, list[str]] = {config.default_model: ["default"]}
    for layer in config.layers:
        for variant in layer.variants:
            if variant.model is not None:
                usage.setdefault(variant.model, []).append(f"{layer.name}={variant.name}")
    return usage


def describe(
    model: LoadedModel, settings: Settings, usage: dict[ModelRef, list[str]]
) -> dict[str, Any]:
    return {
        "model": str(model.ref),
        "serving": True,
        "served_by": usage.get(model.ref, []),
        "provider": model.provider,
        "requested_providers": list(model.requested),
        "fallback": model.fallback,
        **manifest_doc(model.encoder.spec, model.manifest.to_dict(), settings),
    }


def manifest_doc(spec: FeatureSpec, manifest: dict[str, Any], settings: Settings) -> dict[str, Any]:
    return {
        "name": manifest["name"],
        "version": manifest["version"],
        "created_at": manifest["created_at"],
        "sha256": manifest["sha256"],
        "parent": manifest["parent"],
        "model_kind": manifest["model_kind"],
        "features": [feature_doc(f) for f in spec.features],
        "inputs": manifest["inputs"],
        "tasks": [
            {**task, "output": output}
            for task, output in zip(manifest["tasks"], manifest["outputs"], strict=True)
        ],
        "limits": {
            "max_candidates": settings.max_candidates,
            "max_body_bytes": settings.max_body_bytes,
            "request_id_max_length": MAX_REQUEST_ID,
        },
        "data_window": manifest["data_window"],
        "metrics": manifest["metrics"],
    }


def feature_doc(feature: Feature) -> dict[str, Any]:
    """Where the feature goes in a request, its kind and what a missing value becomes."""
    doc: dict[str, Any] = {
        "name": feature.name,
        "side": feature.side,
        "request_field": _field(feature),
        "kind": feature.kind,
        "default": feature.default,
    }
    if feature.kind != "dense":
        doc["buckets"] = feature.buckets
    if feature.kind == "multi_categorical":
        doc["max_len"] = feature.max_len
    if feature.kind == "dense":
        doc["transform"] = feature.transform
    return doc


def _field(feature: Feature) -> str:
    return {"user": "user", "context": "context", "item": "candidates[]"}[feature.side] + (
        "." + feature.name
    )
