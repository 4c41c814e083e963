"""The naive peer: the same model served the way a first version usually is.

    python -m benchmarks.serving.naive_peer PORT MODEL_DIR

FastAPI with a pydantic request model and a returned dict (FastAPI's default JSON path), PyTorch
eager, and the user + context features repeated on every candidate row (no user-side-once graph).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from ranker.features import FeatureEncoder
from ranker.models import build_model
from ranker.registry import verify
from ranker.scoring import DEFAULT_FORMULA, rank_order, score


class RankRequest(BaseModel):
    request_id: str
    user: dict[str, Any]
    context: dict[str, Any] = {}
    candidates: list[dict[str, Any]]
    top_k: int | None = None


def create_app(model_dir: Path) -> FastAPI:
    manifest = verify(model_dir)
    spec = manifest.spec()
    model = build_model(manifest.model_kind, spec, manifest.task_names, manifest.hparams["config"])
    model.load_state_dict(torch.load(model_dir / "state.pt", weights_only=True))
    model.eval()
    encoder = FeatureEncoder(spec)
    app = FastAPI()

    @app.post("/rank")
    def rank(request: RankRequest) -> dict[str, Any]:
        rows = [{**request.user, **request.context, **c} for c in request.candidates]
        columns = {name: [row.get(name) for row in rows] for name in spec.names}
        inputs = {k: torch.from_numpy(v) for k, v in encoder.encode(columns, len(rows)).items()}
        with torch.inference_mode():
            predictions = {t: v.numpy() for t, v in model(inputs).items()}
        scores = score(DEFAULT_FORMULA, predictions)
        order = rank_order(scores)[: request.top_k]
        items = [
            {
                "item_id": rows[i]["item_id"],
                "score": float(scores[i]),
                "predictions": {t: float(v[i]) for t, v in predictions.items()},
            }
            for i in order
        ]
        return {"request_id": request.request_id, "model_version": manifest.version, "items": items}

    return app


if __name__ == "__main__":
    torch.set_num_threads(2)
    uvicorn.run(
        create_app(Path(sys.argv[2])), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning"
    )
