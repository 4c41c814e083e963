"""PNG plots (matplotlib, Agg backend): a training run's losses, equity, weights and gate usage;
`ranker compare`'s equity comparison and Pareto plot."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated (x, y) points when lower x and higher y are better, by x."""
    front = [
        i
        for i, (x, y) in enumerate(points)
        if not any(
            (ox <= x and oy >= y) and (ox < x or oy > y)
            for j, (ox, oy) in enumerate(points)
            if j != i
        )
    ]
    return sorted(front, key=lambda i: points[i])


def plot_pareto(
    summary: Sequence[Mapping[str, Any]],
    out: Path,
    x: str = "watch_time.rmse",
    y: str = "click.auc",
    zoom: float = 0.05,
) -> Path:
    """Mean over seeds per configuration with std error bars, the non-dominated front (lower x,
    higher y) drawn through the means, single-task references as dashed lines. When some
    configurations lie far out on x, a second panel zooms on those within `zoom` of the best x."""
    entries = [e for e in summary if not e.get("task") and x in e and y in e]
    references = [e for e in summary if e.get("task")]
    points = [(float(e[x]), float(e[y])) for e in entries]
    near = [i for i, (px, _) in enumerate(points) if px <= min(p[0] for p in points) * (1 + zoom)]
    panels = 2 if 0 < len(near) < len(points) else 1
    fig, axes = plt.subplots(1, panels, figsize=(7.5 * panels, 5.5), squeeze=False)
    style = _ParetoStyle.of(entries)
    front = pareto_front(points)
    for ax, shown in zip(axes[0], [list(range(len(points))), near][:panels], strict=True):
        zoomed = ax is not axes[0][0]
        for i in shown:
            # Labels: every point in one panel; with a zoom, the front's outside it.
            label = i in front or panels == 1 or zoomed
            _draw_point(ax, entries[i], points[i], style, x, y, label)
        if zoomed:
            _limit_to(ax, [points[i] for i in shown], [entries[i] for i in shown], x, y)
        ax.plot(
            [points[i][0] for i in front],
            [points[i][1] for i in front],
            color="black",
            linewidth=1,
            drawstyle="steps-post",
        )
        _references(ax, references, x, y, clip=zoomed)
        ax.set_xlabel(f"{x} (test), lower is better")
        ax.set_ylabel(f"{y} (test), higher is better")
    axes[0][0].legend(handles=style.legend(), fontsize=7, loc="best")
    axes[0][0].set_title(
        "mean over seeds per configuration, bars: std over seeds\n"
        "filled: self-aux heads; dashed/dotted: single-task models",
        fontsize=9,
    )
    if panels == 2:
        axes[0][1].set_title(f"zoom: {x} within {zoom:.0%} of the best", fontsize=9)
    return _save(fig, out)


@dataclass(frozen=True)
class _ParetoStyle:
    """A colour per balancer and a marker per (model, objective), in order of appearance."""

    balancers: list[str]
    colours: dict[str, Any]
    kinds: list[tuple[str, str]]
    shapes: dict[tuple[str, str], str]

    @classmethod
    def of(cls, entries: Sequence[Mapping[str, Any]]) -> _ParetoStyle:
        balancers = list(dict.fromkeys(str(e["balancer"]) for e in entries))
        kinds = list(dict.fromkeys(_kind(e) for e in entries))
        return cls(
            balancers,
            {b: plt.get_cmap("tab10")(i % 10) for i, b in enumerate(balancers)},
            kinds,
            dict(zip(kinds, "osD^vP*X", strict=False)),
        )

    def legend(self) -> list[Any]:
        handles = [
            plt.Line2D([], [], color=self.colours[b], marker="o", linestyle="", label=b)
            for b in self.balancers
        ]
        handles += [
            plt.Line2D(
                [],
                [],
                color="black",
                marker=self.shapes[k],
                markerfacecolor="none",
                linestyle="",
                label=" ".join(p for p in k if p),
            )
            for k in self.kinds
        ]
        handles.append(plt.Line2D([], [], color="black", linewidth=1, label="non-dominated front"))
        return handles


def _kind(entry: Mapping[str, Any]) -> tuple[str, str]:
    return str(entry["model"]), str(entry.get("objective") or "")


def _draw_point(
    ax: plt.Axes,
    e: Mapping[str, Any],
    point: tuple[float, float],
    style: _ParetoStyle,
    x: str,
    y: str,
    label: bool,
) -> None:
    """One configuration's mean with std bars (hollow without aux heads), labelled if `label`."""
    colour = style.colours[str(e["balancer"])]
    ax.errorbar(
        *point,
        xerr=float(e.get(f"{x}.std", 0.0)),
        yerr=float(e.get(f"{y}.std", 0.0)),
        fmt=style.shapes.get(_kind(e), "o"),
        color=colour,
        markerfacecolor="none" if e["aux"] == "none" else colour,
        markersize=7,
        elinewidth=0.8,
        capsize=2,
    )
    if label:
        text = f"{e['balancer']}{'+aux' if e['aux'] != 'none' else ''}"
        ax.annotate(text, point, fontsize=6, xytext=(4, 4), textcoords="offset points")


def _limit_to(
    ax: plt.Axes,
    points: Sequence[tuple[float, float]],
    entries: Sequence[Mapping[str, Any]],
    x: str,
    y: str,
) -> None:
    """Axis limits around `points` and their error bars, with a margin."""
    xs = [
        p[0] + s * float(e.get(f"{x}.std", 0.0))
        for p, e in zip(points, entries, strict=True)
        for s in (-1, 1)
    ]
    ys = [
        p[1] + s * float(e.get(f"{y}.std", 0.0))
        for p, e in zip(points, entries, strict=True)
        for s in (-1, 1)
    ]
    for values, setter in ((xs, ax.set_xlim), (ys, ax.set_ylim)):
        low, high = min(values), max(values)
        pad = 0.08 * (high - low) or 0.01 * abs(high) or 0.01
        setter(low - pad, high + pad)


def _references(
    ax: plt.Axes, references: Sequence[Mapping[str, Any]], x: str, y: str, clip: bool
) -> None:
    """Single-task models' metrics as lines: y's task dashed, x's task dotted (per objective);
    `clip`: only those inside the axis limits already set."""
    x_task, y_task = x.split(".")[0], y.split(".")[0]
    inf = float("inf")
    (x_low, x_high), (y_low, y_high) = (
        (ax.get_xlim(), ax.get_ylim()) if clip else ((-inf, inf), (-inf, inf))
    )
    for ref in references:
        objective = f" ({ref['objective']})" if ref.get("objective") else ""
        if ref["task"] == y_task and y in ref and y_low <= float(ref[y]) <= y_high:
            ax.axhline(float(ref[y]), color="grey", linestyle="--", linewidth=0.8)
            ax.annotate(
                f"single-task {y_task}",
                (0.01, float(ref[y])),
                xycoords=("axes fraction", "data"),
                fontsize=6,
                color="grey",
            )
        if ref["task"] == x_task and x in ref and x_low <= float(ref[x]) <= x_high:
            ax.axvline(float(ref[x]), color="grey", linestyle=":", linewidth=0.8)
            ax.annotate(
                f"single-task {x_task}{objective}",
                (float(ref[x]), 0.01),
                xycoords=("data", "axes fraction"),
                fontsize=6,
                rotation=90,
                color="grey",
            )


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
