"""What a new user hit (issue 14): the imported log's own feature spec, switching balancer or
architecture on the recommended config, importer notes in words, early stopping on one metric."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from cli.main import main
from training.config import ConfigError, load_config
from training.datasets.kuairand.columns import SPEC_FILE
from training.datasets.kuairand.importer import import_kuairand
from training.datasets.kuairand.report import NOTE_MEANINGS, ImportReport, explain_note

from .conftest import tiny_overrides
from .test_offline import synthetic_kuairand

REPO = Path(__file__).resolve().parents[2]
SMALL_RUN = [
    "train.epochs=1",
    "train.batch_size=256",
    "train.threads=1",
    "model.config={num_experts: 2, expert_units: [8], tower_units: [4], embedding_dim: 4}",
]


def test_train_on_an_imported_log_finds_its_feature_spec(tmp_path: Path) -> None:
    log = tmp_path / "imported"
    import_kuairand(synthetic_kuairand(tmp_path / "src"), log)
    run = tmp_path / "run"
    assert main(["train", "--quiet", f"data.paths=[{log}]", f"out={run}", *SMALL_RUN]) == 0
    state = torch.load(run / "best.pt", weights_only=True)
    assert "name: kuairand" in state["spec_yaml"]


def test_without_its_spec_the_error_says_to_pass_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "imported"
    import_kuairand(synthetic_kuairand(tmp_path / "src"), log)
    (log / SPEC_FILE).unlink()
    code = main(["train", "--quiet", f"data.paths=[{log}]", f"out={tmp_path / 'run'}", *SMALL_RUN])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert "missing column" in err and "data.spec=" in err and str(log) in err


def test_readme_example_switches_balancer_and_architecture_with_one_key_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="training.config"):
        config = load_config(
            REPO / "configs" / "train.yaml",
            ["balancer.name=uw", "model.kind=ple", "train.epochs=6"],
        )
        assert config.model.kind == "ple" and config.balancer.name == "uw"
        assert "num_experts" not in config.model.config
        assert "model.config.num_experts dropped: a parameter of mmoe" in " ".join(caplog.messages)
        # EMTL's parameters given for another balancer go the same way.
        config = load_config(
            REPO / "configs" / "train.yaml",
            ["balancer.name=emtl", "balancer.params.rho=0.2", "balancer.name=uw"],
        )
    assert config.balancer.name == "uw" and not config.balancer.params
    assert "balancer.params.rho dropped: a parameter of" in " ".join(caplog.messages)
    assert "not of balancer.name=uw" in " ".join(caplog.messages)
    # A key that no architecture has is still an error that names it.
    with pytest.raises(ConfigError, match=r"model\.config\.num_exprts: unknown ple field"):
        load_config(
            REPO / "configs" / "train.yaml", ["model.kind=ple", "model.config.num_exprts=4"]
        )


def test_importer_notes_say_what_they_mean(tmp_path: Path) -> None:
    report = ImportReport(
        rows_in=10,
        rows_out=10,
        dropped={},
        requests=3,
        days=["2022-04-20"],
        files=[],
        spec_path=tmp_path / SPEC_FILE,
        notes={"date_differs_from_time_ms": 7, "missing_tab": 2, "user_features_invalid_ids": 1},
    )
    lines = report.summary().splitlines()
    assert any(
        line.startswith("note date_differs_from_time_ms: 7 (rows whose KuaiRand `date` is not")
        for line in lines
    )
    assert "note missing_tab: 2 (rows with no tab value: written as null)" in lines
    assert any(
        "user_features_invalid_ids: 1 (rows of user_features with a missing" in x for x in lines
    )
    for name in NOTE_MEANINGS:
        assert explain_note(name) == NOTE_MEANINGS[name]
    for stem in ("user_features", "video_features_basic"):
        for kind in ("malformed_rows", "duplicate_ids", "invalid_values", "invalid_ids"):
            assert "see training" not in explain_note(f"{stem}_{kind}")


@pytest.mark.parametrize("metric", ["loss", "click.auc", "watch_time.loss"])
def test_early_stopping_on_one_metric(metric: str, tiny_log: Path, tmp_path: Path) -> None:
    overrides = tiny_overrides(tiny_log, tmp_path, "train.epochs=3", "train.patience=0")
    assert main(["train", "--quiet", *overrides, f"train.early_stopping={metric}"]) == 0
    doc = json.loads((tmp_path / "metrics.json").read_text())
    task, _, name = metric.rpartition(".")
    values = [h["valid"][task or "loss"][name if task else "value"] for h in doc["history"]]
    pick = max if metric == "click.auc" else min
    assert doc["best_epoch"] == values.index(pick(values)) + 1


def test_unknown_early_stopping_metric_is_refused_before_training() -> None:
    with pytest.raises(ConfigError, match=r"train\.early_stopping: unknown metric 'click\.rmse'"):
        load_config(None, ["train.early_stopping=click.rmse"])
