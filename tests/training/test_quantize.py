"""int8 versions: built by ONNX Runtime's quantiser from a tiny trained run, checked against the fp32
parent on the validation day, published with the parity report or refused, served by the pool."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from cli.main import main as cli_main
from cli.quantize import run_log
from ranker.experiments import ModelRef
from ranker.registry import MODEL_FILE, list_versions, load_manifest, verify
from ranker.scoring import DEFAULT_FORMULA, score
from serving.models import ModelPool
from serving.settings import CPU, Settings
from training.quantize import (
    QuantizeError,
    check_contract,
    cpu_session,
    quantize_graph,
    quantize_version,
    read_days,
)
from training.quantize_config import QualityBound, QuantizeOptions
from training.quantize_parity import parity_report, ranking_agreement, violations

LOOSE = QualityBound(max_auc_drop=0.05, max_rmse_rise=0.05)


@pytest.fixture
def registry(tiny_registry: Path, tmp_path: Path) -> Path:
    """A writable copy of the registry holding the tiny fp32 model as ranker/v0001."""
    return Path(shutil.copytree(tiny_registry, tmp_path / "models"))


@pytest.fixture(scope="module")
def published(
    tiny_registry: Path, tiny_run: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """The tiny model quantised both ways into one registry: dynamic v0002, static v0003."""
    root = Path(shutil.copytree(tiny_registry, tmp_path_factory.mktemp("q") / "models"))
    paths, drop = run_log(tiny_run)
    out = {}
    for mode in ("dynamic", "static"):
        options = QuantizeOptions(mode=mode, bound=LOOSE, calibration_requests=16)
        manifest = quantize_version(root, "ranker", "v0001", paths, options, drop_invalid=drop)
        out[mode] = root / "ranker" / manifest.version
    return out


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_int8_version_holds_the_parity_report(published: dict[str, Path], mode: str) -> None:
    version_dir = published[mode]
    manifest = verify(version_dir)  # sha256 of the int8 graph matches
    parent = load_manifest(version_dir.parent / "v0001")
    quant = manifest.exporter["quantization"]
    assert manifest.parent == quant["parent"] == "v0001"
    assert quant["parent_sha256"] == parent.sha256 != manifest.sha256
    assert quant["mode"] == mode
    assert (quant["calibration"] is None) == (mode == "dynamic")
    report = quant["parity"]
    assert report["days"] == parent.data_window["valid"]
    assert report["requests"] > 10 and report["rows"] > report["requests"]
    assert set(report["fp32"]) == {"click_auc", "watch_time_rmse", "completion_rmse"}
    for name, before in report["fp32"].items():
        after = report["int8"][name]
        change = after - before if name.endswith("_auc") else after / before - 1
        assert report["delta"][name] == pytest.approx(change)
        assert abs(report["delta"][name]) < 0.05
    assert 0.5 < report["ranking"]["min"] <= report["ranking"]["mean"] <= 1.0

    # The dense layers' weights are int8 now; the fp32 parent had none.
    def int8_weights(path: Path) -> int:
        graph = onnx.load(path).graph
        return sum(t.data_type == onnx.TensorProto.INT8 for t in graph.initializer)

    assert int8_weights(version_dir / MODEL_FILE) >= 3
    assert int8_weights(version_dir.parent / "v0001" / MODEL_FILE) == 0
    assert manifest.inputs == parent.inputs and manifest.outputs == parent.outputs
    assert manifest.feature_spec == parent.feature_spec


def test_parity_report_matches_separate_runs(published: dict[str, Path], tiny_run: Path) -> None:
    """The report's int8 AUC is what the published graph gives when run request by request."""
    root = published["dynamic"].parent
    parent = load_manifest(root / "v0001")
    paths, drop = run_log(tiny_run)
    valid = read_days(paths, parent, parent.data_window["valid"], drop)
    fp32 = cpu_session((root / "v0001" / MODEL_FILE).read_bytes())
    int8 = cpu_session((published["dynamic"] / MODEL_FILE).read_bytes())
    report = parity_report(fp32, int8, list(parent.outputs), valid, parent.inputs["user"])
    stored = load_manifest(published["dynamic"]).exporter["quantization"]["parity"]
    assert report["int8"] == pytest.approx(stored["int8"], rel=1e-9)
    assert report["fp32"]["click_auc"] == pytest.approx(
        parent.metrics["valid"]["click"]["auc"], abs=0.02
    )


def test_a_bound_that_cannot_be_met_refuses_and_publishes_nothing(
    registry: Path, tiny_run: Path
) -> None:
    paths, drop = run_log(tiny_run)
    parent = load_manifest(registry / "ranker" / "v0001")
    valid = read_days(paths, parent, parent.data_window["valid"], drop)
    fp32_bytes = (registry / "ranker" / "v0001" / MODEL_FILE).read_bytes()
    int8 = cpu_session(quantize_graph(fp32_bytes, "dynamic"))
    report = parity_report(
        cpu_session(fp32_bytes), int8, list(parent.outputs), valid, parent.inputs["user"]
    )
    losses = [-v if k.endswith("_auc") else v for k, v in report["delta"].items()]
    assert max(losses) > 0, f"int8 lost nothing on this fixture, so no bound refuses it: {report}"
    with pytest.raises(QuantizeError, match="refused, nothing published"):
        quantize_version(
            registry,
            "ranker",
            "v0001",
            paths,
            QuantizeOptions(bound=QualityBound(0.0, 0.0)),
            drop_invalid=drop,
        )
    assert list_versions(registry, "ranker") == ["v0001"]
    assert not [p for p in (registry / "ranker").iterdir() if p.name.startswith(".tmp-")]


def test_violations_name_each_metric_past_its_bound() -> None:
    report = {"delta": {"click_auc": -0.002, "watch_time_rmse": 0.004, "completion_rmse": 0.01}}
    bound = QualityBound(max_auc_drop=0.001, max_rmse_rise=0.005)
    found = violations(report, bound)
    assert len(found) == 2
    assert found[0].startswith("click_auc drops by 0.00200")
    assert found[1].startswith("completion_rmse rises by +1.000%")
    assert violations(report, QualityBound(0.002, 0.01)) == []
    assert violations({"delta": {"click_auc": float("nan")}}, bound)  # an unmeasurable AUC refuses


def test_ranking_agreement_is_one_for_the_same_top_k_and_less_when_swapped() -> None:
    groups = np.repeat([0, 1], 12)
    reference = np.tile(np.arange(12.0), 2)
    same = reference * 3 + 1  # a monotone transform: the same ranking
    swapped = reference.copy()
    swapped[[11, 10]] = swapped[[10, 11]]  # the top two of request 0 change places
    assert ranking_agreement(reference, same, groups) == pytest.approx([1.0, 1.0])
    got = ranking_agreement(reference, np.concatenate([swapped[:12], same[12:]]), groups)
    assert got[0] < 1.0 and got[1] == pytest.approx(1.0)


def test_contract_check_refuses_a_graph_with_other_outputs(tiny_model: Path) -> None:
    fp32_bytes = (tiny_model / MODEL_FILE).read_bytes()
    manifest = load_manifest(tiny_model)
    int8_bytes = quantize_graph(fp32_bytes, "dynamic")
    rows = 5
    feeds: dict[str, np.ndarray] = {}
    fp32 = cpu_session(fp32_bytes)
    for meta in fp32.get_inputs():
        shape = [rows if not isinstance(d, int) else d for d in meta.shape]
        dtype = np.float32 if "float" in meta.type else np.int64
        feeds[meta.name] = np.zeros(shape, dtype=dtype)
    check_contract(fp32, cpu_session(int8_bytes), feeds, manifest.inputs["user"])

    proto = onnx.load_from_string(int8_bytes)
    renamed = proto.graph.output[0].name
    for node in proto.graph.node:
        node.output[:] = [f"{o}_x" if o == renamed else o for o in node.output]
    proto.graph.output[0].name = f"{renamed}_x"
    with pytest.raises(QuantizeError, match="outputs"):
        check_contract(fp32, cpu_session(proto.SerializeToString()), feeds, manifest.inputs["user"])


def test_int8_version_loads_in_the_service_pool_and_ranks(published: dict[str, Path]) -> None:
    """Served like any version: the real ModelPool verifies, loads and warms it, and its ranking
    of a request stays close to the fp32 parent's."""
    root = published["dynamic"].parent.parent
    pool = ModelPool(Settings(registry=root, providers=(CPU,), warmup_counts=(1, 50)))
    int8 = pool.load_one(ModelRef("ranker", published["dynamic"].name))
    fp32 = pool.load_one(ModelRef("ranker", "v0001"))
    assert int8.provider == CPU and int8.manifest.exporter["quantization"]["dtype"] == "int8"
    user = int8.encoder.encode_group("user", {}, 1)
    items = int8.encoder.encode_group("item", {"item_id": np.arange(50, dtype=np.int64)}, 50)
    got, want = int8.predict({**user, **items}), fp32.predict({**user, **items})
    assert list(got) == list(want) == list(int8.tasks)
    for task in int8.tasks:
        assert got[task].shape == (50,)
        np.testing.assert_allclose(got[task], want[task], rtol=0.05, atol=0.02)
    order = np.argsort(-score(DEFAULT_FORMULA, got))
    assert sorted(order.tolist()) == list(range(50))
    agreement = ranking_agreement(
        score(DEFAULT_FORMULA, want), score(DEFAULT_FORMULA, got), np.zeros(50, dtype=np.int64)
    )
    assert agreement[0] > 0.8


def test_cli_exports_fp32_then_int8_and_refuses_with_a_clear_error(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = tmp_path / "models"
    args = ["export", str(tiny_run), "--registry", str(registry), "--quantize", "int8"]
    assert cli_main([*args, "--max-auc-drop", "0.05", "--max-rmse-rise", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "published int8 ranker version v0002 (parent v0001, dynamic)" in out
    assert load_manifest(registry / "ranker" / "v0002").parent == "v0001"

    refused = [*args, "--base", "v0001", "--max-auc-drop", "0", "--max-rmse-rise", "0"]
    assert cli_main(refused) == 2
    err = capsys.readouterr().err
    assert "ranker export: error: int8 version of ranker/v0001 refused, nothing published" in err
    assert list_versions(registry, "ranker") == ["v0001", "v0002"]
    assert cli_main([*args, "--base", "v0002"]) == 2
    assert "already an int8 version" in capsys.readouterr().err


def test_bad_options_and_missing_versions_are_named(registry: Path, tiny_run: Path) -> None:
    with pytest.raises(ValueError, match="max_rmse_rise: must be a finite number >= 0"):
        QualityBound(max_rmse_rise=-0.1)
    with pytest.raises(ValueError, match="quantize mode: must be one of"):
        QuantizeOptions(mode="int4")  # type: ignore[arg-type]
    paths, _ = run_log(tiny_run)
    with pytest.raises(QuantizeError, match="v0009"):
        quantize_version(registry, "ranker", "v0009", paths)
    with pytest.raises(QuantizeError, match="cannot read the training log"):
        quantize_version(registry, "ranker", "v0001", [str(registry / "nowhere")])


def test_a_batched_graph_is_not_quantised(
    tiny_batched_registry: Path, tiny_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths, _ = run_log(tiny_run)
    with pytest.raises(QuantizeError, match="a batched graph"):
        quantize_version(tiny_batched_registry, "ranker", "v0002", paths)
    args = ["export", str(tiny_run), "--registry", str(tiny_batched_registry)]
    assert cli_main([*args, "--batched", "--quantize", "int8"]) == 2
    assert "--batched and --quantize" in capsys.readouterr().err
    assert list_versions(tiny_batched_registry, "ranker") == ["v0001", "v0002"]
