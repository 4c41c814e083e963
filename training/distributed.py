"""Data-parallel training over `torchrun`: process group set-up and the few collectives we need.

Every rank holds the same model and walks the same shuffled order; each takes its slice of every
global batch. A rank weights its mean losses by its share of the batch's rows (local / global), so
summing over ranks gives the global batch's mean losses, gradients and Gramian exactly, whatever the
split; a rank whose slice is empty (a 1-row last batch on 2 ranks) contributes zeros, never a NaN.
The sums are all-reduced, so a balancer sees the global batch and its state stays identical on every
rank. Dropout masks differ by rank (`rank_seed`); the data order does not. gloo on CPU, nccl on GPU.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class DistributedWorld:
    """This process's place in a data-parallel job (torch.distributed's "world"): its rank, the
    number of ranks and its device. Not the simulated world (sim.world.World)."""

    rank: int = 0
    size: int = 1
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def shard(self, rows: int) -> slice:
        """This rank's contiguous part of a global batch of `rows` rows: sizes differ by at most
        one row. Empty when `rows < size`: the caller weights such a rank 0."""
        base, extra = divmod(rows, self.size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))


def rank_seed(seed: int, epoch: int, rank: int) -> int:
    """The torch seed of one rank's epoch: dropout masks differ across ranks and epochs, and an
    epoch's draws do not depend on what ran before it (a resumed run replays them exactly)."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def init_world() -> DistributedWorld:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1), else a 1-process world."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return DistributedWorld(device="cuda" if torch.cuda.is_available() else "cpu")
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistributedWorld(
        rank=rank, size=size, device=f"cuda:{local_rank}" if use_cuda else "cpu"
    )


def close_world(world: DistributedWorld) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: Tensor, world: DistributedWorld) -> Tensor:
    """Sum over ranks (a no-op in a 1-process world); returns a new tensor."""
    if not world.distributed:
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out)
    return out


def sum_gradients(parameters: Sequence[Tensor], world: DistributedWorld) -> None:
    """Sum `.grad` over ranks: dense gradients in one coalesced all-reduce, row-sparse ones
    (sparse embedding tables) by gathering every rank's touched rows and values and coalescing.

    Each rank's gradients must already carry its share of the global batch (the trainer scales
    its losses by local rows / global rows), so the sum is the global batch's gradient. Every
    rank must hold a gradient for the same parameters (a rank with no rows still runs a backward).
    The trainer's default overlaps this with the backward instead (training/grad_reducer.py).
    """
    if not world.distributed:
        return
    dense = [p.grad for p in parameters if p.grad is not None and not p.grad.is_sparse]
    if dense:
        flat = torch.cat([g.reshape(-1) for g in dense])
        dist.all_reduce(flat)
        offset = 0
        for g in dense:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()
    for p in parameters:
        if p.grad is not None and p.grad.is_sparse:
            p.grad = gather_sparse(p.grad, world)


def gather_sparse(grad: Tensor, world: DistributedWorld) -> Tensor:
    """The sum over ranks of a sparse COO gradient [rows, D] (indices on dim 0), coalesced.

    Ranks touch different rows, so the indices and values are all-gathered (padded to the longest
    rank) rather than all-reduced; works with gloo and nccl alike.
    """
    grad = grad.coalesce()
    index, values = grad.indices()[0], grad.values()
    count = torch.tensor([index.numel()], device=index.device)
    counts = [torch.zeros_like(count) for _ in range(world.size)]
    dist.all_gather(counts, count)
    sizes = [int(c.item()) for c in counts]
    longest = max(sizes)
    pad = longest - index.numel()
    index = torch.cat([index, index.new_zeros(pad)])
    values = torch.cat([values, values.new_zeros((pad, *values.shape[1:]))])
    indices = [torch.empty_like(index) for _ in range(world.size)]
    gathered = [torch.empty_like(values) for _ in range(world.size)]
    dist.all_gather(indices, index)
    dist.all_gather(gathered, values)
    all_index = torch.cat([i[:n] for i, n in zip(indices, sizes, strict=True)])
    all_values = torch.cat([v[:n] for v, n in zip(gathered, sizes, strict=True)])
    return torch.sparse_coo_tensor(all_index.unsqueeze(0), all_values, grad.shape).coalesce()


def barrier(world: DistributedWorld) -> None:
    if world.distributed:
        dist.barrier()
