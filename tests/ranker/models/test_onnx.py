"""The inference model exports to ONNX with a dynamic candidate axis and matches PyTorch."""

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from ranker.models import build_model
from ranker.tasks import build_tasks

CONFIGS = {
    "mmoe": {"num_experts": 4, "expert_units": [32, 16], "feeds": {"completion": "click"}},
    "ple": {"num_levels": 2, "expert_units": [32, 16], "feeds": {"completion": "click"}},
    "mmoe+dot": {"num_experts": 4, "expert_units": [32, 16], "interactions": "dot"},
    "ple+dot": {"num_levels": 2, "expert_units": [32, 16], "interactions": "dot"},
    "mmoe+dot+factors": {
        "num_experts": 4,
        "expert_units": [32, 16],
        "interactions": "dot",
        "factor_rank": 3,
        "feeds": {"completion": "click"},
    },
}
# Per-variant task losses; several raw outputs still export as one watch_time output in seconds.
LOSSES = {
    "ple": {"watch_time": "ziln"},
    "mmoe+dot": {"watch_time": "zi_gamma"},
    "mmoe+dot+factors": {"watch_time": "zi_gamma", "completion": "zi_bce"},
}


@pytest.mark.filterwarnings("ignore::FutureWarning")  # pytree deprecation inside torch.export
@pytest.mark.parametrize("variant", sorted(CONFIGS))
def test_onnx_matches_torch(variant: str, spec, make_inputs, tmp_path: Path) -> None:
    tasks = build_tasks(losses=LOSSES.get(variant))
    config = {"embedding_dim": 8, **CONFIGS[variant]}
    model = build_model(variant.split("+")[0], spec, tasks, config).eval()
    example = make_inputs(spec, 1, 5)
    n = torch.export.Dim("n")  # candidates; user inputs keep batch 1
    dynamic = {k: ({0: n} if k.startswith("item_") else None) for k in example}
    path = tmp_path / "model.onnx"
    torch.onnx.export(
        model,
        (),
        kwargs={"inputs": example},
        f=path,
        dynamo=True,
        opset_version=18,
        input_names=model.input_names,
        output_names=list(model.task_names),
        dynamic_shapes={"inputs": dynamic},
        verbose=False,
    )
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == model.input_names
    assert [o.name for o in session.get_outputs()] == ["click", "watch_time", "completion"]
    for rows in (1, 37):
        x = make_inputs(spec, 1, rows, seed=rows)
        got = session.run(None, {k: v.numpy() for k, v in x.items()})
        with torch.no_grad():
            want = model(x)
        for name, value in zip(model.task_names, got, strict=True):
            assert value.shape == (rows,)
            np.testing.assert_allclose(value, want[name].numpy(), rtol=0, atol=1e-4)
