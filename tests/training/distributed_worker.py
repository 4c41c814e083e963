"""Run under `torchrun` by tests/training/test_distributed.py: one process group, one tiny
training run per balancer, each into OUT/<method>. Not a test module itself.

usage: torchrun --nproc_per_node=2 -m tests.training.distributed_worker LOG OUT BATCH M1 [M2 ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from tests.conftest import tiny_overrides
from training.config import load_config
from training.distributed import barrier, close_world, init_world
from training.prepare import prepare_data
from training.trainer import Trainer


def train_methods(log: Path, out: Path, batch_size: int, methods: list[str]) -> None:
    world = init_world()
    try:
        for method in methods:
            run_dir = out / method
            config = load_config(None, ddp_overrides(log, run_dir, batch_size, method))
            Trainer(config, prepare_data(config), run_dir, world=world, progress=False).fit()
            # What this rank seeded its last epoch's dropout draws with.
            (run_dir / f"seed_rank{world.rank}.txt").write_text(str(torch.initial_seed()))
            barrier(world)
    finally:
        close_world(world)


# What a `+flag` after a method name adds to its run.
FLAGS = {
    # the streaming path: each rank reads its own row groups
    "stream": ["data.stream=true", "data.shuffle_buffer_rows=500"],
    # one all-reduce after the backward instead of buckets during it
    "after": ["train.overlap_allreduce=false"],
    "params": ["balancer.gradients=parameters"],
    "bf16": ["train.precision=bfloat16"],
}


def ddp_overrides(log: Path, run_dir: Path, batch_size: int, method: str) -> list[str]:
    """One whole epoch (no step cap, so the last partial batch runs), dropout off, all-reduce
    buckets of about 1 KB (the tiny model's gradients span several). `NAME+flag+...` trains
    NAME with each flag's overrides (FLAGS), e.g. `emtl+stream`."""
    method, *flags = method.split("+")
    return tiny_overrides(
        log,
        run_dir,
        *(key for flag in flags for key in FLAGS[flag]),
        f"balancer.name={method}",
        "train.epochs=1",
        f"train.batch_size={batch_size}",
        "train.max_steps_per_epoch=null",
        "model.config.dropout=0.0",
        "train.bucket_mb=0.001",
    )


if __name__ == "__main__":
    train_methods(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4:])
