"""The floor: the same FastAPI + uvicorn stack parsing the /rank body and answering without a model.

    python -m benchmarks.serving.floor_app PORT

It parses the body with orjson, reads every candidate's item id and answers a ranked list of the
same shape as /rank (item id, score, three predictions) with made-up numbers: the cost of HTTP +
JSON in and out that any /rank must pay.
"""

from __future__ import annotations

import sys

import numpy as np
import orjson
import uvicorn
from fastapi import FastAPI, Request, Response


def create_app() -> FastAPI:
    app = FastAPI()

    @app.post("/rank")
    async def rank(request: Request) -> Response:
        body = orjson.loads(await request.body())
        ids = [c["item_id"] for c in body["candidates"]]
        n = len(ids)
        scores = np.linspace(1.0, 0.0, n)
        items = [
            {
                "item_id": i,
                "score": s,
                "predictions": {"click": s, "watch_time": s, "completion": s},
            }
            for i, s in zip(ids, scores.tolist(), strict=True)
        ]
        payload = {"request_id": body["request_id"], "model_version": "floor", "items": items}
        return Response(orjson.dumps(payload), media_type="application/json")

    return app


if __name__ == "__main__":
    uvicorn.run(create_app(), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
