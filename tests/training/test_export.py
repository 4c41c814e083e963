"""Export: a tiny trained run -> registry version whose ONNX graph matches PyTorch in both layouts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from ranker.models import REQUEST_INDEX, build_model
from ranker.onnx_model import OnnxModel
from ranker.registry import Manifest, list_versions, load_manifest, model_path, verify
from ranker.schema import FeatureSpec
from sim.simulate import SimulatorConfig, simulate
from training.checkpoint import load_best
from training.config import load_config
from training.data import EncodedData
from training.export import ExportError, check_parity, export_run, held_out_rows, to_onnx
from training.prepare import prepare_data
from training.trainer import Trainer

SMALL = ["model.config.expert_units=[16]", "model.config.tower_units=[8]"]
RUNS: dict[str, list[str]] = {
    "mmoe": ["model.kind=mmoe", "model.config.num_experts=2", *SMALL],
    # Trained with self-auxiliary heads: the export must not carry them.
    "ple": [
        "model.kind=ple",
        "model.config.num_levels=2",
        "aux.form=bottleneck",
        "aux.bottleneck_units=4",  # smaller than the [8] tower on 16 inputs, as it must be
        *SMALL,
    ],
}


@dataclass(frozen=True)
class Exported:
    run: Path
    registry: Path
    manifest: Manifest


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("log")
    config = SimulatorConfig(
        users=200, items=500, authors=50, days=3, requests_per_day=60, oracle=True
    )
    simulate(config, out)
    return out


def train(log: Path, run: Path, overrides: Sequence[str]) -> Path:
    config = load_config(
        None,
        [
            f"data.paths=[{log}]",
            "train.epochs=1",
            "train.max_steps_per_epoch=3",
            "train.batch_size=256",
            "train.threads=1",
            f"out={run}",
            *overrides,
        ],
    )
    Trainer(config, prepare_data(config), run, progress=False).fit()
    return run


@pytest.fixture(scope="session")
def exported(log_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Exported]:
    """Both runs trained once and published into one registry: mmoe v0001, then ple v0002."""
    registry = tmp_path_factory.mktemp("models")
    out: dict[str, Exported] = {}
    parent = None
    for kind, overrides in RUNS.items():
        run = train(log_dir, tmp_path_factory.mktemp(f"run_{kind}"), overrides)
        manifest = export_run(run, registry, "ranker", parent=parent)
        out[kind] = Exported(run, registry, manifest)
        parent = manifest.version
    return out


def _rows(item: Exported, rows: int = 512) -> EncodedData:
    state = torch.load(item.run / "best.pt", weights_only=True)
    spec = FeatureSpec.from_yaml(state["spec_yaml"])
    return held_out_rows(
        state["config"]["data"]["paths"], spec, state["split"]["test"], rows, False
    )


def test_export_publishes_a_checked_version(exported: dict[str, Exported]) -> None:
    registry = exported["mmoe"].registry
    assert list_versions(registry, "ranker") == ["v0001", "v0002"]
    for kind, item in exported.items():
        folder = registry / "ranker" / item.manifest.version
        assert sorted(p.name for p in folder.iterdir()) == [
            "MODEL_CARD.md",
            "manifest.json",
            "model.onnx",
        ]
        card = (folder / "MODEL_CARD.md").read_text()
        for task, scores in item.manifest.metrics["test"].items():
            if task in item.manifest.task_names:
                assert f"| {task} | rmse | " in card or f"| {task} | auc | " in card
                value = scores.get("auc", scores.get("rmse"))
                assert f"{value:.4f}" in card
        assert verify(folder) == item.manifest == load_manifest(folder)
        proto = onnx.load(folder / "model.onnx")
        onnx.checker.check_model(proto, full_check=True)
        assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [18]
        dims = {
            v.name: v.type.tensor_type.shape.dim[0].dim_param
            for v in [*proto.graph.input, *proto.graph.output]
        }
        assert dims == {
            "user_cat": "user_batch",
            "item_cat": "candidates",
            "item_multi": "candidates",
            "item_dense": "candidates",
            "click": "candidates",
            "watch_time": "candidates",
            "completion": "candidates",
        }, kind
        names = [t.name for t in proto.graph.initializer] + [n.name for n in proto.graph.node]
        assert not [n for n in names if "aux" in n.lower()], kind


def test_onnx_matches_torch_rowwise_and_per_request(exported: dict[str, Exported]) -> None:
    for item in exported.values():
        model = load_best(item.run / "best.pt")
        path = model_path(item.registry, "ranker", item.manifest.version)
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        data = _rows(item)
        assert data.rows == 512
        requests = list(dict.fromkeys(data.request_id.tolist()))[:5]
        layouts = [np.arange(data.rows)] + [np.flatnonzero(data.request_id == r) for r in requests]
        for i, index in enumerate(layouts):
            per_request = i > 0
            feeds = {
                k: np.ascontiguousarray(
                    v[index[:1]] if per_request and k.startswith("user_") else v[index]
                )
                for k, v in data.inputs.items()
            }
            assert feeds["user_cat"].shape[0] == (1 if per_request else data.rows)
            got = dict(zip(item.manifest.outputs, session.run(None, feeds), strict=True))
            with torch.no_grad():
                want = model({k: torch.from_numpy(v) for k, v in feeds.items()})
            for task in model.task_names:
                scale = np.maximum(1.0, np.abs(want[task].numpy()))  # seconds: relative error
                np.testing.assert_array_less(np.abs(got[task] - want[task].numpy()) / scale, 1e-4)
        parity = item.manifest.exporter
        assert parity["parity_rows"] == 512 and parity["parity_requests"] == 8
        assert 0 <= parity["parity_max_diff"] <= 1e-4
        assert set(parity["parity"]) == {"rowwise", "per_request"}


def test_batched_export_is_checked_in_three_layouts_and_scores_rows_like_the_single_graph(
    tiny_batched_registry: Path, tiny_log: Path
) -> None:
    single, batched = (
        load_manifest(tiny_batched_registry / "ranker" / v) for v in ("v0001", "v0002")
    )
    assert (single.batched, batched.batched) == (False, True)
    assert set(batched.exporter["parity"]) == {"rowwise", "per_request", "batched"}
    assert 0 <= batched.exporter["parity_max_diff"] <= 1e-4
    session = OnnxModel(model_path(tiny_batched_registry, "ranker", "v0002").read_bytes())
    assert REQUEST_INDEX in session.input_names
    # Offline scoring (tuning, retraining) feeds rows: request_index is made for them.
    spec = batched.spec()
    rows = held_out_rows([tiny_log], spec, batched.data_window["test"], 300, False)
    one = OnnxModel(model_path(tiny_batched_registry, "ranker", "v0001").read_bytes())
    got = session.predict_rows(rows.inputs, batch=128)
    for task, want in one.predict_rows(rows.inputs, batch=128).items():
        np.testing.assert_allclose(got[task], want, rtol=1e-5, atol=1e-6)


def test_manifest_carries_spec_metrics_and_lineage(exported: dict[str, Exported]) -> None:
    for kind, item in exported.items():
        manifest, state = item.manifest, torch.load(item.run / "best.pt", weights_only=True)
        spec = manifest.spec()
        assert spec == FeatureSpec.from_yaml(state["spec_yaml"]) and spec.is_fitted
        assert manifest.task_names == ["click", "watch_time", "completion"]
        assert list(manifest.outputs) == manifest.task_names
        assert manifest.inputs == {
            "user": ["user_cat"],
            "item": ["item_cat", "item_multi", "item_dense"],
        }
        assert manifest.data_window == state["split"]
        assert (
            manifest.model_kind == kind
            and manifest.hparams == load_best(item.run / "best.pt").hparams()
        )
        metrics = json.loads((item.run / "metrics.json").read_text())
        assert manifest.metrics["valid"].keys() == metrics["valid"].keys()
        assert manifest.metrics["test"]["click"]["auc"] == pytest.approx(
            metrics["test"]["click"]["auc"]
        )
        assert manifest.opset == 18
    assert exported["mmoe"].manifest.parent is None
    assert exported["ple"].manifest.parent == exported["mmoe"].manifest.version


def test_ple_trained_with_aux_heads_exports_the_same_graph_as_without(
    exported: dict[str, Exported],
) -> None:
    item = exported["ple"]
    wrapper = torch.load(item.run / "checkpoint.pt", weights_only=True)["wrapper_state"]
    assert any(k.startswith("aux_heads.") for k in wrapper)  # the run did train aux heads
    model = load_best(item.run / "best.pt")
    hparams = model.hparams()
    plain = build_model("ple", model.spec, model.tasks, hparams["config"]).eval()
    example = {k: v[:2] for k, v in _rows(item, 2).inputs.items()}
    reference = onnx.load_from_string(to_onnx(plain, example, 18))
    exported_graph = onnx.load(model_path(item.registry, "ranker", item.manifest.version))

    def size(proto: onnx.ModelProto) -> tuple[list[str], int]:
        ops = sorted(n.op_type for n in proto.graph.node)
        return ops, sum(int(np.prod(t.dims)) for t in proto.graph.initializer)

    assert size(exported_graph) == size(reference)


def test_parity_failure_is_refused(exported: dict[str, Exported]) -> None:
    item = exported["mmoe"]
    model_bytes = model_path(item.registry, "ranker", item.manifest.version).read_bytes()
    model = load_best(item.run / "best.pt")
    with torch.no_grad():
        model.towers.towers["click"].out.bias.add_(0.01)  # ~2e-3 on probabilities
    with pytest.raises(ExportError, match=r"differ by .* > tolerance 0\.0001"):
        check_parity(model_bytes, model, _rows(item, 64), 1e-4)


def test_export_refuses_a_run_without_best(tmp_path: Path) -> None:
    run = tmp_path / "unfinished"
    run.mkdir()
    with pytest.raises(ExportError, match="not a finished training run") as info:
        export_run(run, tmp_path / "models", "ranker")
    assert str(run / "best.pt") in str(info.value)
    assert not (tmp_path / "models").exists()
