"""`ranker compare`: the objective axis, aux heads for some balancers, single-task references,
delta-m against them, mean +- std, the Pareto front, and the seesaw config's equal budgets."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest

from training.compare import (
    CompareConfig,
    RunKey,
    load_compare_config,
    run_compare,
    run_config,
    summarise,
)
from training.config import ConfigError
from training.plots import pareto_front

ROOT = Path(__file__).resolve().parents[2]


def grid_config(*overrides: str) -> CompareConfig:
    return load_compare_config(None, ["models=[mmoe]", "seeds=[0, 1]", *overrides])


def test_plain_grid_keeps_its_run_names() -> None:
    """Without the new axes the grid and run directories are what they were (a re-run resumes)."""
    config = grid_config("balancers=[ew, emtl]", "aux=[none, linear]")
    names = {key.name for key in config.grid()}
    assert len(names) == 2 * 2 * 2
    assert "mmoe-ew-none-s0" in names and "mmoe-emtl-linear-s1" in names


def test_aux_heads_only_for_the_balancers_that_ask() -> None:
    config = grid_config(
        "balancers=[ew, uw, emtl]", "aux=[none, bottleneck]", "aux_balancers=[ew, emtl]"
    )
    groups = {(k.balancer, k.aux) for k in config.grid()}
    assert groups == {
        ("ew", "none"),
        ("uw", "none"),
        ("emtl", "none"),
        ("ew", "bottleneck"),
        ("emtl", "bottleneck"),
    }
    with pytest.raises(ConfigError, match=r"aux_balancers\[0\]: 'famo' is not in balancers"):
        grid_config("balancers=[ew]", "aux_balancers=[famo]")


def test_objective_axis_sets_the_watch_loss_of_each_run() -> None:
    config = grid_config("balancers=[ew]", "aux=[none]", "objectives=[mse, ziln]")
    keys = config.grid()
    assert {k.objective for k in keys} == {"mse", "ziln"}
    for key in keys:
        assert run_config(config, key).tasks.losses["watch_time"] == key.objective
        assert key.objective in key.name
    with pytest.raises(ConfigError, match=r"objectives\[1\]: unknown watch_time loss 'nope'"):
        grid_config("objectives=[mse, nope]")
    with pytest.raises(ConfigError, match="objective_task: 'watch_time' is not a task"):
        grid_config("objectives=[mse]", "base.tasks.names=[click]")


def test_single_task_references_train_one_task_each() -> None:
    config = grid_config(
        "balancers=[ew]", "aux=[none]", "objectives=[mse, ziln]", "single_task=true"
    )
    singles = [k for k in config.grid() if k.single]
    # click and completion once per seed, watch time once per objective and seed.
    assert sorted({(k.single, k.objective) for k in singles}) == [
        ("click", ""),
        ("completion", ""),
        ("watch_time", "mse"),
        ("watch_time", "ziln"),
    ]
    assert len(singles) == 4 * 2
    multi = run_config(config, RunKey("mmoe", "ew", "none", 0, "mse"))
    for key in singles:
        train = run_config(config, key)
        assert train.tasks.names == (key.single,)
        assert set(train.tasks.losses) <= {key.single}
        assert train.train.early_stopping.startswith(f"{key.single}.")
        # Same architecture and sizes as the multi-task runs.
        assert train.model == multi.model
        assert train.train.epochs == multi.train.epochs


def row(balancer: str, seed: int, auc: float, rmse: float, comp: float, **extra: Any) -> dict:
    base = {"model": "mmoe", "objective": "mse", "balancer": balancer, "aux": "none", "task": ""}
    metrics = {"click.auc": auc, "watch_time.rmse": rmse, "completion.rmse": comp}
    return {**base, "seed": seed, "seconds": 10.0 + seed, **metrics, **extra}


def single(task: str, objective: str, metric: str, value: float) -> dict:
    return {
        "model": "mmoe",
        "objective": objective,
        "balancer": "single-task",
        "aux": "none",
        "task": task,
        "seed": 0,
        "seconds": 5.0,
        f"{task}.{metric}": value,
    }


def test_summary_mean_std_and_delta_m_against_ew_and_single_task() -> None:
    config = CompareConfig(objectives=("mse",), single_task=True)
    rows = [
        row("ew", 0, 0.70, 20.0, 0.30),
        row("ew", 1, 0.72, 20.0, 0.30),
        row("emtl", 0, 0.77, 18.0, 0.30),
        row("emtl", 1, 0.77, 18.0, 0.30),
        single("click", "", "auc", 0.70),
        single("watch_time", "mse", "rmse", 20.0),
        single("watch_time", "ziln", "rmse", 1.0),  # another objective's: must not be used
        single("completion", "", "rmse", 0.30),
    ]
    summary = {(e["balancer"], e["task"]): e for e in summarise(config, rows)}
    ew, emtl = summary[("ew", "")], summary[("emtl", "")]
    assert ew["click.auc"] == pytest.approx(0.71)
    assert ew["click.auc.std"] == pytest.approx(0.01414, abs=1e-5)
    assert ew["seconds"] == pytest.approx(10.5)
    assert ew["delta_m_pct"] == pytest.approx(0.0)
    # vs single-task: click +1.43%, watch 0%, completion 0% -> mean +0.476%.
    assert ew["delta_m_single_pct"] == pytest.approx(100 * (0.01 / 0.70) / 3)
    # emtl vs single-task: click +10%, watch RMSE -10% (better: +10%), completion 0.
    assert emtl["delta_m_single_pct"] == pytest.approx(100 * (0.10 + 0.10) / 3)
    assert emtl["delta_m_pct"] == pytest.approx(100 * (0.06 / 0.71 + 0.10) / 3)
    assert math.isnan(summary[("single-task", "click")]["delta_m_pct"])


def test_pareto_front_keeps_only_non_dominated_points() -> None:
    # (RMSE lower is better, AUC higher is better)
    points = [(18.0, 0.70), (17.0, 0.69), (19.0, 0.72), (18.5, 0.69), (17.0, 0.68)]
    assert pareto_front(points) == [1, 0, 2]
    assert pareto_front([(1.0, 1.0), (1.0, 1.0)]) == [0, 1]  # ties dominate neither


def test_seesaw_config_gives_every_run_the_same_budget_and_a_scale_free_selection() -> None:
    """Early stopping cannot decide the comparison: same epochs, no patience, and multi-task runs
    choose their epoch on validation click AUC, which the watch loss's scale cannot move."""
    config = load_compare_config(ROOT / "configs" / "seesaw.yaml")
    keys = config.grid()
    assert {k.objective for k in keys if not k.single} == {"mse", "ziln", "zi_gamma"}
    assert {k.balancer for k in keys if k.aux != "none"} == {"ew", "emtl"}
    assert len({k.seed for k in keys}) == 3
    for key in keys:
        train = run_config(config, key).train
        assert (train.epochs, train.patience) == (4, 0)
        own = {
            "click": "click.auc",
            "watch_time": "watch_time.rmse",
            "completion": "completion.rmse",
        }
        assert train.early_stopping == own.get(key.single, "click.auc")


def test_one_grid_both_objectives_one_summary(tiny_log: Path, tmp_path: Path) -> None:
    config = load_compare_config(
        None,
        [
            f"out={tmp_path}",
            "models=[mmoe]",
            "balancers=[ew, emtl]",
            "aux=[none, linear]",
            "aux_balancers=[emtl]",
            "objectives=[mse, ziln]",
            "single_task=true",
            "seeds=[0]",
        ],
    )
    base = {
        "data": {"paths": [str(tiny_log)]},
        "train": {
            "epochs": 1,
            "batch_size": 256,
            "max_steps_per_epoch": 2,
            "threads": 1,
            "early_stopping": "click.auc",
        },
        "model": {
            "config": {
                "num_experts": 2,
                "expert_units": [8],
                "tower_units": [4],
                "embedding_dim": 4,
            }
        },
    }
    config = dataclasses.replace(config, base=base)
    written = run_compare(config, progress=False)
    with written["results"].open() as handle:
        results = list(csv.DictReader(handle))
    # 2 objectives x (ew, emtl, emtl+linear) + single-task click, completion, watch x 2.
    assert len(results) == 2 * 3 + 4
    markdown = written["markdown"].read_text()
    assert "| mmoe | mse | ew | none |" in markdown and "| mmoe | ziln | ew | none |" in markdown
    assert "single-task watch_time" in markdown and "Δm% vs single-task" in markdown
    with written["summary"].open() as handle:
        summary = list(csv.DictReader(handle))
    multi = [e for e in summary if not e["task"]]
    assert all(not math.isnan(float(e["delta_m_single_pct"])) for e in multi)
    for name in ("pareto", "equity"):
        assert written[name].stat().st_size > 0
    # A re-run trains nothing and gives the same results, also when a config field was added
    # since a run finished (its recorded config lacks it; the default applies); a run whose
    # recorded config differs in a value trains again.
    runs = tmp_path / "runs"
    added, changed = runs / "mmoe-mse-ew-none-s0", runs / "mmoe-ziln-ew-none-s0"
    for run_dir, edit in ((added, "drop"), (changed, "change")):
        doc = json.loads((run_dir / "metrics.json").read_text())
        if edit == "drop":
            del doc["config"]["optimizer"]["clip_norm"]  # the run used the default, 0.0
        else:
            doc["config"]["train"]["batch_size"] = 999
        (run_dir / "metrics.json").write_text(json.dumps(doc))
    stamps = {p: p.stat().st_mtime_ns for p in runs.glob("*/metrics.json")}
    with run_compare(config, progress=False)["results"].open() as handle:
        again = list(csv.DictReader(handle))

    def untimed(rows: list[dict[str, str]]) -> list[dict[str, str]]:
        return sorted(
            ({k: v for k, v in r.items() if k != "seconds"} for r in rows),
            key=lambda r: (r["objective"], r["balancer"], r["aux"], r["task"]),
        )

    assert untimed(again) == untimed(results)
    retrained = {p.parent.name for p in stamps if p.stat().st_mtime_ns != stamps[p]}
    assert retrained == {changed.name}
