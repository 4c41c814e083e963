"""`ranker compare`: the method-comparison table on one data set, same data and budget for all.

A grid of architectures x balancers x self-auxiliary heads, over several seeds. Every run trains
with the same base config (data, epochs, batch size, steps); the data is prepared once per process.
Output in the compare directory: results.csv (one row per run), summary.csv and summary.md (mean
+- std per configuration, the average relative change vs `ew` (delta-m %), the gap to the oracle),
pareto.png (click AUC vs watch-time RMSE) and equity.png (variance of the relative rates per method).
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from training.config import ConfigError, TrainConfig, apply_overrides, build, plain, validate

# (task, metric, higher is better) entering delta-m and the table.
TABLE_METRICS: tuple[tuple[str, str, bool], ...] = (
    ("click", "auc", True),
    ("click", "gauc", True),
    ("watch_time", "rmse", False),
    ("watch_time", "ndcg@10", True),
    ("completion", "rmse", False),
)
DELTA_METRICS: tuple[tuple[str, str, bool], ...] = (
    ("click", "auc", True),
    ("watch_time", "rmse", False),
    ("completion", "rmse", False),
)


@dataclass(frozen=True)
class RunKey:
    model: str
    balancer: str
    aux: str
    seed: int

    @property
    def group(self) -> tuple[str, str, str]:
        return (self.model, self.balancer, self.aux)

    @property
    def name(self) -> str:
        return f"{self.model}-{self.balancer}-{self.aux}-s{self.seed}"


@dataclass(frozen=True)
class CompareConfig:
    # Base training config (same sections as train.yaml) shared by every run.
    base: Mapping[str, Any] = field(default_factory=dict)
    models: tuple[str, ...] = ("mmoe", "ple")
    # Per-architecture model.config fields merged over the base's (their fields differ).
    model_config: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    balancers: tuple[str, ...] = ("ew", "uw", "mgda", "pcgrad", "bandit", "famo", "emtl")
    # Self-auxiliary head forms to compare; `none` is the no-aux baseline.
    aux: tuple[str, ...] = ("none", "bottleneck")
    seeds: tuple[int, ...] = (0, 1, 2)
    # Parallel training processes (each prepares the data once).
    workers: int = 1
    out: str = "runs/compare"
    # SimulatorConfig fields: simulate the log into OUT/data first (then base.data.paths is set to it).
    simulate: Mapping[str, Any] | None = None

    def grid(self) -> list[RunKey]:
        combos = itertools.product(self.models, self.balancers, self.aux, self.seeds)
        return [RunKey(*combo) for combo in combos]


def load_compare_config(path: str | Path | None, overrides: Sequence[str] = ()) -> CompareConfig:
    doc: dict[str, Any] = {}
    if path is not None:
        try:
            doc = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    config = build(CompareConfig, apply_overrides(doc, overrides))
    for key in config.grid():
        validate(run_config(config, key))
    return config


def run_config(config: CompareConfig, key: RunKey) -> TrainConfig:
    base = yaml.safe_load(yaml.safe_dump(plain(config.base))) or {}
    model = base.setdefault("model", {})
    model["config"] = {
        **(model.get("config") or {}),
        **plain(config.model_config.get(key.model, {})),
    }
    doc = apply_overrides(
        base,
        [
            f"model.kind={key.model}",
            f"balancer.name={key.balancer}",
            f"aux.form={key.aux}",
            f"train.seed={key.seed}",
            f"out={Path(config.out) / 'runs' / key.name}",
        ],
    )
    return build(TrainConfig, doc)


_WORKER_DATA: Any = None


def _init_worker(base: TrainConfig) -> None:
    global _WORKER_DATA
    from training.trainer import prepare_data

    _WORKER_DATA = prepare_data(base)


def _train_one(train_config: TrainConfig) -> dict[str, Any]:
    from training.trainer import Trainer

    result = Trainer(train_config, _WORKER_DATA, Path(train_config.out), progress=False).fit()
    return {"test": result.get("test", result["valid"]), "seconds": result["seconds"]}


def run_compare(config: CompareConfig, progress: bool = True) -> dict[str, Path]:
    """Train every run of the grid (skipping finished ones) and write the tables and plots."""
    from training.progress import progress_bar

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    if config.simulate is not None:
        config = _simulated(config, out / "data")
    keys = config.grid()
    configs = {key: run_config(config, key) for key in keys}
    results = {k: r for k in keys if (r := _finished(configs[k])) is not None}
    pending = [k for k in keys if k not in results]
    bar = progress_bar(total=len(pending), desc="compare", unit="run", enabled=progress)
    if pending and config.workers > 1:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            config.workers,
            mp_context=context,
            initializer=_init_worker,
            initargs=(configs[pending[0]],),
        ) as pool:
            futures = {pool.submit(_train_one, configs[key]): key for key in pending}
            for future in futures:
                results[futures[future]] = future.result()
                bar.update()
    elif pending:
        _init_worker(configs[pending[0]])
        for key in pending:
            results[key] = _train_one(configs[key])
            bar.update()
    bar.close()
    return write_report(config, results)


def _simulated(config: CompareConfig, data_dir: Path) -> CompareConfig:
    """Simulate the log once (seeded: a re-run finds the same files) and point the base at it."""
    from training.simulate import SimulatorConfig, simulate

    if not any(data_dir.rglob("*.parquet")):
        simulate(SimulatorConfig(**dict(config.simulate or {})), data_dir)
    base = yaml.safe_load(yaml.safe_dump(plain(config.base))) or {}
    base.setdefault("data", {})["paths"] = [str(data_dir)]
    return dataclasses.replace(config, base=base)


def _finished(train_config: TrainConfig) -> dict[str, Any] | None:
    """The result of a run that already finished with this exact config: a re-run resumes."""
    path = Path(train_config.out) / "metrics.json"
    if not path.exists():
        return None
    doc = json.loads(path.read_text())
    if doc.get("config") != train_config.to_dict():
        return None
    return {"test": doc.get("test", doc["valid"]), "seconds": doc["seconds"]}


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def delta_m(
    metrics: Mapping[tuple[str, str], float], baseline: Mapping[tuple[str, str], float]
) -> float:
    """Average relative change in % vs the baseline, signed so that positive is better."""
    changes = []
    for task, name, higher in DELTA_METRICS:
        base = baseline.get((task, name))
        value = metrics.get((task, name))
        if base is None or value is None or base == 0:
            continue
        sign = 1.0 if higher else -1.0
        changes.append(sign * (value - base) / abs(base))
    return 100.0 * float(np.mean(changes)) if changes else math.nan


def write_report(
    config: CompareConfig, results: Mapping[RunKey, Mapping[str, Any]]
) -> dict[str, Path]:
    out = Path(config.out)
    written: dict[str, Path] = {}
    # One row per run.
    rows = []
    for key, result in results.items():
        row: dict[str, Any] = {
            "model": key.model,
            "balancer": key.balancer,
            "aux": key.aux,
            "seed": key.seed,
            "seconds": round(result["seconds"], 1),
        }
        for task, name, _ in TABLE_METRICS:
            row[f"{task}.{name}"] = result["test"][task][name]
            if f"gap_{name}" in result["test"][task]:
                row[f"{task}.gap_{name}"] = result["test"][task][f"gap_{name}"]
        rows.append(row)
    written["results"] = out / "results.csv"
    _write_csv(written["results"], rows)

    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["balancer"], row["aux"]), []).append(row)
    means = {
        g: {(t, n): float(np.mean([r[f"{t}.{n}"] for r in rs])) for t, n, _ in TABLE_METRICS}
        for g, rs in groups.items()
    }
    summary = []
    for (model, balancer, aux), rs in groups.items():
        entry: dict[str, Any] = {"model": model, "balancer": balancer, "aux": aux, "seeds": len(rs)}
        for task, name, _ in TABLE_METRICS:
            mean, std = _mean_std([r[f"{task}.{name}"] for r in rs])
            entry[f"{task}.{name}"] = mean
            entry[f"{task}.{name}.std"] = std
            gaps = [r[f"{task}.gap_{name}"] for r in rs if f"{task}.gap_{name}" in r]
            if gaps:
                entry[f"{task}.gap_{name}"] = float(np.mean(gaps))
        baseline = means.get((model, "ew", "none"))
        entry["delta_m_pct"] = (
            delta_m(means[(model, balancer, aux)], baseline) if baseline else math.nan
        )
        summary.append(entry)
    written["summary"] = out / "summary.csv"
    _write_csv(written["summary"], summary)
    written["markdown"] = out / "summary.md"
    written["markdown"].write_text(render_markdown(summary))
    written["pareto"] = _pareto_plot(summary, out / "pareto.png")
    written["equity"] = _equity_plot(config, out / "equity.png")
    return written


def render_markdown(summary: Sequence[Mapping[str, Any]]) -> str:
    header = [
        "model",
        "balancer",
        "aux",
        *(f"{t} {n}" for t, n, _ in TABLE_METRICS),
        "Δm% vs ew",
        "click AUC gap to oracle",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    ordered = sorted(
        summary, key=lambda e: (e["model"], e["aux"], -np.nan_to_num(e["delta_m_pct"], nan=-1e9))
    )
    for e in ordered:
        cells = [e["model"], e["balancer"], e["aux"]]
        for task, name, _ in TABLE_METRICS:
            cells.append(f"{e[f'{task}.{name}']:.4f} ± {e[f'{task}.{name}.std']:.4f}")
        cells.append(f"{e['delta_m_pct']:+.2f}" if not math.isnan(e["delta_m_pct"]) else "-")
        cells.append(f"{e['click.gap_auc']:+.4f}" if "click.gap_auc" in e else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def _pareto_plot(summary: Sequence[Mapping[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    markers = {"mmoe": "o", "ple": "s", "shared_bottom": "^"}
    balancers = list(dict.fromkeys(e["balancer"] for e in summary))
    colours = {b: plt.get_cmap("tab10")(i % 10) for i, b in enumerate(balancers)}
    for e in summary:
        colour = colours[e["balancer"]]
        ax.scatter(
            e["watch_time.rmse"],
            e["click.auc"],
            marker=markers.get(e["model"], "o"),
            facecolors="none" if e["aux"] == "none" else colour,
            edgecolors=colour,
            s=50,
        )
        label = f"{e['balancer']}{'+aux' if e['aux'] != 'none' else ''}"
        point = (e["watch_time.rmse"], e["click.auc"])
        ax.annotate(label, point, fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("watch-time RMSE (s), lower is better")
    ax.set_ylabel("click AUC, higher is better")
    ax.set_title(
        "test metrics per configuration, mean over seeds\n"
        "(circles MMoE, squares PLE; filled: self-aux heads)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _equity_plot(config: CompareConfig, path: Path) -> Path:
    from training.plots import plot_equity_comparison

    model, aux, seed = config.models[0], config.aux[0], config.seeds[0]
    runs = {
        b: Path(config.out) / "runs" / RunKey(model, b, aux, seed).name for b in config.balancers
    }
    return plot_equity_comparison(
        {b: p for b, p in runs.items() if (p / "steps.csv").exists()}, path
    )
