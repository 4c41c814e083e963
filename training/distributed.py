"""Data-parallel training over `torchrun`: process group set-up and the few collectives we need.

Every rank holds the same model and walks the same shuffled order; each takes its slice of every
global batch. Gradients are averaged across ranks after each backward (one coalesced all-reduce), the
task losses and the Gramian too, so a balancer sees the global batch and its state stays identical
on every rank. gloo on CPU, nccl on GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class World:
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
        """This rank's contiguous part of a global batch of `rows` rows."""
        per_rank = -(-rows // self.size)
        start = min(self.rank * per_rank, rows)
        return slice(start, min(start + per_rank, rows))


def init_world() -> World:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1), else a 1-process world."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(device="cuda" if torch.cuda.is_available() else "cpu")
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return World(rank=rank, size=size, device=f"cuda:{local_rank}" if use_cuda else "cpu")


def close_world(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: Tensor, world: World) -> Tensor:
    """Sum over ranks (a no-op in a 1-process world); returns a new tensor."""
    if not world.distributed:
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out)
    return out


def average_gradients(parameters: list[torch.nn.Parameter], world: World) -> None:
    """Average `.grad` over ranks with one coalesced all-reduce."""
    if not world.distributed:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world.size
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()
