"""Balancers under one task's rescaling, and equity on a toy training run: the tables of
docs/results.md ("Balancers: one task rescaled, and equity").

    python -m benchmarks.equity [--steps 300] [--seeds 0,1,2]

1. One task rescaled: 3 tasks, random gradients; task 0's loss and gradient are multiplied by s
   (1e-4 .. 1e5) in every call of a 4-call sequence. Per method: the cosine between the update
   sum_i w_i g_i with and without the rescaling, and the largest increase of a task's share of it
   (share_i = |w_i| ||g_i|| / sum_j |w_j| ||g_j||), worst case over s, tasks and seeds.
2. Equity: a shared MLP trunk with three heads (a regression whose loss starts near 100, a
   unit-scale regression, a binary classification) trained with Adam; r_i = L_i / ||g_i|| on the
   trunk at every step; the figure is var(r / mean r) averaged over the last 50 steps, which does
   not change when one task's loss is rescaled (the raw variance of r does).
tests/ranker/balancing/ use the same functions.
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ranker.balancing import BALANCERS, build_balancer, gramian_on_params

DOC = Path(__file__).resolve().parent.parent / "docs" / "results.md"
SCALES = tuple(10.0**e for e in range(-4, 6) if e != 0)
STEPS, BATCH, LAST = 300, 128, 50
REGRESSION = (True, True, False)  # the toy's task kinds, for `uw`


@dataclass(frozen=True)
class Method:
    """A registered balancer with non-default parameters, under its own label."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)
    label: str = ""

    def __str__(self) -> str:
        return self.label or self.name

    def build(self, num_tasks: int) -> Any:
        regression = [i % 2 == 0 for i in range(num_tasks)]
        if num_tasks == len(REGRESSION):
            regression = list(REGRESSION)
        return build_balancer(self.name, num_tasks, dict(self.params), regression=regression)


# Every registered method with its defaults, plus MGDA on the unit gradients.
METHODS: tuple[Method, ...] = (
    *(Method(name) for name in BALANCERS),
    Method("mgda", {"normalise": True}, "mgda (normalise)"),
)


def update_and_shares(
    weights: torch.Tensor, jac: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The update sum_i w_i g_i [D] and each task's share |w_i| ||g_i|| / sum_j |w_j| ||g_j|| [K]."""
    push = weights.abs() * jac.norm(dim=1)
    return weights @ jac, push / push.sum()


def rescale_one_task(
    method: Method, scale: float, *, task: int = 0, k: int = 3, seed: int = 0, calls: int = 4
) -> tuple[float, float]:
    """(cosine of the rescaled update to the original, largest increase of a task's share)
    after `calls` calls on seeded losses and gradients, task `task`'s both multiplied by `scale`."""
    results = []
    for s in (1.0, scale):
        gen = torch.Generator().manual_seed(seed)
        balancer = method.build(k)
        factor = torch.ones(k, dtype=torch.float64)
        factor[task] = s
        for _ in range(calls):
            jac = torch.randn(k, k + 5, generator=gen, dtype=torch.float64) * factor[:, None]
            losses = torch.exp(2.0 * torch.rand(k, generator=gen, dtype=torch.float64)) * factor
            w = balancer.weights(losses, jac @ jac.T).detach()
        results.append(update_and_shares(w, jac))
    (d, shares), (d_scaled, shares_scaled) = results
    cos = float(d @ d_scaled / (d.norm() * d_scaled.norm()))
    return cos, float((shares_scaled - shares).max())


def sweep(method: Method, seeds: Sequence[int] = (0, 1, 2)) -> dict[float, tuple[float, float]]:
    """Per scale: the worst cosine and the worst share increase over tasks and seeds."""
    out = {}
    for scale in SCALES:
        runs = [
            rescale_one_task(method, scale, task=task, seed=seed)
            for seed in seeds
            for task in range(3)
        ]
        out[scale] = (min(c for c, _ in runs), max(s for _, s in runs))
    return out


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


@dataclass(frozen=True)
class EquityRun:
    # var(r / mean r) at every step
    equity: list[float]
    # task losses (unscaled) at the last step
    final_losses: list[float]

    def tail(self, last: int = LAST) -> float:
        return sum(self.equity[-last:]) / min(last, len(self.equity))


def equity_run(
    method: Method,
    seed: int = 0,
    *,
    steps: int = STEPS,
    loss_scale: Sequence[float] = (1.0, 1.0, 1.0),
) -> EquityRun:
    """Train the toy with `method`, task losses multiplied by `loss_scale` (loss and gradient
    together), one thread; the relative rates are taken on the scaled losses."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is faster and reproducible
    try:
        x, y = toy_data(seed)
        torch.manual_seed(seed)
        trunk = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        heads = nn.Linear(64, 3)
        balancer = method.build(3)
        params = [*trunk.parameters(), *heads.parameters(), *balancer.parameters()]
        optimizer = torch.optim.Adam(params, lr=1e-3)
        scale = torch.tensor(loss_scale)
        batches = torch.Generator().manual_seed(seed + 1)
        equity = []
        for _ in range(steps):
            idx = torch.randint(0, len(x), (BATCH,), generator=batches)
            out, target = heads(trunk(x[idx])), y[idx]
            raw = torch.stack(
                [
                    F.mse_loss(out[:, 0], target[:, 0]),
                    F.mse_loss(out[:, 1], target[:, 1]),
                    F.binary_cross_entropy_with_logits(out[:, 2], target[:, 2]),
                ]
            )
            losses = raw * scale
            gramian = gramian_on_params(list(losses), list(trunk.parameters()))
            rates = losses.detach().double() / gramian.diagonal().sqrt()
            equity.append(float((rates / rates.mean()).var(unbiased=False)))
            weights = balancer.weights(losses.detach(), gramian)
            total = (weights * losses).sum()
            regulariser = balancer.regulariser()
            if regulariser is not None:
                total = total + regulariser
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
        return EquityRun(equity, raw.detach().tolist())
    finally:
        torch.set_num_threads(threads)


def _mean_std(values: Sequence[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {std:.3f}"


def rescale_table(methods: Sequence[Method]) -> str:
    lines = [
        "| method | min cos over s | max share increase | worst s (cos) |",
        "|---|---|---|---|",
    ]
    for method in methods:
        result = sweep(method)
        worst = min(result, key=lambda s: result[s][0])
        cos = min(c for c, _ in result.values())
        share = max(s for _, s in result.values())
        at = f"{worst:.0e}" if cos < 0.9999 else "-"
        lines.append(f"| {method} | {cos:.4f} | {share:+.3f} | {at} |")
    return "\n".join(lines)


def equity_table(methods: Sequence[Method], seeds: Sequence[int], steps: int) -> str:
    lines = [
        "| method | var(r / mean r), last 50 steps | per seed | final losses (task 0, 1, 2) |",
        "|---|---|---|---|",
    ]
    rows = []
    for method in methods:
        runs = [equity_run(method, seed, steps=steps) for seed in seeds]
        tails = [run.tail() for run in runs]
        losses = [statistics.mean(run.final_losses[i] for run in runs) for i in range(3)]
        rows.append((statistics.mean(tails), method, tails, losses))
    for _, method, tails, losses in sorted(rows, key=lambda row: row[0]):
        per_seed = ", ".join(f"{t:.3f}" for t in tails)
        final = ", ".join(f"{v:.2f}" for v in losses)
        lines.append(f"| {method} | {_mean_std(tails)} | {per_seed} | {final} |")
    return "\n".join(lines)


def write_results_section(name: str, body: str, doc: Path = DOC) -> None:
    """Replace the block between `<!-- name:start -->` and `<!-- name:end -->` in `doc`."""
    text = doc.read_text()
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.DOTALL)
    if not pattern.search(text):
        raise ValueError(f"{doc}: no section markers {start} ... {end}")
    doc.write_text(pattern.sub(lambda _: f"{start}\n{body.rstrip()}\n{end}", text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--no-write", action="store_true", help="print, do not edit results.md")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    started = time.perf_counter()
    rescale = rescale_table(METHODS)
    equity = equity_table(METHODS, seeds, args.steps)
    body = (
        f"One task rescaled (s in 1e-4 .. 1e5, tasks 0-2, seeds 0-2; worst case):\n\n{rescale}\n\n"
        f"Equity on the toy ({args.steps} steps, seeds {args.seeds}; sorted):\n\n{equity}\n\n"
        f"`python -m benchmarks.equity`, {time.perf_counter() - started:.0f} s."
    )
    print(body)
    if not args.no_write:
        write_results_section("equity", body)


if __name__ == "__main__":
    main()
