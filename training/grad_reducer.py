"""Gradient all-reduce overlapped with the backward pass: bucketed post-accumulate-grad hooks.

Not PyTorch DDP: the trainer scales each rank's losses by its row share, weights them with a
balancer fed all-reduced Gramians and trains embedding tables with row-sparse gradients, so it
owns the loss and the collectives. What DDP would add is the overlap, done here the same way:
dense parameters are packed into buckets of about `bucket_mb` in reverse registration order (the
order a backward produces their gradients) and a bucket's all-reduce starts, asynchronously, as
soon as its last gradient is accumulated, while the backward goes on with the earlier layers.

Every balancer allows it: the weights are fixed before the one backward, and the Gramian's
per-task gradients come from `torch.autograd.grad`, which fills no `.grad` and fires no hook
(the hooks act only inside `backward` anyway). Buckets are launched strictly in index order, so
every rank issues the same collectives in the same order whatever order its hooks fire in. Each
bucket carries one "had a gradient" count per parameter: a gradient missing on a rank counts as
zeros, one missing on every rank stays None (as after `sum_gradients`, so Adam skips it). Such
a parameter holds its bucket, and every later one, until the backward ends: less overlap, the
same sums.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.hooks import RemovableHandle

from training.distributed import DistributedWorld, gather_sparse, sum_gradients


class GradientSync(Protocol):
    """One backward whose dense and sparse gradients end summed over ranks."""

    def backward(self, loss: Tensor) -> None: ...


class AfterBackward:
    """The backward, then one coalesced all-reduce of every dense gradient (`sum_gradients`)."""

    def __init__(self, parameters: Sequence[Tensor], world: DistributedWorld) -> None:
        self.parameters = list(parameters)
        self.world = world

    def backward(self, loss: Tensor) -> None:
        loss.backward()
        sum_gradients(self.parameters, self.world)


def plan_buckets(parameters: Sequence[Tensor], bucket_bytes: float) -> list[list[Tensor]]:
    """Parameters that need gradients, last registered first, cut into buckets of at most
    `bucket_bytes` (a larger parameter gets a bucket of its own); one dtype and device each."""
    buckets: list[list[Tensor]] = []
    size = 0.0
    for param in reversed([p for p in parameters if p.requires_grad]):
        nbytes = param.numel() * param.element_size()
        last = buckets[-1][-1] if buckets else None
        fits = last is not None and size + nbytes <= bucket_bytes
        if fits and last is not None and (last.dtype, last.device) == (param.dtype, param.device):
            buckets[-1].append(param)
            size += nbytes
        else:
            buckets.append([param])
            size = nbytes
    return buckets


class OverlappedReducer:
    """Sums dense gradients over ranks bucket by bucket during `backward`, then gathers the
    row-sparse ones (`gather_sparse`, as `sum_gradients` does). A 1-process world registers
    no hook: `backward` is the plain backward."""

    def __init__(
        self,
        dense: Sequence[Tensor],
        sparse: Sequence[Tensor],
        world: DistributedWorld,
        bucket_mb: float = 1.0,
    ) -> None:
        self.world = world
        self.sparse = list(sparse)
        self.buckets = plan_buckets(dense, bucket_mb * 2**20) if world.distributed else []
        self._bucket_of = {id(p): i for i, bucket in enumerate(self.buckets) for p in bucket}
        self._handles: list[RemovableHandle] = [
            p.register_post_accumulate_grad_hook(self._accumulated)
            for bucket in self.buckets
            for p in bucket
        ]
        self._armed = False
        # Buckets of the last backward whose all-reduce started before the backward ended.
        self.overlapped = 0
        self._begin()

    def close(self) -> None:
        """Remove the hooks (the parameters may outlive this reducer)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def backward(self, loss: Tensor) -> None:
        """`loss.backward()` with each dense bucket's all-reduce started as it fills; on return
        every `.grad` holds the sum over ranks."""
        if not self.world.distributed:
            loss.backward()
            return
        self._begin()
        self._armed = True
        try:
            loss.backward()
        finally:
            self._armed = False
        self._finish()

    def _begin(self) -> None:
        self._seen: set[int] = set()
        self._waiting = [len(bucket) for bucket in self.buckets]
        self._flats: list[Tensor] = []
        self._works: list[dist.Work | None] = []

    def _accumulated(self, param: Tensor) -> None:
        if not self._armed:
            return  # a backward outside `backward` (a test, a probe): not ours to reduce
        if id(param) in self._seen:
            raise RuntimeError(
                "OverlappedReducer: a gradient was accumulated twice in one backward "
                "(one backward per step, or set train.overlap_allreduce=false)"
            )
        self._seen.add(id(param))
        self._waiting[self._bucket_of[id(param)]] -= 1
        # In index order only: every rank must issue the same collectives in the same order.
        while len(self._works) < len(self.buckets) and self._waiting[len(self._works)] == 0:
            self._launch(len(self._works))

    def _launch(self, index: int) -> None:
        params = self.buckets[index]
        for p in params:
            if p.grad is not None and p.grad.is_sparse:
                raise RuntimeError("OverlappedReducer: a sparse gradient on a dense parameter")
        parts = [
            p.grad.reshape(-1) if p.grad is not None else p.new_zeros(p.numel()) for p in params
        ]
        had = [1.0 if p.grad is not None else 0.0 for p in params]
        flat = torch.cat(
            [*parts, torch.tensor(had, dtype=params[0].dtype, device=params[0].device)]
        )
        self._flats.append(flat)
        self._works.append(dist.all_reduce(flat, async_op=True))

    def _finish(self) -> None:
        """Launch the buckets whose gradients did not all arrive, wait for every bucket, write
        the sums into `.grad`, then gather the sparse gradients."""
        self.overlapped = len(self._works)
        while len(self._works) < len(self.buckets):
            self._launch(len(self._works))
        for params, flat, work in zip(self.buckets, self._flats, self._works, strict=True):
            if work is not None:
                work.wait()
            _unflatten(params, flat)
        for p in self.sparse:
            if p.grad is not None and p.grad.is_sparse:
                p.grad = gather_sparse(p.grad, self.world)


def _unflatten(params: Sequence[Tensor], flat: Tensor) -> None:
    """Copy a reduced bucket back into `.grad`; a parameter no rank had a gradient for stays
    None."""
    counts = flat[flat.numel() - len(params) :].tolist()
    offset = 0
    for p, count in zip(params, counts, strict=True):
        view = flat[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
        if count == 0:
            continue
        if p.grad is None:
            p.grad = view.clone()
        else:
            p.grad.copy_(view)


def gradient_sync(
    dense: Sequence[Tensor],
    sparse: Sequence[Tensor],
    world: DistributedWorld,
    overlap: bool,
    bucket_mb: float,
) -> GradientSync:
    """The overlapped reducer, or (overlap off) the backward followed by `sum_gradients`."""
    if overlap:
        return OverlappedReducer(dense, sparse, world, bucket_mb)
    return AfterBackward([*dense, *sparse], world)
