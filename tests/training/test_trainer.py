"""Trainer: an end-to-end run, determinism, resume == uninterrupted, config errors, data parallel."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cli.main import main
from ranker.models import AuxConfig
from tests.conftest import tiny_overrides
from training.checkpoint import BEST, CHECKPOINT, load_best
from training.config import ConfigError, load_config
from training.data import EncodedData
from training.prepare import prepare_data
from training.trainer import Trainer


def run(log: Path, run_dir: Path, *extra: str, resume: bool = False) -> dict:
    config = load_config(None, tiny_overrides(log, run_dir, *extra))
    trainer = Trainer(config, prepare_data(config), run_dir, progress=False)
    if resume:
        trainer.load_checkpoint(run_dir / CHECKPOINT)
    return trainer.fit()


def model_state(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / CHECKPOINT, weights_only=True)["wrapper_state"]


def test_run_writes_metrics_plots_and_checkpoints(tiny_log: Path, tmp_path: Path) -> None:
    result = run(tiny_log, tmp_path, "balancer.name=emtl", "aux.form=bottleneck")
    for name in (
        "metrics.json",
        "steps.csv",
        BEST,
        CHECKPOINT,
        "losses.png",
        "equity.png",
        "weights.png",
        "gates.png",
    ):
        assert (tmp_path / name).exists(), name
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert doc["epochs_run"] == 2 and doc["steps"] == 8
    test = doc["test"]
    assert 0.0 <= test["click"]["auc"] <= 1.0
    assert test["click"]["oracle_auc"] > 0.6  # the simulator's Bayes-optimal AUC
    assert np.isfinite(test["watch_time"]["rmse"]) and "gap_rmse" in test["watch_time"]
    assert result["test"] == test
    model = load_best(tmp_path / BEST)
    assert not any("aux" in name for name in model.state_dict())


def test_same_seed_same_model(tiny_log: Path, tmp_path: Path) -> None:
    run(tiny_log, tmp_path / "a", "balancer.name=famo")
    run(tiny_log, tmp_path / "b", "balancer.name=famo")
    a, b = model_state(tmp_path / "a"), model_state(tmp_path / "b")
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize(
    ("method", "ema"), [("emtl", "train.ema_decay=0"), ("uw", "train.ema_decay=0.9")]
)
def test_resume_equals_uninterrupted(tiny_log: Path, tmp_path: Path, method: str, ema: str) -> None:
    extra = (f"balancer.name={method}", "aux.form=linear", "model.config.dropout=0.2", ema)
    run(tiny_log, tmp_path / "whole", *extra)
    run(tiny_log, tmp_path / "parts", *extra, "train.epochs=1")
    run(tiny_log, tmp_path / "parts", *extra, resume=True)
    whole, parts = model_state(tmp_path / "whole"), model_state(tmp_path / "parts")
    for name in whole:
        assert torch.equal(whole[name], parts[name]), name
    a = json.loads((tmp_path / "whole" / "metrics.json").read_text())["test"]
    b = json.loads((tmp_path / "parts" / "metrics.json").read_text())["test"]
    assert a == b
    # best.pt too: with train.ema_decay it holds the average, which the checkpoint carries over.
    best_whole = torch.load(tmp_path / "whole" / BEST, weights_only=True)["model_state"]
    best_parts = torch.load(tmp_path / "parts" / BEST, weights_only=True)["model_state"]
    for name in best_whole:
        assert torch.equal(best_whole[name], best_parts[name]), name


def test_weight_average_is_what_is_validated_and_kept(tiny_log: Path, tmp_path: Path) -> None:
    """With train.ema_decay, best.pt holds the moving average of the weights (not the last
    step's): the steps' weights weighted decay^k apart, k steps before the last, normalised."""
    config = load_config(
        None, tiny_overrides(tiny_log, tmp_path, "train.ema_decay=0.5", "train.epochs=1")
    )
    trainer = Trainer(config, prepare_data(config), tmp_path, progress=False)
    seen: list[dict[str, torch.Tensor]] = []
    step = trainer.train_step

    def record(batch: EncodedData) -> dict:
        out = step(batch)
        seen.append({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})
        return out

    trainer.train_step = record  # type: ignore[method-assign]
    trainer.fit()
    assert len(seen) == 4
    best = torch.load(tmp_path / BEST, weights_only=True)["model_state"]
    name = "inputs.item.table.weight"
    weights = [0.5 ** (len(seen) - 1 - t) for t in range(len(seen))]
    expected = sum(w * state[name] for w, state in zip(weights, seen, strict=True)) / sum(weights)
    assert torch.allclose(best[name], expected, atol=1e-6)
    assert not torch.allclose(best[name], seen[-1][name])  # not the last step's weights
    raw = torch.load(tmp_path / CHECKPOINT, weights_only=True)["wrapper_state"]
    assert torch.equal(raw[f"model.{name}"], seen[-1][name])  # training goes on from the raw ones


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.epochs=0", "train.epochs"),
        ("train.batch_size=big", "train.batch_size"),
        ("train.bogus=1", "train.bogus"),
        ("model.config.num_expertz=4", "model.config.num_expertz"),
        ("model.kind=transformer", "model.kind"),
        ("balancer.name=magic", "balancer.name"),
        ("balancer.params.rho_=0.1", "balancer.params.rho_"),
        ("balancer.gradients=both", "balancer.gradients"),
        ("optimizer.task_lr.clicks=0.1", "optimizer.task_lr.clicks"),
        ("aux.form=huge", "aux.form"),
        ("aux.gamma=-1", "aux"),  # the model library's own check, under the section's key
        ("aux.tasks=[dwell]", "aux.tasks"),
        ("data.paths=7", "data.paths"),
    ],
)
def test_bad_config_names_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["balancer.name=emtl", override] if "rho_" in override else [override])
    assert str(info.value).startswith(key)


def test_the_aux_section_is_the_model_librarys_config_filled_over_its_default() -> None:
    assert load_config(None).aux == AuxConfig(form="none")
    # A section fills in over the training default (no heads), not over AuxConfig's own default.
    assert load_config(None, ["aux.gamma=0.5"]).aux == AuxConfig(form="none", gamma=0.5)
    on = load_config(None, ["aux.form=pool", "aux.tasks=[click]"]).aux
    assert on == AuxConfig(form="pool", tasks=("click",))


def test_cli_reports_errors_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "train.yaml"
    config.write_text("train: {epochs: [1]}\n")
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "train.epochs: expected an integer" in err and "Traceback" not in err
    assert main(["train", f"out={tmp_path}", "--resume"]) == 2
    assert "no checkpoint to resume from" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("gradients", ["representation", "parameters"])
def test_two_process_data_parallel_matches_single_process(
    tiny_log: Path, tmp_path: Path, gradients: str
) -> None:
    extra = ["balancer.name=emtl", f"balancer.gradients={gradients}", "train.epochs=1"]
    single = tmp_path / "single"
    run(tiny_log, single, *extra)
    parallel = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        "-m",
        "cli.main",
        "train",
        "--quiet",
        *tiny_overrides(tiny_log, parallel, *extra),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = model_state(single), model_state(parallel)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5, msg=name)
    balancer_a = torch.load(single / CHECKPOINT, weights_only=True)["balancer_state"]
    balancer_b = torch.load(parallel / CHECKPOINT, weights_only=True)["balancer_state"]
    for name in balancer_a:
        torch.testing.assert_close(
            balancer_b[name], balancer_a[name], rtol=1e-4, atol=1e-6, msg=name
        )


def test_compare_grid_writes_tables_and_plots(tiny_log: Path, tmp_path: Path) -> None:
    from training.compare import load_compare_config, run_compare

    base = {
        "data": {"paths": [str(tiny_log)]},
        "train": {"epochs": 1, "batch_size": 256, "max_steps_per_epoch": 2, "threads": 1},
    }
    base["model"] = {
        "config": {"num_experts": 2, "expert_units": [8], "tower_units": [4], "embedding_dim": 4}
    }
    config = load_compare_config(
        None,
        [
            f"out={tmp_path}",
            "models=[mmoe]",
            "balancers=[ew, emtl]",
            "aux=[none, linear]",
            "seeds=[0, 1]",
        ],
    )
    config = dataclasses.replace(config, base=base)
    written = run_compare(config, progress=False)
    summary = written["markdown"].read_text()
    assert summary.count("| mmoe |") == 4
    rows = written["results"].read_text().strip().splitlines()
    assert len(rows) == 1 + 8
    assert "+0.00" in summary  # ew without aux is its own baseline
    for name in ("pareto", "equity"):
        assert written[name].exists()
    with pytest.raises(ConfigError, match=r"balancer\.name"):
        load_compare_config(None, ["balancers=[ew, nope]"])


def test_every_command_is_registered() -> None:
    from cli.main import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    expected = {"simulate", "import-kuairand", "summary", "train", "compare", "export", "tune"}
    expected |= {"retrain", "serve", "simulate-traffic", "ab-report", "demo"}
    assert expected <= set(commands)


def _rows_read(trainer: Trainer, batch: EncodedData) -> dict[str, torch.Tensor]:
    """Table rows each input group's embedding table reads for `batch`."""
    inputs = trainer._tensors(batch.inputs, slice(0, batch.rows))
    layer = trainer.model.inputs
    read = {}
    for g, part in (("user", layer.user), ("item", layer.item)):
        ids = [inputs[f"{g}_cat"] + part.cat_offsets]
        if f"{g}_multi" in inputs:
            ids.append(inputs[f"{g}_multi"] + part.multi_offsets)
        read[g] = torch.cat(ids, dim=1).unique()
    return read


@pytest.mark.parametrize("sparse", [True, False])
def test_sparse_embeddings_step_only_the_rows_a_batch_reads(
    tiny_log: Path, tmp_path: Path, sparse: bool
) -> None:
    config = load_config(
        None,
        tiny_overrides(
            tiny_log,
            tmp_path,
            f"optimizer.sparse_embeddings={str(sparse).lower()}",
            "optimizer.task_lr={click: 0.01}",
            "optimizer.clip_norm=1.0",
        ),
    )
    trainer = Trainer(config, prepare_data(config), tmp_path, progress=False)
    tables = {"user": trainer.model.inputs.user.table, "item": trainer.model.inputs.item.table}
    weights = {g: t.weight for g, t in tables.items() if t is not None}
    names = {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}
    if sparse:  # tables in SparseAdam at the shared rate, per-task rates kept
        assert names["shared_embeddings"] == config.optimizer.lr
        assert trainer.optimizer.sparse is not None
        in_sparse = {id(p) for g in trainer.optimizer.sparse.param_groups for p in g["params"]}
        assert in_sparse == {id(w) for w in weights.values()} and len(in_sparse) == 2
    first, second = list(trainer.data.train.slices(256))[:2]
    trainer.train_step(first)
    before = {g: w.detach().clone() for g, w in weights.items()}
    trainer.train_step(second)
    read = _rows_read(trainer, second)
    moved_elsewhere = 0
    for g, weight in weights.items():
        changed = (weight.detach() != before[g]).any(dim=1).nonzero().flatten()
        assert len(changed) > 0
        moved_elsewhere += int((~torch.isin(changed, read[g])).sum())
    # SparseAdam leaves rows the batch did not read alone; dense Adam's momentum moves them.
    assert (moved_elsewhere == 0) if sparse else (moved_elsewhere > 0)


def test_checkpoint_is_atomic_sized_and_not_rewritten_without_steps(
    tiny_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = load_config(None, tiny_overrides(tiny_log, tmp_path, "train.epochs=1"))
    trainer = Trainer(config, prepare_data(config), tmp_path, progress=True)
    doc = trainer.fit()
    checkpoint = tmp_path / CHECKPOINT
    size = checkpoint.stat().st_size
    assert doc["checkpoint_bytes"] == size > 0
    assert f"checkpoint: {size / 1e6:.1f} MB" in capsys.readouterr().out
    assert not list(tmp_path.glob("*.tmp"))
    written = checkpoint.stat().st_mtime_ns
    again = Trainer(config, prepare_data(config), tmp_path, progress=False)
    again.load_checkpoint(checkpoint)
    again.save_checkpoint(checkpoint)  # nothing trained since: the file already holds this state
    assert checkpoint.stat().st_mtime_ns == written


def test_clip_grad_norm_counts_sparse_rows_once() -> None:
    from training.optimizer import clip_grad_norm

    table = torch.nn.Embedding(10, 3, sparse=True)
    twin = torch.nn.Embedding(10, 3)
    twin.weight.data.copy_(table.weight.data)
    ids = torch.tensor([1, 2, 2, 7])
    (table(ids) ** 2).sum().backward()
    (twin(ids) ** 2).sum().backward()
    expected = torch.nn.utils.clip_grad_norm_([twin.weight], 0.5)
    total = clip_grad_norm([table.weight], 0.5)
    assert total == pytest.approx(float(expected), rel=1e-6)
    assert table.weight.grad is not None
    torch.testing.assert_close(table.weight.grad.to_dense(), twin.weight.grad)


def test_bfloat16_mixed_precision_trains_float32_weights(tiny_log: Path, tmp_path: Path) -> None:
    fp32 = run(tiny_log, tmp_path / "fp32", "train.epochs=1")
    bf16 = run(tiny_log, tmp_path / "bf16", "train.epochs=1", "train.precision=bfloat16")
    a, b = model_state(tmp_path / "fp32"), model_state(tmp_path / "bf16")
    assert all(v.dtype == a[k].dtype for k, v in b.items())  # weights stay float32
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the forward did run in bfloat16
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0.05, atol=0.02, msg=name)
    assert abs(bf16["test"]["click"]["auc"] - fp32["test"]["click"]["auc"]) < 0.05
    with pytest.raises(ConfigError, match=r"train\.precision"):
        load_config(None, ["train.precision=fp8"])


def test_the_average_weighs_only_the_steps_taken() -> None:
    """The bias-corrected EMA of constant weights is those weights from the first update on
    (torch's plain EMA from a copy would be too, but not from a start far from them)."""
    from torch.optim.swa_utils import AveragedModel

    from training.weight_average import ema_fn

    model = torch.nn.Linear(3, 1)
    average = AveragedModel(model, multi_avg_fn=ema_fn(0.99))
    values = [torch.full((1, 3), float(v)) for v in (4.0, 0.0, 2.0)]
    for value in values:
        with torch.no_grad():
            model.weight.copy_(value)
        average.update_parameters(model)
    weights = torch.tensor([0.99**2, 0.99, 1.0])
    expected = sum(w * v for w, v in zip(weights, values, strict=True)) / weights.sum()
    assert torch.allclose(average.module.weight, expected)
    with pytest.raises(ValueError, match="decay"):
        ema_fn(1.0)
