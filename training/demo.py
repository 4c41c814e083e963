"""`ranker demo`: the main job end to end on embedded defaults (no Redis, no data to download).

simulate logs -> validate -> train MMoE + EMTL + self-auxiliary heads -> export ONNX to the registry
-> tune the score weights -> write an A/B experiment config (hand-picked vs tuned weights).
"""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from ranker.schema import load_default_spec
from ranker.scoring import DEFAULT_FORMULA
from training.cli import render_metrics
from training.config import load_config
from training.data import read_log
from training.export import export_run
from training.simulate import SimulatorConfig, simulate
from training.summary import summarize
from training.trainer import Trainer, prepare_data
from training.tune import render, tune, write_outputs

MODEL_NAME = "ranker"


def _step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def demo_sizes(quick: bool) -> tuple[SimulatorConfig, list[str], int]:
    """Simulator config, training overrides and tuning trials: full demo or the tests' quick one."""
    if quick:
        sim = SimulatorConfig(
            users=300, items=1000, authors=100, days=4, requests_per_day=100, oracle=True
        )
        train = [
            "train.epochs=1",
            "train.batch_size=256",
            "train.max_steps_per_epoch=10",
            "model.config.num_experts=2",
            "model.config.expert_units=[16]",
            "model.config.tower_units=[8]",
        ]
        return sim, train, 10
    sim = SimulatorConfig(users=5000, items=20000, days=7, requests_per_day=5000, oracle=True)
    train = [
        "train.epochs=2",
        "model.config.num_experts=8",
        "model.config.expert_units=[128, 64]",
        "model.config.tower_units=[64]",
    ]
    return sim, train, 60


def experiments_doc(model_version: str, tuned: dict | None) -> dict:
    """A 50/50 test of the hand-picked score weights (control) vs the tuned ones (treatment)."""
    model = {"name": MODEL_NAME, "version": model_version}
    doc: dict = {
        "version": 1,
        "salt": "demo",
        "default": {"model": model, "score": DEFAULT_FORMULA.to_dict()},
        "layers": [],
    }
    if tuned is not None:
        doc["layers"].append(
            {
                "name": "score_weights",
                "buckets": 100,
                "variants": [
                    {"name": "control", "buckets": [0, 50], "score": DEFAULT_FORMULA.to_dict()},
                    {"name": "tuned", "buckets": [50, 100], "score": tuned},
                ],
            }
        )
    return doc


def run_demo(workdir: Path, *, quick: bool = False) -> int:
    started = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    data_dir, run_dir, registry = workdir / "data", workdir / "run", workdir / "models"
    sim_config, train_overrides, trials = demo_sizes(quick)

    _step(f"simulate impression logs -> {data_dir}")
    sim = simulate(sim_config, data_dir, progress=not quick)
    print(
        f"{sim.rows:,} impressions, {sim.requests:,} requests, days {sim.days[0]} .. {sim.days[-1]}"
    )

    _step("load and validate with the simulator's feature spec")
    print(summarize(read_log(data_dir, load_default_spec())).render())

    _step(f"train MMoE + EMTL + self-auxiliary heads -> {run_dir}")
    config = load_config(
        None,
        [
            f"data.paths=[{data_dir}]",
            f"out={run_dir}",
            "model.kind=mmoe",
            "model.config.feeds={completion: click}",
            "balancer.name=emtl",
            "aux.form=bottleneck",
            "optimizer.lr=0.003",
            *train_overrides,
        ],
    )
    result = Trainer(config, prepare_data(config), run_dir, progress=not quick).fit()
    print(render_metrics(result))
    print(f"plots: {', '.join(sorted(p.name for p in run_dir.glob('*.png')))} in {run_dir}")

    _step(f"export ONNX (no auxiliary heads) -> {registry}")
    manifest = export_run(run_dir, registry, MODEL_NAME)
    version_dir = registry / MODEL_NAME / manifest.version
    print(
        f"{MODEL_NAME} {manifest.version}: sha256 {manifest.sha256[:16]}..., ONNX vs PyTorch max diff {manifest.exporter['parity_max_diff']:.1e}"
    )

    _step("tune the ranking-score weights on the validation day")
    tuned = tune(version_dir, [str(data_dir)], trials=trials, seed=0, progress=not quick)
    written = write_outputs(
        tuned, workdir / "tuning", {"name": MODEL_NAME, "version": manifest.version}
    )
    print(render(tuned))
    print(f"Pareto front: {written['png']}")

    experiments = workdir / "experiments.yaml"
    doc = experiments_doc(manifest.version, tuned.best.to_dict() if tuned.best else None)
    experiments.write_text(yaml.safe_dump(doc, sort_keys=False))
    print(f"\nexperiment config (control = hand-picked weights, tuned = treatment): {experiments}")
    print(f"\ndemo finished in {time.perf_counter() - started:.1f} s")
    return 0
