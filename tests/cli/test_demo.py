"""`ranker demo --quick` runs the whole offline chain and leaves a servable experiment config."""

from __future__ import annotations

from pathlib import Path

from cli.main import main
from ranker.experiments import ExperimentConfig
from ranker.registry import verify


def test_quick_demo_end_to_end(tmp_path: Path, capsys) -> None:
    assert main(["demo", "--quick", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for stage in ("simulate", "train MMoE + EMTL", "export ONNX", "tune the ranking-score"):
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
