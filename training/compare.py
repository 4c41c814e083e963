"""`ranker compare`: the method-comparison table on one data set, same data and budget for all.

A grid of architectures x objectives x balancers x self-auxiliary heads, over several seeds. The
objective axis (`objectives`) varies one task's loss (watch time's: raw seconds `mse` against an
unbiased objective) inside the same grid, so both land in one summary; `aux_balancers` limits the
aux-head forms to the balancers that ask for them; `single_task` adds one single-task model per
task of the same architecture and sizes (per objective for the objective task), the reference of
the EMTL paper's delta-m. Every run trains with the same base config (data, epochs, batch size,
steps); the data is prepared once per process; finished runs are skipped, so a re-run resumes.
Output in the compare directory: results.csv (one row per run, with its time), summary.csv and
summary.md (mean +- std per configuration, delta-m % vs `ew` of the same objective and vs the
single-task models, the gap to the oracle, seconds per run), pareto.png (click AUC vs watch-time
RMSE with std error bars and the non-dominated front) and equity.png (variance of the relative
rates per method).

Over 400 lines on purpose: the grid, its runs and its summary share the config and the run keys
(the summary groups runs by them, the report reads the config's axes); splitting the summary
out would move the grid's types to a third module for one reader.
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

from training.config import (
    ConfigError,
    TasksConfig,
    TrainConfig,
    apply_overrides,
    build,
    plain,
    validate,
)

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
# The validation metric that picks a single-task reference model's epoch (its own task's).
SELECTION_METRIC = {task: name for task, name, _ in DELTA_METRICS}


@dataclass(frozen=True)
class RunKey:
    model: str
    balancer: str
    aux: str
    seed: int
    # Loss of the objective task (`CompareConfig.objective_task`); "": the base config's.
    objective: str = ""
    # Single-task reference run: the one task it trains ("": a multi-task run).
    single: str = ""

    @property
    def group(self) -> tuple[str, str, str, str, str]:
        return (self.model, self.objective, self.balancer, self.aux, self.single)

    @property
    def name(self) -> str:
        parts = [self.model, *([self.objective] if self.objective else [])]
        parts += [f"single_{self.single}"] if self.single else [self.balancer, self.aux]
        return "-".join(parts) + f"-s{self.seed}"


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
    # Balancers that also run with the aux forms other than `none` (None: every balancer), so
    # heads are compared where they are asked for instead of over the full product.
    aux_balancers: tuple[str, ...] | None = None
    # Losses of `objective_task` to compare in the same grid (one axis, one summary); empty: the
    # base config's loss only.
    objectives: tuple[str, ...] = ()
    objective_task: str = "watch_time"
    # Also train one single-task model per task (same architecture and sizes; per objective for
    # the objective task), the reference of the "Δm% vs single-task" column.
    single_task: bool = False
    seeds: tuple[int, ...] = (0, 1, 2)
    # Parallel training processes (each prepares the data once).
    workers: int = 1
    out: str = "runs/compare"
    # SimulatorConfig fields: simulate the log into OUT/data first (then base.data.paths is set to it).
    simulate: Mapping[str, Any] | None = None

    @property
    def task_names(self) -> tuple[str, ...]:
        names = (self.base.get("tasks") or {}).get("names")
        return tuple(names) if names else TasksConfig().names

    def grid(self) -> list[RunKey]:
        objectives = self.objectives or ("",)
        keys = [
            RunKey(model, balancer, aux, seed, objective)
            for model, objective, balancer, aux, seed in itertools.product(
                self.models, objectives, self.balancers, self.aux, self.seeds
            )
            if aux == "none" or self.aux_balancers is None or balancer in self.aux_balancers
        ]
        if self.single_task:
            for model, task, seed in itertools.product(self.models, self.task_names, self.seeds):
                task_objectives = objectives if task == self.objective_task else ("",)
                keys += [RunKey(model, "ew", "none", seed, o, task) for o in task_objectives]
        return keys


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
    check_grid(config)
    for key in config.grid():
        validate(run_config(config, key))
    return config


def check_grid(config: CompareConfig) -> None:
    """The grid's own fields; errors name the key."""
    from ranker.tasks import TASK_LOSSES

    if config.aux_balancers is not None:
        for i, name in enumerate(config.aux_balancers):
            if name not in config.balancers:
                raise ConfigError(
                    f"aux_balancers[{i}]: {name!r} is not in balancers {list(config.balancers)}"
                )
    if config.objectives:
        task = config.objective_task
        if task not in config.task_names:
            raise ConfigError(
                f"objective_task: {task!r} is not a task; tasks: {list(config.task_names)}"
            )
        for i, loss in enumerate(config.objectives):
            if loss not in TASK_LOSSES[task]:
                raise ConfigError(
                    f"objectives[{i}]: unknown {task} loss {loss!r}; valid: {list(TASK_LOSSES[task])}"
                )
    if config.single_task:
        for task in config.task_names:
            if task not in SELECTION_METRIC:
                raise ConfigError(f"single_task: no reference metric for task {task!r}")


def run_config(config: CompareConfig, key: RunKey) -> TrainConfig:
    base = yaml.safe_load(yaml.safe_dump(plain(config.base))) or {}
    model = base.setdefault("model", {})
    model["config"] = {
        **(model.get("config") or {}),
        **plain(config.model_config.get(key.model, {})),
    }
    overrides = [
        f"model.kind={key.model}",
        f"balancer.name={key.balancer}",
        f"aux.form={key.aux}",
        f"train.seed={key.seed}",
        f"out={Path(config.out) / 'runs' / key.name}",
    ]
    if key.objective:
        overrides.append(f"tasks.losses.{config.objective_task}={key.objective}")
    if key.single:
        # One task, its own loss, the epoch chosen on its own validation metric.
        tasks = base.setdefault("tasks", {})
        tasks["names"] = [key.single]
        losses = tasks.get("losses") or {}
        tasks["losses"] = {t: loss for t, loss in losses.items() if t == key.single}
        overrides.append(f"train.early_stopping={key.single}.{SELECTION_METRIC[key.single]}")
    return build(TrainConfig, apply_overrides(base, overrides))


_WORKER_DATA: Any = None


def _init_worker(base: TrainConfig) -> None:
    global _WORKER_DATA
    from training.prepare import prepare_data

    _WORKER_DATA = prepare_data(base)


def _train_one(train_config: TrainConfig) -> dict[str, Any]:
    from training.trainer import Trainer

    result = Trainer(train_config, _WORKER_DATA, Path(train_config.out), progress=False).fit()
    return {"test": result.get("test", result["valid"]), "seconds": result["seconds"]}


def run_compare(config: CompareConfig, progress: bool = True) -> dict[str, Path]:
    """Train every run of the grid (skipping finished ones) and write the tables and plots."""
    from ranker.progress import progress_bar

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    if config.simulate is not None:
        config = _simulated(config, out / "data")
    keys = config.grid()
    configs = {key: run_config(config, key) for key in keys}
    results = {k: r for k in keys if (r := _finished(configs[k])) is not None}
    # Seed-major order: an interrupted grid has whole seeds done, not whole balancers.
    pending = sorted((k for k in keys if k not in results), key=lambda k: k.seed)
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
    from sim.simulate import SimulatorConfig, simulate

    if not any(data_dir.rglob("*.parquet")):
        simulate(SimulatorConfig(**dict(config.simulate or {})), data_dir)
    base = yaml.safe_load(yaml.safe_dump(plain(config.base))) or {}
    base.setdefault("data", {})["paths"] = [str(data_dir)]
    return dataclasses.replace(config, base=base)


def _finished(train_config: TrainConfig) -> dict[str, Any] | None:
    """The result of a run that already finished with this config: a re-run resumes.

    The recorded config is read back through today's TrainConfig, so a field added since (with
    its default) does not discard finished runs; a changed value, or a key that no longer
    exists, does."""
    path = Path(train_config.out) / "metrics.json"
    if not path.exists():
        return None
    doc = json.loads(path.read_text())
    try:
        recorded = build(TrainConfig, doc.get("config"))
    except ConfigError:
        return None
    if recorded.to_dict() != train_config.to_dict():
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
    # One row per run; a single-task run has only its own task's metrics.
    rows = []
    for key, result in results.items():
        row: dict[str, Any] = {
            "model": key.model,
            "objective": key.objective,
            "balancer": "single-task" if key.single else key.balancer,
            "aux": key.aux,
            "task": key.single,
            "seed": key.seed,
            "seconds": round(result["seconds"], 1),
        }
        for task, name, _ in TABLE_METRICS:
            scores = result["test"].get(task)
            if scores is None:
                continue
            row[f"{task}.{name}"] = scores[name]
            if f"gap_{name}" in scores:
                row[f"{task}.gap_{name}"] = scores[f"gap_{name}"]
        rows.append(row)
    written["results"] = out / "results.csv"
    _write_csv(written["results"], rows)
    summary = summarise(config, rows)
    written["summary"] = out / "summary.csv"
    _write_csv(written["summary"], summary)
    written["markdown"] = out / "summary.md"
    written["markdown"].write_text(
        render_markdown(summary, objectives=bool(config.objectives), single=config.single_task)
    )
    from training.plots import plot_pareto

    written["pareto"] = plot_pareto(summary, out / "pareto.png")
    written["equity"] = _equity_plot(config, out / "equity.png")
    return written


def summarise(config: CompareConfig, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean +- std over seeds per configuration, with Δm% vs `ew` and vs single-task models."""
    groups: dict[tuple[str, str, str, str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        group = (row["model"], row["objective"], row["balancer"], row["aux"], row["task"])
        groups.setdefault(group, []).append(row)
    means = {
        g: {
            (t, n): float(np.mean(values))
            for t, n, _ in TABLE_METRICS
            if (values := [r[f"{t}.{n}"] for r in rs if f"{t}.{n}" in r])
        }
        for g, rs in groups.items()
    }
    summary = []
    for (model, objective, balancer, aux, task), rs in groups.items():
        entry: dict[str, Any] = {
            "model": model,
            "objective": objective,
            "balancer": balancer,
            "aux": aux,
            "task": task,
            "seeds": len(rs),
            "seconds": float(np.mean([r["seconds"] for r in rs])),
        }
        for t, name, _ in TABLE_METRICS:
            values = [r[f"{t}.{name}"] for r in rs if f"{t}.{name}" in r]
            if not values:
                continue
            entry[f"{t}.{name}"], entry[f"{t}.{name}.std"] = _mean_std(values)
            gaps = [r[f"{t}.gap_{name}"] for r in rs if f"{t}.gap_{name}" in r]
            if gaps:
                entry[f"{t}.gap_{name}"] = float(np.mean(gaps))
        own = means[(model, objective, balancer, aux, task)]
        baseline = means.get((model, objective, "ew", "none", ""))
        reference = _single_task_reference(config, means, model, objective)
        entry["delta_m_pct"] = delta_m(own, baseline) if baseline and not task else math.nan
        entry["delta_m_single_pct"] = (
            delta_m(own, reference) if config.single_task and not task else math.nan
        )
        summary.append(entry)
    return summary


def _single_task_reference(
    config: CompareConfig,
    means: Mapping[tuple[str, str, str, str, str], Mapping[tuple[str, str], float]],
    model: str,
    objective: str,
) -> dict[tuple[str, str], float]:
    """Each task's metric from its single-task model (the objective task's: same objective)."""
    reference = {}
    for task, name, _ in DELTA_METRICS:
        task_objective = objective if task == config.objective_task else ""
        value = means.get((model, task_objective, "single-task", "none", task), {}).get(
            (task, name)
        )
        if value is not None:
            reference[(task, name)] = value
    return reference


def render_markdown(
    summary: Sequence[Mapping[str, Any]], objectives: bool = False, single: bool = False
) -> str:
    """The summary as a Markdown table; `objectives` adds the objective column, `single` the
    Δm% vs single-task column (single-task reference rows come last)."""
    header = [
        "model",
        *(["objective"] if objectives else []),
        "balancer",
        "aux",
        *(f"{t} {n}" for t, n, _ in TABLE_METRICS),
        "Δm% vs ew",
        *(["Δm% vs single-task"] if single else []),
        "click AUC gap to oracle",
        "s/run",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    ordered = sorted(
        summary,
        key=lambda e: (
            bool(e["task"]),
            e["model"],
            e["objective"],
            e["aux"],
            -np.nan_to_num(e["delta_m_pct"], nan=-1e9),
        ),
    )
    for e in ordered:
        balancer = f"single-task {e['task']}" if e["task"] else e["balancer"]
        cells = [e["model"], *([e["objective"] or "-"] if objectives else []), balancer, e["aux"]]
        for task, name, _ in TABLE_METRICS:
            key = f"{task}.{name}"
            cells.append(f"{e[key]:.4f} ± {e[key + '.std']:.4f}" if key in e else "-")
        cells.append(_signed(e["delta_m_pct"]))
        if single:
            cells.append(_signed(e["delta_m_single_pct"]))
        cells.append(f"{e['click.gap_auc']:+.4f}" if "click.gap_auc" in e else "-")
        cells.append(f"{e['seconds']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _signed(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:+.2f}"


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def _equity_plot(config: CompareConfig, path: Path) -> Path:
    from training.plots import plot_equity_comparison

    model, aux, seed = config.models[0], config.aux[0], config.seeds[0]
    objective = config.objectives[0] if config.objectives else ""
    runs = {
        b: Path(config.out) / "runs" / RunKey(model, b, aux, seed, objective).name
        for b in config.balancers
    }
    return plot_equity_comparison(
        {b: p for b, p in runs.items() if (p / "steps.csv").exists()}, path
    )
