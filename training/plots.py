"""PNG plots of a training run (matplotlib, Agg backend): losses, equity, weights, gate usage."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def read_steps(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def series(rows: Sequence[Mapping[str, str]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of a column, skipping rows where it is empty."""
    pairs = [(int(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
    if not pairs:
        return np.zeros(0), np.zeros(0)
    steps, values = zip(*pairs, strict=True)
    return np.asarray(steps), np.asarray(values)


def smooth(values: np.ndarray, window: int = 20) -> np.ndarray:
    """Trailing moving average (same length) to read noisy per-step curves."""
    if len(values) < 2 or window <= 1:
        return values
    kernel = np.ones(min(window, len(values))) / min(window, len(values))
    padded = np.concatenate([np.full(len(kernel) - 1, values[0]), values])
    return np.convolve(padded, kernel, mode="valid")


def _tasks(rows: Sequence[Mapping[str, str]]) -> list[str]:
    return [k[len("loss_") :] for k in rows[0] if k.startswith("loss_")] if rows else []


def plot_run(run_dir: Path) -> list[Path]:
    """Write losses.png, equity.png, weights.png and gates.png (when gates exist) into run_dir."""
    rows = read_steps(run_dir / "steps.csv")
    tasks = _tasks(rows)
    written = []

    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        steps, values = series(rows, f"loss_{task}")
        ax.plot(steps, values, alpha=0.25, color="tab:blue")
        ax.plot(steps, smooth(values), color="tab:blue")
        ax.set_title(f"{task} training loss")
        ax.set_xlabel("step")
    written.append(_save(fig, run_dir / "losses.png"))

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for task in tasks:
        steps, values = series(rows, f"r_{task}")
        left.plot(steps, values, label=task)
    left.set_yscale("log")
    left.set_title("relative rate r = L / ||g|| per task")
    left.set_xlabel("step")
    left.legend()
    steps, values = series(rows, "r_var")
    right.plot(steps, values, color="black")
    right.set_title("equity: variance of r / mean(r)")
    right.set_xlabel("step")
    written.append(_save(fig, run_dir / "equity.png"))

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for task in tasks:
        steps, values = series(rows, f"w_{task}")
        ax.plot(steps, smooth(values, 5), label=task)
    ax.set_title("balancer weights")
    ax.set_xlabel("step")
    ax.legend()
    written.append(_save(fig, run_dir / "weights.png"))

    gates = [k for k in rows[0] if k.startswith("gate_")] if rows else []
    if gates:
        tail = rows[-max(1, len(rows) // 10) :]
        fig, ax = plt.subplots(figsize=(6, 3.6))
        width = 0.8 / len(gates)
        for i, gate in enumerate(gates):
            usage = np.mean(
                [[float(v) for v in r[gate].split()] for r in tail if r.get(gate)], axis=0
            )
            ax.bar(
                np.arange(len(usage)) + i * width, usage, width=width, label=gate[len("gate_") :]
            )
        ax.set_title("gate utilisation (mean weight per expert, last 10% of steps)")
        ax.set_xlabel("expert")
        ax.legend(fontsize=7)
        written.append(_save(fig, run_dir / "gates.png"))
    return written


def plot_equity_comparison(runs: Mapping[str, Path], out: Path) -> Path:
    """One line per method: variance of the normalised relative rates over training."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, run_dir in runs.items():
        steps, values = series(read_steps(run_dir / "steps.csv"), "r_var")
        ax.plot(steps, smooth(values, 10), label=label)
    ax.set_yscale("log")
    ax.set_title("equity: variance of r / mean(r) (lower is more equitable)")
    ax.set_xlabel("step")
    ax.legend(fontsize=7)
    return _save(fig, out)


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
