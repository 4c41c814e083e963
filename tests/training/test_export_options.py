"""Export of the model options: user x item dot interactions and multi-output watch-time losses
become one ONNX graph with the serving contract (one output per task, watch_time in seconds) and
match PyTorch in both layouts (user batch N and user batch 1 per request)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from ranker.registry import model_path
from training.config import load_config
from training.data import EncodedData
from training.export import export_run
from training.prepare import prepare_data
from training.trainer import Trainer

RUN = ["train.epochs=1", "train.batch_size=256", "train.max_steps_per_epoch=4", "train.threads=1"]
VARIANTS = {
    "mmoe": [
        "model.kind=mmoe",
        "model.config.num_experts=3",
        "tasks.losses={watch_time: zi_gamma}",
    ],
    "ple": ["model.kind=ple", "model.config.num_levels=2", "tasks.losses={watch_time: ziln}"],
}
SMALL = [
    "model.config.expert_units=[16]",
    "model.config.tower_units=[8]",
    "model.config.embedding_dim=4",
    "model.config.interactions=dot",
]


@pytest.mark.filterwarnings("ignore::FutureWarning")  # pytree deprecation inside torch.export
@pytest.mark.parametrize("kind", sorted(VARIANTS))
def test_dot_interactions_and_zero_inflated_watch_time_export_with_parity(
    kind: str, tiny_log: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    config = load_config(
        None, [*RUN, f"data.paths=[{tiny_log}]", f"out={run}", *VARIANTS[kind], *SMALL]
    )
    data = prepare_data(config)
    Trainer(config, data, run, progress=False).fit()

    manifest = export_run(run, tmp_path / "models", "ranker")
    assert list(manifest.outputs) == ["click", "watch_time", "completion"]
    assert manifest.hparams["config"]["interactions"] == "dot"
    parity = manifest.exporter["parity"]
    assert parity["per_request"]["watch_time"] <= 1e-4 and parity["rowwise"]["watch_time"] <= 1e-4

    session = ort.InferenceSession(
        model_path(tmp_path / "models", "ranker", manifest.version),
        providers=["CPUExecutionProvider"],
    )
    test: EncodedData = data.test  # type: ignore[assignment]
    request = np.flatnonzero(test.request_id == test.request_id[0])
    feeds = {
        k: np.ascontiguousarray(v[request[:1]] if k.startswith("user_") else v[request])
        for k, v in test.inputs.items()
    }
    out = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))
    assert out["watch_time"].shape == (len(request),)
    assert (out["watch_time"] >= 0).all() and np.isfinite(out["watch_time"]).all()
