"""`ranker demo --quick` runs the whole offline chain and leaves a servable experiment config."""

from __future__ import annotations

from pathlib import Path

from cli.demo import RECOMMENDED
from cli.main import main
from ranker.experiments import ExperimentConfig
from ranker.registry import verify
from training.config import load_config

ROOT = Path(__file__).resolve().parents[2]


def test_quick_demo_end_to_end(tmp_path: Path, capsys) -> None:
    assert main(["demo", "--quick", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for stage in (
        "simulate",
        "train MMoE, the recommended configuration",
        "export ONNX",
        "tune the ranking-score",
    ):
        assert stage in out
    for stage in (
        "start the service on http://127.0.0.1:",
        "simulated A/B test",
        "rank a few requests",
    ):
        assert stage in out
    assert "service stopped" in out  # --quick never leaves a server behind
    assert "impressions without outcome: 0" in out
    config = ExperimentConfig.parse((tmp_path / "experiments.yaml").read_text())
    for ref in config.model_refs():
        verify(tmp_path / "models" / ref.name / ref.version)
    assert (tmp_path / "tuning" / "pareto.png").exists()
    assert (tmp_path / "ab" / "report.md").exists() and (tmp_path / "ab" / "lift.png").exists()


def test_demo_trains_the_recommended_configuration() -> None:
    """The demo spells out configs/train.yaml's choices (an installed package has no configs/):
    they must stay the same; only sizes, data and epochs differ."""
    recommended = load_config(ROOT / "configs" / "train.yaml", []).to_dict()
    demo = load_config(None, RECOMMENDED).to_dict()
    model_keys = ("interactions", "feeds", "factor_rank")
    assert demo["model"]["kind"] == recommended["model"]["kind"]
    for key in model_keys:
        assert demo["model"]["config"][key] == recommended["model"]["config"][key], key
    for section in ("tasks", "balancer", "aux", "calibration"):
        assert demo[section] == recommended[section], section
    for key in ("lr", "embedding_l2", "factor_l2", "l2_per_id", "task_lr"):
        assert demo["optimizer"][key] == recommended["optimizer"][key], key
    for key in ("early_stopping", "ema_decay"):
        assert demo["train"][key] == recommended["train"][key], key
