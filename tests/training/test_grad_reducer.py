"""The overlapped gradient all-reduce (training/grad_reducer.py): bucket planning, a 1-process
world that adds nothing, and 2 gloo ranks checked against gradients summed by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests.training.grad_reducer_worker import check_reducer
from training.config import ConfigError, load_config
from training.distributed import DistributedWorld
from training.grad_reducer import AfterBackward, OverlappedReducer, gradient_sync, plan_buckets


def _params(*sizes: int, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    return [torch.zeros(n, dtype=dtype, requires_grad=True) for n in sizes]


def test_buckets_are_cut_in_reverse_order_at_the_cap() -> None:
    params = _params(4, 2, 2, 10, 1)  # float32: 16, 8, 8, 40, 4 bytes
    buckets = plan_buckets(params, bucket_bytes=16)
    assert [[p.numel() for p in b] for b in buckets] == [[1], [10], [2, 2], [4]]
    assert buckets[0][0] is params[-1]  # the last registered is produced first by backward


def test_buckets_hold_one_dtype_and_skip_frozen_parameters() -> None:
    params = [*_params(2, 2), *_params(2, dtype=torch.float64)]
    params.append(torch.zeros(3))  # no gradient wanted
    buckets = plan_buckets(params, bucket_bytes=1e6)
    assert [[p.numel() for p in b] for b in buckets] == [[2], [2, 2]]
    assert buckets[0][0].dtype == torch.float64


def test_one_process_registers_no_hooks() -> None:
    params = _params(3, 5)
    reducer = OverlappedReducer(params, [], DistributedWorld(), bucket_mb=1.0)
    assert reducer.buckets == []
    assert all(p._post_accumulate_grad_hooks is None for p in params)
    reducer.backward(sum(p.sum() for p in params))
    assert all(p.grad is not None and bool((p.grad == 1).all()) for p in params)


def test_autograd_grad_fires_no_post_accumulate_hook() -> None:
    """What lets the Gramian on parameters (torch.autograd.grad) run beside the hooks."""
    param = torch.ones(3, requires_grad=True)
    fired: list[torch.Tensor] = []
    param.register_post_accumulate_grad_hook(fired.append)
    loss = (param * 2).sum()
    torch.autograd.grad(loss, [param], retain_graph=True)
    assert fired == [] and param.grad is None
    loss.backward()
    assert fired == [param]


def test_config_chooses_the_path() -> None:
    params = _params(3)
    config = load_config(None, [])
    assert config.train.overlap_allreduce and config.train.bucket_mb > 0
    on = gradient_sync(params, [], DistributedWorld(), True, 1.0)
    off = gradient_sync(params, [], DistributedWorld(), False, 1.0)
    assert isinstance(on, OverlappedReducer) and isinstance(off, AfterBackward)
    with pytest.raises(ConfigError, match=r"train\.bucket_mb"):
        load_config(None, ["train.bucket_mb=0"])
    with pytest.raises(ConfigError, match=r"train\.overlap_allreduce"):
        load_config(None, ["train.overlap_allreduce=maybe"])


def test_two_gloo_ranks_sum_buckets_unused_and_sparse_gradients(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bucket boundaries, a layer no rank uses (stays None), one only rank 1 uses (zeros on rank
    0), sparse embedding rows, bfloat16 autocast, three steps in a row; equal to sum_gradients."""
    # Spawned ranks start with this sys.path and import the worker from tests.training.
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    mp.spawn(check_reducer, args=(str(tmp_path / "store"),), nprocs=2, join=True)
