"""`ranker config schema|show`: the schema accepts the shipped configs and refuses what the
loaders refuse; `show` prints what the loaders resolve."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import yaml

from cli.main import main
from training.config import TrainConfig, load_config
from training.retrain.config import load_retrain_config

ROOT = Path(__file__).resolve().parents[2]


def _schema(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert main(["config", "schema", *args]) == 0
    return json.loads(capsys.readouterr().out)


def _errors(schema: dict[str, Any], doc: Any) -> list[str]:
    return [e.message for e in jsonschema_rs.validator_for(schema).iter_errors(doc)]


def test_schemas_validate_the_shipped_configs(capsys: pytest.CaptureFixture[str]) -> None:
    train = _schema(capsys)
    retrain = _schema(capsys, "--retrain")
    assert train["$schema"].endswith("2020-12/schema")
    assert _errors(train, yaml.safe_load((ROOT / "configs/train.yaml").read_text())) == []
    assert _errors(retrain, yaml.safe_load((ROOT / "configs/retrain.yaml").read_text())) == []
    # The defaults, the loaders' own output and a retrain config naming its train file also pass.
    assert _errors(train, TrainConfig().to_dict()) == []
    assert _errors(train, load_config(ROOT / "configs/train.yaml").to_dict()) == []
    assert _errors(retrain, {"train": "train.yaml", "window_days": 5}) == []
    # The loaders take one string for a list of strings; so does the schema.
    assert _errors(train, {"data": {"paths": "logs/"}}) == []
    # Field comments are the descriptions.
    paths = train["$defs"]["DataConfig"]["properties"]["paths"]
    assert paths["description"] == "Log directories or files (Parquet/CSV)."


def test_schemas_refuse_unknown_keys_and_wrong_types(capsys: pytest.CaptureFixture[str]) -> None:
    train = _schema(capsys)
    retrain = _schema(capsys, "--retrain")
    assert any("epoch" in e for e in _errors(train, {"train": {"epoch": 3}}))
    assert _errors(train, {"tranin": {}}) != []
    assert _errors(train, {"train": {"epochs": "three"}}) != []
    assert _errors(train, {"train": {"max_steps_per_epoch": None}}) == []
    assert _errors(retrain, {"train": {"train": {"epoch": 3}}}) != []
    assert _errors(retrain, {"gate": {"nonsense": 1}}) != []


def test_show_prints_the_resolved_config(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = str(ROOT / "configs/train.yaml")
    overrides = ["train.epochs=7", "model.config.num_experts=3"]
    assert main(["config", "show", "--config", config, *overrides]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["train"]["epochs"] == 7
    assert shown["model"]["config"]["num_experts"] == 3
    assert shown == load_config(config, overrides).to_dict()

    monkeypatch.setenv("RANKER_REGISTRY", "/srv/models")
    retrain = str(ROOT / "configs/retrain.yaml")
    assert main(["config", "show", "--retrain", "--config", retrain, "train.train.epochs=2"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["registry"] == "/srv/models"
    assert shown["train"]["train"]["epochs"] == 2
    assert shown == load_retrain_config(retrain, ["train.train.epochs=2"]).to_dict()


def test_show_names_a_misspelt_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "train.epoch=7"]) == 2
    err = capsys.readouterr().err
    assert "ranker config: error: train.epoch: unknown key" in err
    assert "'epochs'" in err
