"""Data parallelism under real `torchrun` (2 ranks, gloo): a last batch of one row leaves a rank
without rows; every balancer still gets finite global losses and the run equals one process,
with the gradient all-reduce overlapped with the backward (the default) or after it."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.training.distributed_worker import ddp_overrides
from training.checkpoint import CHECKPOINT
from training.config import load_config
from training.distributed import DistributedWorld, rank_seed
from training.prepare import prepare_data
from training.trainer import Trainer

METHODS = ["ew", "uw", "famo", "emtl"]
# Also compared with one process: EMTL's Gramian on the parameters (torch.autograd.grad beside
# the all-reduce hooks) and the all-reduce after the backward (train.overlap_allreduce=false).
MORE = ["emtl+params", "ew+after", "emtl+after"]
# Run overlapped and after the backward and compared with each other: identical bits.
PAIRS = [("ew", "ew+after"), ("emtl", "emtl+after"), ("ew+bf16", "ew+bf16+after")]


@pytest.mark.parametrize("size", [1, 2, 3, 4])
@pytest.mark.parametrize("rows", [0, 1, 2, 5, 6, 9, 2048, 2049])
def test_shard_covers_the_batch_once_with_near_equal_slices(size: int, rows: int) -> None:
    parts = [DistributedWorld(rank=r, size=size).shard(rows) for r in range(size)]
    covered = np.concatenate([np.arange(rows)[p] for p in parts])
    assert covered.tolist() == list(range(rows))  # contiguous, disjoint, in rank order
    lengths = [p.stop - p.start for p in parts]
    assert max(lengths) - min(lengths) <= 1 and sum(lengths) == rows


def test_rank_seeds_differ_by_rank_and_epoch() -> None:
    seeds = {rank_seed(0, epoch, rank) for epoch in range(3) for rank in range(4)}
    assert len(seeds) == 12
    assert rank_seed(7, 1, 1) == rank_seed(7, 1, 1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _one_row_last_batch(log: Path, tmp_path: Path) -> int:
    """A batch size that leaves exactly one row in the epoch's last batch."""
    config = load_config(None, ddp_overrides(log, tmp_path / "probe", 256, "ew"))
    rows = prepare_data(config).train.rows
    return next(b for b in [*range(300, rows - 1), rows - 1] if (rows - 1) % b == 0)


def test_two_ranks_with_a_one_row_last_batch_equal_one_process(
    tiny_log: Path, tmp_path: Path
) -> None:
    batch = _one_row_last_batch(tiny_log, tmp_path)
    parallel = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        "-m",
        "tests.training.distributed_worker",
        str(tiny_log),
        str(parallel),
        str(batch),
        *METHODS,
        *MORE,
        "ew+bf16",
        "ew+bf16+after",
        "emtl+stream",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    for overlapped, after in PAIRS:
        _assert_identical(parallel / overlapped, parallel / after)
    for method in [*METHODS, *MORE]:
        single = tmp_path / "single" / method.removesuffix("+after")
        if not single.exists():
            config = load_config(None, ddp_overrides(tiny_log, single, batch, method))
            data = prepare_data(config)
            assert data.train.rows % batch == 1
            Trainer(config, data, single, progress=False).fit()
        _assert_same_run(single, parallel / method, method)
        seeds = [int((parallel / method / f"seed_rank{r}.txt").read_text()) for r in (0, 1)]
        assert seeds == [rank_seed(0, 0, 0), rank_seed(0, 0, 1)]  # per-rank dropout draws
    # Streaming: each rank reads its own day (row group); the ranks' batches form the global one
    # and a rank that runs out first joins with share 0 until both are done.
    streamed = torch.load(parallel / "emtl+stream" / CHECKPOINT, weights_only=True)
    assert streamed["step"] >= -(-3171 // batch)
    for name, value in streamed["wrapper_state"].items():
        assert torch.isfinite(value).all(), f"streaming: {name} not finite"


def _assert_identical(overlapped: Path, after: Path) -> None:
    """Two ranks' sums are one addition either way, so the two paths train the same bits."""
    a = torch.load(overlapped / CHECKPOINT, weights_only=True)
    b = torch.load(after / CHECKPOINT, weights_only=True)
    assert a["step"] == b["step"]
    for part in ("wrapper_state", "balancer_state"):
        for name, value in a[part].items():
            assert torch.equal(value, b[part][name]), f"{overlapped.name}: {name}"


def _assert_same_run(single: Path, parallel: Path, method: str) -> None:
    a = torch.load(single / CHECKPOINT, weights_only=True)
    b = torch.load(parallel / CHECKPOINT, weights_only=True)
    assert a["step"] == b["step"]
    for name, value in b["wrapper_state"].items():
        assert torch.isfinite(value).all(), f"{method}: {name} not finite"
        torch.testing.assert_close(
            value, a["wrapper_state"][name], rtol=1e-4, atol=1e-5, msg=f"{method}: {name}"
        )
    for name, value in b["balancer_state"].items():
        if value.is_floating_point():
            assert torch.isfinite(value).all(), f"{method}: balancer {name} not finite"
        torch.testing.assert_close(
            value, a["balancer_state"][name], rtol=1e-4, atol=1e-6, msg=f"{method}: {name}"
        )
    with (parallel / "steps.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == a["step"]
    losses = [float(v) for row in rows for k, v in row.items() if k.startswith(("loss_", "w_"))]
    assert np.isfinite(losses).all(), f"{method}: a logged loss or weight is not finite"


@pytest.mark.slow
def test_two_nodes_on_loopback_equal_one_process(tiny_log: Path, tmp_path: Path) -> None:
    """Two `torchrun` launchers (`--nnodes 2`, one rank each) meeting at a c10d rendezvous
    endpoint on 127.0.0.1, as two machines would; a last batch of one row."""
    batch = _one_row_last_batch(tiny_log, tmp_path)
    parallel = tmp_path / "nodes"
    port = _free_port()
    methods = ["ew", "emtl"]

    def launcher() -> subprocess.Popen[str]:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=2",
            "--nproc-per-node=1",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{port}",
            "--rdzv-id=ranker-loopback",
            "--local-addr=127.0.0.1",
            "-m",
            "tests.training.distributed_worker",
            str(tiny_log),
            str(parallel),
            str(batch),
            *methods,
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        return subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )

    nodes = [launcher(), launcher()]
    for node in nodes:
        _, stderr = node.communicate(timeout=600)
        assert node.returncode == 0, stderr[-3000:]
    for method in methods:
        single = tmp_path / "single" / method
        config = load_config(None, ddp_overrides(tiny_log, single, batch, method))
        data = prepare_data(config)
        assert data.train.rows % batch == 1
        Trainer(config, data, single, progress=False).fit()
        _assert_same_run(single, parallel / method, method)
        seeds = {int((parallel / method / f"seed_rank{r}.txt").read_text()) for r in (0, 1)}
        assert seeds == {rank_seed(0, 0, 0), rank_seed(0, 0, 1)}  # one rank per node
