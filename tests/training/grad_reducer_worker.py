"""Run in 2 spawned processes (gloo) by tests/training/test_grad_reducer.py: the overlapped
reducer against gradients summed by hand and against `sum_gradients`. Not a test module itself.

Each rank knows both ranks' inputs, so it computes the expected global gradient alone.
"""

from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn

from training.distributed import DistributedWorld
from training.grad_reducer import AfterBackward, GradientSync, OverlappedReducer

# Bucket cap of 9 float32s: [rank_one.bias, rank_one.weight], [out.bias, out.weight],
# [hidden.bias], [hidden.weight], [unused.bias, unused.weight] (reverse registration order).
BUCKET_MB = 9 * 4 / 2**20


class Net(nn.Module):
    """A sparse table, two used layers, one layer that only rank 1 uses when `skew` and one
    no rank uses (registered first, so it lands in the last bucket)."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Linear(8, 1)
        self.table = nn.Embedding(50, 4, sparse=True)
        self.hidden = nn.Linear(4, 8)
        self.out = nn.Linear(8, 1)
        self.rank_one = nn.Linear(8, 1)

    def forward(self, ids: Tensor, rank: int, skew: bool) -> Tensor:
        h = torch.relu(self.hidden(self.table(ids).mean(1)))  # [B, 8]
        y = self.out(h).sum()
        return y + self.rank_one(h).sum() if rank == 1 or not skew else y

    def dense(self) -> list[Tensor]:
        return [p for name, p in self.named_parameters() if name != "table.weight"]


def _ids(rank: int, step: int) -> Tensor:
    return torch.randint(0, 50, (6, 3), generator=torch.Generator().manual_seed(10 * step + rank))


def _net() -> Net:
    torch.manual_seed(0)
    return Net()


def _grads(net: Net) -> dict[str, Tensor | None]:
    out: dict[str, Tensor | None] = {}
    for name, p in net.named_parameters():
        out[name] = None if p.grad is None else p.grad.to_dense()
    return out


def _expected(step: int, skew: bool, bfloat16: bool) -> dict[str, Tensor | None]:
    """Both ranks' gradients of step `step`, summed here without any collective."""
    total: dict[str, Tensor | None] = {}
    for rank in (0, 1):
        net = _net()
        with torch.autocast("cpu", torch.bfloat16, enabled=bfloat16):
            loss = net(_ids(rank, step), rank, skew)
        loss.backward()
        for name, grad in _grads(net).items():
            previous = total.get(name)
            total[name] = grad if previous is None else previous + (0 if grad is None else grad)
    return total


def _step(net: Net, sync: GradientSync, rank: int, step: int, skew: bool, bf16: bool) -> None:
    net.zero_grad(set_to_none=True)
    with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        loss = net(_ids(rank, step), rank, skew)
    # As the trainer's Gramian on parameters: autograd.grad fills no .grad and fires no hook.
    torch.autograd.grad(loss, [net.hidden.weight], retain_graph=True)
    sync.backward(loss)


def _check(got: dict[str, Tensor | None], want: dict[str, Tensor | None], what: str) -> None:
    assert got.keys() == want.keys()
    for name, grad in got.items():
        expected = want[name]
        if expected is None or grad is None:
            assert grad is None and expected is None, f"{what}: {name}"
            continue
        assert grad.dtype == torch.float32, f"{what}: {name} {grad.dtype}"
        torch.testing.assert_close(grad, expected, msg=f"{what}: {name}")


def check_reducer(rank: int, store: str) -> None:
    """The entry point of each spawned rank; an assertion error fails the parent's test."""
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=2,
        timeout=timedelta(seconds=60),
    )
    try:
        world = DistributedWorld(rank=rank, size=2)
        net = _net()
        reducer = OverlappedReducer(net.dense(), [net.table.weight], world, BUCKET_MB)
        sizes = [[p.numel() for p in bucket] for bucket in reducer.buckets]
        assert sizes == [[1, 8], [1, 8], [8], [32], [1, 8]], sizes
        plain = _net()
        after = AfterBackward([*plain.dense(), plain.table.weight], world)
        for step, skew, bfloat16 in ((0, True, False), (1, False, False), (2, False, True)):
            want = _expected(step, skew, bfloat16)
            _step(net, reducer, rank, step, skew, bfloat16)
            _check(_grads(net), want, f"overlapped, step {step}")
            # The unused layer's bucket always waits for the end; under `skew` rank 0 never
            # fills bucket 0 (rank_one), so it launches every bucket at the end.
            assert reducer.overlapped == (0 if skew and rank == 0 else 4), reducer.overlapped
            if skew:
                continue  # sum_gradients needs the same gradients on every rank
            _step(plain, after, rank, step, skew, bfloat16)
            for name, grad in _grads(plain).items():  # the two paths agree to the bit
                other = _grads(net)[name]
                same = grad is None and other is None
                assert same or (grad is not None and other is not None and torch.equal(grad, other))
        reducer.close()
        assert all(p._post_accumulate_grad_hooks == {} for p in net.dense())
    finally:
        dist.destroy_process_group()
