"""A seed ensemble exported as one graph: its ONNX outputs are the mean of its members' own
exported graphs, its manifest carries the ensemble's own metrics, and runs that do not make one
model are refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cli.main import main as cli_main
from ranker.models.ensemble import MeanOfModels
from ranker.onnx_model import OnnxModel
from ranker.registry import MANIFEST_FILE, model_path
from tests.conftest import tiny_overrides
from training.checkpoint import BEST, load_best
from training.config import load_config
from training.ensemble import export_ensemble
from training.export import ExportError, export_run, held_out_rows
from training.prepare import prepare_data
from training.trainer import Trainer

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # pytree, inside torch.export


def train(log: Path, run: Path, *extra: str) -> Path:
    config = load_config(None, tiny_overrides(log, run, *extra))
    Trainer(config, prepare_data(config), run, progress=False).fit()
    return run


@pytest.fixture(scope="module")
def second_run(tiny_log: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run's configuration with another seed."""
    return train(tiny_log, tmp_path_factory.mktemp("seed1"), "train.seed=1")


def test_the_ensemble_graph_is_the_mean_of_its_members_graphs(
    tiny_run: Path, second_run: Path, tiny_log: Path, tmp_path: Path
) -> None:
    registry = tmp_path / "models"
    single = [export_run(run, registry, "single") for run in (tiny_run, second_run)]
    manifest = export_ensemble([tiny_run, second_run], registry, "ensemble")

    assert manifest.model_kind == "ensemble" and len(manifest.hparams["members"]) == 2
    assert manifest.exporter["members"] == [str(tiny_run), str(second_run)]
    assert manifest.exporter["parity_max_diff"] <= 1e-4
    state = torch.load(tiny_run / BEST, map_location="cpu", weights_only=True)
    spec = load_best(tiny_run / BEST).spec
    rows = held_out_rows([tiny_log], spec, state["split"]["test"], 300, False)
    feeds = {k: np.ascontiguousarray(v) for k, v in rows.inputs.items()}
    members = [OnnxModel(model_path(registry, "single", m.version).read_bytes()) for m in single]
    ensemble = OnnxModel(model_path(registry, "ensemble", manifest.version).read_bytes())
    want = np.mean([member.run(feeds) for member in members], axis=0)
    got = ensemble.run(feeds)
    assert np.abs(np.asarray(got) - want).max() < 1e-4
    # The two seeds make different models, so the mean is not either of them.
    assert np.abs(np.asarray(members[0].run(feeds)) - want).max() > 1e-4


def test_the_manifest_holds_the_ensembles_own_metrics(
    tiny_run: Path, second_run: Path, tmp_path: Path
) -> None:
    manifest = export_ensemble([tiny_run, second_run], tmp_path / "models", "ensemble")

    test = manifest.metrics["test"]
    assert 0.0 < test["click"]["auc"] < 1.0 and test["watch_time"]["rmse"] > 0
    assert "oracle_auc" in test["click"]  # the tiny log carries oracle columns
    members = manifest.metrics["members"]
    assert [m["run"] for m in members] == [str(tiny_run), str(second_run)]
    # The ensemble's figures are its own, not a member's.
    assert test["click"]["auc"] not in {m["valid"]["click"]["auc"] for m in members}


def test_runs_that_do_not_make_one_model_are_refused_by_name(
    tiny_run: Path, tiny_log: Path, tmp_path: Path
) -> None:
    other = train(tiny_log, tmp_path / "other", "tasks.losses={watch_time: zi_gamma}")
    with pytest.raises(ExportError, match=f"{other}: its tasks or losses differ"):
        export_ensemble([tiny_run, other], tmp_path / "models", "ensemble")
    with pytest.raises(ValueError, match="at least 2 members"):
        MeanOfModels([load_best(tiny_run / BEST)])


def test_ranker_export_with_ensemble(tiny_run: Path, second_run: Path, tmp_path: Path) -> None:
    registry = tmp_path / "models"
    args = ["export", str(tiny_run), "--ensemble", str(second_run), "--registry", str(registry)]
    assert cli_main(args) == 0
    assert model_path(registry, "ranker", "v0001").is_file()
    assert cli_main([*args, "--quantize", "int8"]) == 2  # int8 comes from one run's graph
    assert cli_main([*args, "--batched"]) == 0  # the graph a dynamic batcher feeds, checked too
    manifest = json.loads((registry / "ranker" / "v0002" / MANIFEST_FILE).read_text())
    assert manifest["batched"] and "batched" in manifest["exporter"]["parity"]
