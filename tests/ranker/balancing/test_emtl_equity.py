"""EMTL's purpose, on a real training run: more equal relative rates r_i = L_i / ||g_i||.

A shared MLP trunk with three heads on synthetic data: a regression whose loss starts near 100,
a unit-scale regression and a binary classification. r is measured on the trunk's parameters at
every step; the equity measure is the variance of r across tasks averaged over the last 50 steps
(METHODS.md's equity plot). Only the direction is asserted, not a number.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from ranker.balancing import build_balancer, gramian_on_params

STEPS, BATCH, LAST = 300, 128, 50
SEEDS = (0, 1, 2)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny matrices: one thread is faster and keeps the run reproducible across machines."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def toy_data(seed: int, n: int = 4096, dim: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets from a random teacher: y0 = 10 f0 + noise (MSE ~100 at start), y1 = f1 + noise,
    y2 = 1[f2 + noise > 0]."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=gen)
    hidden = torch.tanh(x @ torch.randn(dim, 32, generator=gen) / math.sqrt(dim))
    f = hidden @ torch.randn(32, 3, generator=gen) / math.sqrt(32)
    f = (f - f.mean(0)) / f.std(0)
    noise = torch.randn(n, 3, generator=gen)
    y = torch.stack([10 * f[:, 0] + noise[:, 0], f[:, 1] + 0.3 * noise[:, 1]], 1)
    return x, torch.cat([y, (f[:, 2:] + 0.5 * noise[:, 2:] > 0).float()], 1)


def final_rate_variance(name: str, seed: int = 0) -> float:
    x, y = toy_data(seed)
    torch.manual_seed(seed)
    trunk = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
    heads = nn.Linear(64, 3)
    optimizer = torch.optim.Adam([*trunk.parameters(), *heads.parameters()], lr=1e-3)
    balancer = build_balancer(name, 3)
    batches = torch.Generator().manual_seed(seed + 1)
    variances = []
    for _ in range(STEPS):
        idx = torch.randint(0, len(x), (BATCH,), generator=batches)
        out, target = heads(trunk(x[idx])), y[idx]
        losses = torch.stack(
            [
                F.mse_loss(out[:, 0], target[:, 0]),
                F.mse_loss(out[:, 1], target[:, 1]),
                F.binary_cross_entropy_with_logits(out[:, 2], target[:, 2]),
            ]
        )
        gramian = gramian_on_params(list(losses), list(trunk.parameters()))
        rates = losses.detach().double() / gramian.diagonal().sqrt()
        variances.append(float(rates.var(unbiased=False)))
        weights = balancer.weights(losses.detach(), gramian)
        optimizer.zero_grad()
        (weights * losses).sum().backward()
        optimizer.step()
    return sum(variances[-LAST:]) / LAST


def test_emtl_equalises_relative_rates_more_than_ew_and_mgda() -> None:
    """Averaged over the first three seeds: the claim is about expected behaviour, and single
    runs can tie. On seed 0 MGDA matches EMTL (0.385 vs 0.388) by starving the large-loss task
    (weight ~0, its loss stays ~64 while EMTL's reaches ~7): an "equity" of neglect."""
    names = ("ew", "mgda", "emtl")
    runs = {name: [final_rate_variance(name, seed) for seed in SEEDS] for name in names}
    print("variance of r over the last steps, per seed:", runs)
    mean = {name: sum(v) / len(v) for name, v in runs.items()}
    assert mean["emtl"] < mean["ew"]
    assert mean["emtl"] < mean["mgda"]
