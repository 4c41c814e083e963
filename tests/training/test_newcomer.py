"""What a newcomer hits first: `--version`, stopping the demo's service, quiet logs, clean runs."""

from __future__ import annotations

import csv
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from cli.demo import experiments_doc, start_service
from cli.main import main
from cli.run_report import describe_normalised, render_metrics
from ranker.progress import progress_bar
from tests.conftest import tiny_overrides
from tests.serving.conftest import free_port


def test_version_prints_the_installed_version(capsys) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"ranker {version('ranker')}"


def test_demo_stop_stops_the_service_a_demo_left_running(
    tiny_registry: Path, tmp_path: Path, capsys
) -> None:
    experiments = tmp_path / "experiments.yaml"
    experiments.write_text(yaml.safe_dump(experiments_doc("v0001", None)))
    service = start_service(tmp_path, tiny_registry, experiments, free_port())
    try:
        assert (tmp_path / "serve.pid").read_text().strip() == str(service.pid)
        assert main(["demo", "--stop", "--workdir", str(tmp_path)]) == 0
        assert service.wait(timeout=30) is not None
        assert f"stopped the demo service (pid {service.pid})" in capsys.readouterr().out
        assert not (tmp_path / "serve.pid").exists()
        # Nothing left to stop: says so, and succeeds (stopping is idempotent).
        assert main(["demo", "--stop", "--workdir", str(tmp_path)]) == 0
        assert "no demo service is running" in capsys.readouterr().out
    finally:
        if service.poll() is None:
            service.kill()


def test_demo_stop_never_signals_a_pid_that_is_not_the_service(tmp_path: Path, capsys) -> None:
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "serve.pid").write_text(f"{other.pid}\n")  # a stale file, a recycled pid
        assert main(["demo", "--stop", "--workdir", str(tmp_path)]) == 0
        assert other.poll() is None, "an unrelated process was signalled"
        assert "no demo service is running" in capsys.readouterr().out
    finally:
        other.kill()
        other.wait()


def test_progress_bars_stay_silent_when_stderr_is_not_a_terminal(capfd) -> None:
    # Under pytest stderr is a pipe, as in docker and Kubernetes logs.
    bar = progress_bar(range(50), enabled=True, desc="steps")
    assert bar.disable
    assert list(bar) == list(range(50))
    assert capfd.readouterr().err == ""
    assert progress_bar(range(3), enabled=False).disable


def test_negative_normalised_scores_say_they_are_worse_than_the_mean() -> None:
    assert describe_normalised(-0.0348) == (
        "RMSE 3.5% above predicting the mean (worse than that constant)"
    )
    assert describe_normalised(0.12) == "RMSE 12.0% below predicting the mean"
    result = {
        "best_epoch": 1,
        "epochs_run": 1,
        "test": {"watch_time": {"rmse": 18.96, "oracle_rmse": 14.26, "normalised": -0.0348}},
    }
    line = render_metrics(result).splitlines()[1]
    assert "rmse 18.96 (oracle 14.26)" in line and "worse than that constant" in line
    assert "normalised" not in line


def test_training_into_a_used_run_directory_starts_its_curves_clean(
    tiny_log: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    for _ in range(2):  # the second run, without --resume, must not append to the first's curves
        assert main(["train", "--quiet", *tiny_overrides(tiny_log, run)]) == 0
    with (run / "steps.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 4  # 2 epochs x max_steps_per_epoch 4: one run's steps
