"""The whole production loop on the simulator, and what position debiasing buys in it:

    serve production (v1, trained on the offline logs) -> simulated traffic with a position
    effect, outcome events -> `build-log` of the served days -> `ranker retrain` twice on the
    window (the offline and the served days; `--window served`: the served days alone), with the
    gate: biased (`debias.position=none`) and debiased (`pal`) -> an online A/B of the
    two retrained models through `simulate-traffic`, both served as arms of one experiment config
    -> true expected watch time per request per arm (the simulator knows the relevance and the
    examination curve) with 95% intervals, and the debiased - biased difference.

    python -m benchmarks.debias_ab [--size full|tiny] [--seeds 3] [--out out/debias_ab]
                                   [--window all|served] [--world-seed 0]

Every stage runs the project's real path: the service (`python -m serving.server`, ONNX Runtime,
impression log with the served features and positions), `sim.traffic.run_traffic`,
`training.build_log.build_log`, `training.retrain.run.run_once` (gate included), `export_run`.
One step is the demo's own: the service stamps impressions with the wall clock, so every
simulated day lands on today; the loop puts each built row back on the simulated day of its
request (from the traffic driver's outcome file) so the retrainer sees days to split.

A candidate the gate refuses is still exported (unreferenced, reported as such) so the A/B can
measure it. Every arm ranks by predicted watch time, the metric. Intervals: the delta method
clustered by user (training.ab.stats), arms independent, and the same with CUPED on a covariate
fixed before any arm ranks. A paired counterfactual ranks the same A/B-day requests with every
model, and `--seeds N` retrains each variant (biased, debiased, debiased with the simulator's true
curve fixed) with N training seeds to set the debiasing effect against training noise. Writes
OUT/report.md and OUT/result.json; prints the report.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import yaml

from cli.demo import free_port, start_service
from ranker.schema import load_default_spec
from ranker.scoring import DEFAULT_FORMULA, ScoreFormula
from sim.simulate import simulate
from sim.traffic import TrafficConfig, examination, run_traffic
from sim.world import SimulatorConfig, World
from training.ab.report import ab_report
from training.ab.stats import Estimate, ratio, relative_lift
from training.build_log import BuildConfig, Source, build_log
from training.config import load_config
from training.data import MS_PER_DAY, day_name
from training.export import export_run
from training.prepare import prepare_data
from training.retrain.config import load_retrain_config
from training.retrain.run import run_once
from training.trainer import Trainer

MODEL = "ranker"
ARMS = ("biased", "debiased")  # control, treatment
LAYER = "debias"  # the A/B's layer; the service labels a request `debias=<arm>`
# Every arm ranks by predicted watch time: the A/B's metric (ScoreFormula's default mixes in
# click and completion, whose scales differ between a biased and a debiased model).
WATCH = ScoreFormula(weights={"watch_time": 1.0})
POSITION_BIAS = 1.0  # the simulator's examination curve 1/log2(p+2), in every traffic round


@dataclass(frozen=True)
class Size:
    """One run's sizes. The world is shared by the offline logs and every traffic round."""

    world: SimulatorConfig
    served_days: int  # traffic days served by v1: the retrain window (train, valid, gate)
    requests_per_served_day: int
    ab_requests: int
    concurrency: int
    # The production training config (v1 and both retrains; `debias.position` added per arm).
    train: dict[str, Any] = field(default_factory=dict)


SMALL_MODEL = {
    "model": {
        "kind": "mmoe",
        "config": {"embedding_dim": 8, "num_experts": 4, "expert_units": [64, 32],
                   "tower_units": [32], "feeds": {"completion": "click"}},
    },
    "tasks": {"losses": {"watch_time": "zi_gamma"}},  # E[watch seconds]: what the A/B measures
    "balancer": {"name": "ew"},
    "optimizer": {"lr": 0.003},
}  # fmt: skip

SIZES: dict[str, Size] = {
    "full": Size(
        world=SimulatorConfig(
            users=3000, items=10000, authors=1000, days=3, requests_per_day=1500, oracle=True
        ),
        served_days=4,
        requests_per_served_day=2500,
        ab_requests=48000,
        concurrency=4,
        train={
            **SMALL_MODEL,
            "train": {
                "epochs": 3,
                "batch_size": 1024,
                "patience": 0,
                # The likelihood of the logged outcomes (a debiased run's at the served
                # positions): the same criterion for both arms, and no ranking metric that the
                # production order it was logged in would favour.
                "early_stopping": "loss",
            },
        },
    ),
    # Seconds, for the test: the loop's plumbing, not its statistics.
    "tiny": Size(
        world=SimulatorConfig(
            users=200, items=600, authors=60, days=3, requests_per_day=60, oracle=True
        ),
        served_days=3,
        requests_per_served_day=40,
        ab_requests=60,
        concurrency=2,
        train={
            "model": {
                "kind": "mmoe",
                "config": {
                    "embedding_dim": 4,
                    "num_experts": 2,
                    "expert_units": [8],
                    "tower_units": [8],
                },
            },
            "train": {"epochs": 1, "batch_size": 256, "max_steps_per_epoch": 3, "threads": 1},
        },
    ),
}


@dataclass
class Timer:
    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        print(f"\n== {name}", flush=True)
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - started, 1)
            print(f"   ({self.seconds[name]:.1f} s)", flush=True)


@contextmanager
def serving(workdir: Path, registry: Path, experiments: Path) -> Iterator[str]:
    """The service on a free loopback port for the duration; yields its URL."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port(0)
    process = start_service(workdir, registry, experiments, port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=60)
        (workdir / "serve.pid").unlink(missing_ok=True)


def experiments_doc(default: str, arms: dict[str, str] | None = None) -> dict[str, Any]:
    """Default arm `default`; with `arms`, layer `debias` splits users evenly between them."""

    def model(version: str) -> dict[str, str]:
        return {"name": MODEL, "version": version}

    doc: dict[str, Any] = {
        "version": 1,
        "salt": "debias-ab",
        "default": {"model": model(default), "score": WATCH.to_dict()},
        "layers": [],
    }
    if arms:
        width = 100 // len(arms)
        doc["layers"].append({
            "name": LAYER,
            "buckets": 100,
            "variants": [
                {"name": name, "buckets": [i * width, (i + 1) * width], "model": model(version)}
                for i, (name, version) in enumerate(arms.items())
            ],
        })  # fmt: skip
    return doc


def train_production(size: Size, logs: Path, run: Path, registry: Path) -> str:
    """v1: the production training config on the offline (position-free) logs, exported."""
    doc = {**size.train, "data": {"paths": [str(logs)]}, "out": str(run)}
    (run.parent / "v1.yaml").write_text(yaml.safe_dump(doc))
    config = load_config(run.parent / "v1.yaml")
    Trainer(config, prepare_data(config), run, progress=False).fit()
    return export_run(run, registry, MODEL).version


def serve_days(size: Size, world: World, out: Path, registry: Path, v1: str) -> list[Path]:
    """v1 serves `served_days` simulated days of traffic; returns each day's traffic folder."""
    experiments = out / "experiments-production.yaml"
    experiments.write_text(yaml.safe_dump(experiments_doc(v1)))
    folders = []
    with serving(out / "serve-production", registry, experiments) as url:
        for k in range(size.served_days):
            day = world.config.days + k
            folder = out / "traffic" / f"day{day}"
            summary = run_traffic(world, TrafficConfig(
                url=url, out=folder, requests=size.requests_per_served_day, seconds=1800,
                concurrency=size.concurrency, seed=day, day=day, position_bias=POSITION_BIAS,
            ))  # fmt: skip
            print(f"   simulated day {day}: {summary.lines()[0]}; {summary.lines()[2]}")
            folders.append(folder)
    return folders


def built_log(out: Path, traffic: list[Path]) -> tuple[Path, dict[str, int]]:
    """build-log of the served impressions + the traffic's events, then each row back on its
    request's simulated day; returns the log and build-log's counts."""
    built = out / "built"
    summary = build_log(BuildConfig(
        impressions=Source((str(out / "serve-production" / "serving" / "impressions.jsonl"),)),
        events=Source(tuple(str(f / "events.jsonl") for f in traffic)),
        out=built, spec=load_default_spec(), open_days=True,
    ))  # fmt: skip
    print("\n".join(f"   {line}" for line in summary.lines()[1:]))
    simulated: dict[str, int] = {}
    for folder in traffic:
        for line in (folder / "outcomes.jsonl").read_bytes().splitlines():
            row = orjson.loads(line)
            simulated[row["request_id"]] = row["ts"]
    table = pa.concat_tables(pq.read_table(f) for f in sorted(built.rglob("*.parquet")))
    ids = table["request_id"].to_pylist()
    ts = pa.array([simulated[str(r)] for r in ids], pa.int64())
    table = table.set_column(table.schema.get_field_index("ts"), "ts", ts)
    served = out / "served"
    shutil.rmtree(served, ignore_errors=True)
    days = table["ts"].to_numpy() // MS_PER_DAY
    for day in np.unique(days):
        part = served / f"day={day_name(day)}" / "part-build-log.parquet"
        part.parent.mkdir(parents=True)
        pq.write_table(table.filter(pa.array(days == day)), part)
    return served, dict(summary.counts)


# The retrain window: `all` is the retrainer's rolling window over every day it holds (the offline
# days v1 learnt from and the served days, 3 + 4 = `window_days` 7, the retrainer's default);
# `served` gives the retrains the served days only, less data than v1 had.
WINDOWS = ("all", "served")


def retrain_window(out: Path, offline: Path, served: Path, window: str) -> tuple[Path, int]:
    """The retrains' log folder and its day count. With `all`, the offline days join the served
    ones with `position` 0 on every row: the simulator drew them without a position effect, so
    every row was examined, which is what position 0 means to the PAL tower."""
    served_days = len(list(served.glob("day=*")))
    if window == "served":
        return served, served_days
    folder = out / "window"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(served, folder)
    names = pq.read_schema(next(served.rglob("*.parquet"))).names
    offline_days = sorted(offline.glob("day=*"))
    for day in offline_days:
        table = pa.concat_tables(pq.read_table(f) for f in sorted(day.glob("*.parquet")))
        table = table.append_column("position", pa.array(np.zeros(table.num_rows, np.int64)))
        keep = [n for n in names if n in table.column_names]
        (folder / day.name).mkdir()
        pq.write_table(table.select(keep), folder / day.name / "part-offline.parquet")
    return folder, served_days + len(offline_days)


@dataclass
class Retrained:
    arm: str
    version: str
    decision: str  # the gate's: publish | keep | failed
    reason: str
    report: str
    examination: list[float] | None


def retrain(
    size: Size, arm: str, out: Path, window: tuple[Path, int], registry: Path, v1: str
) -> Retrained:
    """`ranker retrain` (lock, gate against production v1, publish) on the window's days."""
    folder = out / f"retrain-{arm}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    experiments = folder / "experiments.yaml"
    experiments.write_text(yaml.safe_dump(experiments_doc(v1)))
    debias = "pal" if arm == "debiased" else "none"
    doc = {
        "train": {**size.train, "debias": {"position": debias}},
        "data": {"paths": [str(window[0])]},
        "window_days": window[1],
        "registry": str(registry),
        "model_name": MODEL,
        "experiments": {"file": str(experiments)},
        "runs_dir": str(folder / "runs"),
        "report_dir": str(folder / "reports"),
        "keep_runs": None,
    }
    (folder / "retrain.yaml").write_text(yaml.safe_dump(doc))
    outcome = run_once(load_retrain_config(folder / "retrain.yaml", environ={}))
    metrics = json.loads((Path(outcome.run_dir) / "metrics.json").read_text())
    return Retrained(arm, outcome.published or "", outcome.decision, outcome.reason,
                     str(Path(outcome.report_dir) / "report.md"), metrics.get("examination"))  # fmt: skip


@dataclass
class ArmResult:
    sums: UserSums  # per user: true expected watch time (with the position effect), requests
    observed: Estimate  # realised watch time per request (s), from ab-report

    @property
    def truth(self) -> Estimate:
        return self.sums.truth


@dataclass(frozen=True)
class UserSums:
    """One arm's per-user sums over its requests."""

    # True expected watch time of what was served, in served order (examination included).
    watch: np.ndarray
    # The same requests' candidates' true watch time under a random order: fixed before the arm
    # ranks anything, so a covariate that no treatment can move.
    covariate: np.ndarray
    requests: np.ndarray

    @property
    def truth(self) -> Estimate:
        return ratio(self.watch, self.requests)


def user_sums(log: Path) -> dict[str, UserSums]:
    """Per arm, from the A/B day's log (the simulator's view: oracle columns include the
    position effect; every candidate is served, so a request's rows are its candidate set)."""
    names = ["variant", "user_id", "request_id", "position", "oracle_watch_time"]
    table = pq.read_table(log, columns=names)
    out = {}
    for arm in ARMS:
        rows = table.filter(pc.equal(table["variant"], f"{LAYER}={arm}"))
        position = rows["position"].to_numpy()
        watch = rows["oracle_watch_time"].to_numpy().astype(np.float64)
        unseen = watch / examination(position, POSITION_BIAS)  # the item's value once examined
        _, request_index = np.unique(rows["request_id"].to_numpy(), return_inverse=True)
        length = np.bincount(request_index)
        mean_seen = np.array([examination(np.arange(n), POSITION_BIAS).mean() for n in length])
        random_order = mean_seen * np.bincount(request_index, weights=unseen)
        users, user_index = np.unique(rows["user_id"].to_numpy(), return_inverse=True)
        _, first = np.unique(request_index, return_index=True)
        owner = user_index[first]  # request -> user
        out[arm] = UserSums(
            np.bincount(user_index, weights=watch, minlength=len(users)),
            np.bincount(owner, weights=random_order, minlength=len(users)),
            np.bincount(owner, minlength=len(users)).astype(np.float64),
        )
    return out


def cuped_difference(treatment: UserSums, control: UserSums) -> Estimate:
    """Treatment - control of true watch time per request, adjusted by the covariate (CUPED:
    Deng, Xu, Kohavi & Walker, WSDM 2013) on the delta method's linearisation of the ratios
    (Deng, Knoblich & Lu, KDD 2018): (R_t - R_c) - θ (Q_t - Q_c), Q the covariate per request.
    Q has the same expectation in both arms, so the adjustment removes the variance that users
    and candidate sets bring, never the effect; θ is pooled over the arms."""

    def linearised(s: UserSums) -> tuple[float, float, np.ndarray, np.ndarray]:
        n, mean_n = s.requests.sum(), s.requests.mean()
        r, q = s.watch.sum() / n, s.covariate.sum() / n
        return r, q, (s.watch - r * s.requests) / mean_n, (s.covariate - q * s.requests) / mean_n

    r_t, q_t, y_t, x_t = linearised(treatment)
    r_c, q_c, y_c, x_c = linearised(control)
    x, y = np.r_[x_t, x_c], np.r_[y_t, y_c]
    theta = float((x * y).sum() / (x * x).sum())  # each arm's linearisations have mean 0
    var = np.var(y_t - theta * x_t, ddof=1) / len(y_t) + np.var(y_c - theta * x_c, ddof=1) / len(
        y_c
    )
    return Estimate((r_t - r_c) - theta * (q_t - q_c), float(np.sqrt(var)))


def online_ab(size: Size, world: World, out: Path, registry: Path, v1: str,
              versions: dict[str, str]) -> dict[str, ArmResult]:  # fmt: skip
    """Both retrained versions as arms of one experiment config, one simulated day of traffic."""
    experiments = out / "experiments-ab.yaml"
    experiments.write_text(yaml.safe_dump(experiments_doc(v1, versions)))
    day = world.config.days + size.served_days
    traffic, log = out / "traffic" / "ab", out / "ab-log"
    shutil.rmtree(log, ignore_errors=True)
    with serving(out / "serve-ab", registry, experiments) as url:
        summary = run_traffic(world, TrafficConfig(
            url=url, out=traffic, requests=size.ab_requests, seconds=1800,
            concurrency=size.concurrency, seed=day, day=day, position_bias=POSITION_BIAS, log_dir=log,
        ))  # fmt: skip
    print("\n".join(f"   {line}" for line in summary.lines()[:5]))
    report, _ = ab_report(
        traffic / "outcomes.jsonl", out / "ab-report",
        impressions=out / "serve-ab" / "serving" / "impressions.jsonl", experiments=experiments,
    )  # fmt: skip
    observed = {
        arm: Estimate(v["metrics"]["watch_time_per_request"]["value"],
                      v["metrics"]["watch_time_per_request"]["se"])
        for arm, v in report["variants"].items()
    }  # fmt: skip
    sums = user_sums(log)
    return {arm: ArmResult(sums[arm], observed[arm]) for arm in ARMS}


def counterfactual(
    world: World,
    registry: Path,
    versions: dict[str, str],
    day: int,
    requests: int,
    formula: ScoreFormula = WATCH,
) -> dict[str, np.ndarray]:
    """Paired offline check: every model ranks the same sampled requests (the A/B day's first
    `requests`), as the service would (ONNX Runtime, the served score formula); returns each
    model's true expected watch time per request under the examination curve."""
    from ranker.features import FeatureEncoder
    from ranker.registry import load_manifest
    from ranker.scoring import score
    from sim.traffic import Served, log_table, sample_requests
    from training.data import encode_table
    from training.tune import onnx_predict

    batch = list(sample_requests(world, day, seed=day, n=requests))
    truth = []
    for r in batch:  # as sim.traffic.draw asks the world, for the candidates in any order
        user, hour, tab, ts = (
            np.full(len(r.candidates), v) for v in (r.user_idx, r.hour, r.tab, r.ts)
        )
        truth.append(world.expected_outcomes(user, r.candidates, hour, tab, ts))
    rows = [Served(r, r.candidates, t, np.zeros(len(r.candidates), np.int8),
                   np.zeros(len(r.candidates), np.float32), "", "", 0)
            for r, t in zip(batch, truth, strict=True)]  # fmt: skip
    table = log_table(world, rows)
    request = table["request_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, request[1:] != request[:-1]])
    out = {}
    for name, version in versions.items():
        folder = registry / MODEL / version
        manifest = load_manifest(folder)
        data = encode_table(table, FeatureEncoder(manifest.spec()))
        scores = score(formula, onnx_predict(folder, manifest, data))
        per_request = np.empty(len(batch))
        for i, (begin, end) in enumerate(zip(starts, np.r_[starts[1:], len(request)], strict=True)):
            order = np.argsort(-scores[begin:end], kind="stable")
            watch = truth[i].watch_time[order]
            per_request[i] = float((examination(np.arange(len(order)), 1.0) * watch).sum())
        out[name] = per_request
    return out


def paired_difference(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Mean of a - b over the same requests, with its 95% normal interval."""
    diff = a - b
    e = Estimate(float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(len(diff))))
    return {"value": e.value, "se": e.se, "ci": e.ci}


def difference(treatment: Estimate, control: Estimate) -> Estimate:
    """treatment - control of independent arms."""
    return Estimate(treatment.value - control.value, float(np.hypot(treatment.se, control.se)))


# Seed-study variants: the retrain's config with this debiasing; `true` fixes the simulator's own
# examination curve in the tower (what a perfectly estimated curve would give).
VARIANTS = {"biased": "none", "debiased": "pal", "debiased_true_curve": "true"}


def train_variant(size: Size, window: Path, run: Path, variant: str, seed: int) -> None:
    """One seed of one variant on the window's days, split and selected as the retrainer does
    (the newest day is the gate's and stays out, as in `ranker retrain`)."""
    debias = VARIANTS[variant]
    doc = {
        **size.train,
        "debias": {"position": "none" if debias == "none" else "pal"},
        "data": {"paths": [str(window)]},
        "out": str(run),
    }
    doc["train"] = {**doc.get("train", {}), "seed": seed}
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(yaml.safe_dump(doc))
    config = load_config(run / "config.yaml")
    trainer = Trainer(config, prepare_data(config), run, progress=False)
    tower = trainer.wrapper.position
    if debias == "true" and tower is not None:
        # Position 0's entry is never read (seen by definition); kept finite.
        seen = np.minimum(examination(np.arange(tower.max_positions), POSITION_BIAS), 1 - 1e-6)
        with torch.no_grad():
            tower.not_seen_logit.copy_(torch.from_numpy(np.log1p(-seen) - np.log(seen)))
        tower.not_seen_logit.requires_grad_(False)  # Adam skips it: the curve stays exact
    trainer.fit()


def seed_study(
    size: Size,
    out: Path,
    world: World,
    registry: Path,
    window: Path,
    first: dict[str, str],
    seeds: int,
) -> dict[str, Any]:
    """Training noise against the debiasing effect: every variant with `seeds` training seeds
    (seed 0 of the two arms: the retrained models themselves), all ranking the same requests."""
    versions: dict[str, list[str]] = {v: [] for v in VARIANTS}
    for variant in VARIANTS:
        for seed in range(seeds):
            if seed == 0 and variant in first:
                versions[variant].append(first[variant])
                continue
            run = out / "seeds" / f"{variant}-{seed}"
            shutil.rmtree(run, ignore_errors=True)
            train_variant(size, window, run, variant, seed)
            versions[variant].append(export_run(run, registry, MODEL).version)
    day = size.world.days + size.served_days
    flat = {f"{v}-{i}": version for v, vs in versions.items() for i, version in enumerate(vs)}
    doc: dict[str, Any] = {"versions": versions}
    for name, formula in (("watch_time", WATCH), ("default_formula", DEFAULT_FORMULA)):
        paired = counterfactual(world, registry, flat, day, min(size.ab_requests, 2000), formula)
        means = {v: [float(paired[f"{v}-{i}"].mean()) for i in range(seeds)] for v in VARIANTS}
        doc[name] = {
            "mean": {v: float(np.mean(m)) for v, m in means.items()},
            "seed_sd": {
                v: float(np.std(m, ddof=1)) if seeds > 1 else 0.0 for v, m in means.items()
            },
            **{
                f"{v}_minus_biased": paired_difference(
                    np.mean([paired[f"{v}-{i}"] for i in range(seeds)], axis=0),
                    np.mean([paired[f"biased-{i}"] for i in range(seeds)], axis=0),
                )
                for v in ("debiased", "debiased_true_curve")
            },
        }
    return doc


def _estimate(e: Estimate) -> dict[str, Any]:
    return {"value": e.value, "se": e.se, "ci": list(e.ci)}


def ab_summary(arms: dict[str, ArmResult]) -> dict[str, Any]:
    """Per arm and debiased - biased: plain (delta method) and covariate-adjusted (CUPED)."""
    treatment, control = arms["debiased"], arms["biased"]
    return {
        "arms": {
            arm: {
                "users": len(a.sums.requests),
                "requests": int(a.sums.requests.sum()),
                "truth": _estimate(a.truth),
                "observed": _estimate(a.observed),
            }
            for arm, a in arms.items()
        },
        "difference": _estimate(difference(treatment.truth, control.truth)),
        "relative_lift": _estimate(relative_lift(treatment.truth, control.truth)),
        "cuped_difference": _estimate(cuped_difference(treatment.sums, control.sums)),
    }


def _ci(e: dict[str, Any], fmt: str = "{:+.3f}") -> str:
    low, high = e["ci"]
    return f"{fmt.format(e['value'])} (95% CI {fmt.format(low)} .. {fmt.format(high)})"


def render(result: dict[str, Any]) -> str:
    arms = result["arms"]
    lines = [
        "# Position debiasing: online A/B on the simulator",
        "",
        "| arm | model | gate vs v1 | users | requests | true watch s / request "
        "| realised watch s / request |",
        "|---|---|---|---:|---:|---|---|",
    ]
    for arm in ARMS:
        a, r = arms[arm], result["retrained"][arm]
        lines.append(
            f"| {arm} | {r['version']} | {r['decision']} | {a['users']} | {a['requests']} "
            f"| {_ci(a['truth'], '{:.2f}')} | {_ci(a['observed'], '{:.2f}')} |"
        )
    lines.append("")
    for key, what in (("difference", "delta method"), ("cuped_difference", "CUPED-adjusted")):
        e = result[key]
        verdict = "above zero" if e["ci"][0] > 0 else "NOT above zero"
        lines.append(f"debiased - biased, true watch s / request, {what}: {_ci(e)}, {verdict}")
    lines.append(f"relative lift (delta method): {_ci(result['relative_lift'], '{:+.2%}')}")
    paired = result["counterfactual"]
    lines += [
        "",
        f"paired counterfactual ({paired['requests']} A/B-day requests ranked by every model): "
        + ", ".join(f"{k} {v:.2f} s" for k, v in paired["mean"].items())
        + f"; debiased - biased {_ci(paired['debiased_minus_biased'])}, debiased - v1 "
        + _ci(paired["debiased_minus_v1"]),
        "",
        "learnt P(seen | position) vs the simulator's 1/log2(p+2), positions 0-9:",
        "  learnt " + " ".join(f"{v:.2f}" for v in result["examination"]["learnt"]),
        "  true   " + " ".join(f"{v:.2f}" for v in result["examination"]["true"]),
        "",
        "gate (each retrain vs production v1 on the newest served day): "
        + "; ".join(f"{arm}: {result['retrained'][arm]['reason']}" for arm in ARMS),
        "",
        "stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in result["seconds"].items()),
    ]
    study = result.get("seed_study")
    if study:
        seeds = len(study["versions"]["biased"])
        lines += ["", f"seed study ({seeds} training seeds per variant, paired counterfactual):"]
        for formula in ("watch_time", "default_formula"):
            doc = study[formula]
            lines.append(
                f"  ranked by {formula}: "
                + ", ".join(
                    f"{v} {doc['mean'][v]:.2f} (seed sd {doc['seed_sd'][v]:.2f})" for v in VARIANTS
                )
                + f"; debiased - biased {_ci(doc['debiased_minus_biased'])}, true curve - biased "
                + _ci(doc["debiased_true_curve_minus_biased"])
            )
    return "\n".join(lines) + "\n"


def run(size: Size, out: Path, seeds: int = 1, window: str = "all") -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    registry = out / "models"
    shutil.rmtree(registry, ignore_errors=True)
    timer = Timer()
    world = World(size.world)
    with timer.stage(f"simulate {size.world.days} offline days (no position effect)"):
        simulate(size.world, out / "offline", progress=False)
    with timer.stage("train and export production v1 on them"):
        v1 = train_production(size, out / "offline", out / "v1", registry)
    with timer.stage(f"v1 serves {size.served_days} simulated days, examination 1/log2(p+2)"):
        traffic = serve_days(size, world, out, registry, v1)
    with timer.stage("build-log: served impressions + outcome events -> training days"):
        served, counts = built_log(out, traffic)
        days = retrain_window(out, out / "offline", served, window)
    retrained: dict[str, Retrained] = {}
    for arm in ARMS:
        with timer.stage(f"retrain {arm} (gate against v1)"):
            retrained[arm] = retrain(size, arm, out, days, registry, v1)
            print(f"   {retrained[arm].decision}: {retrained[arm].reason}")
    for arm, r in retrained.items():
        if not r.version:  # refused by the gate: exported unreferenced, for the A/B only
            run_dir = sorted((out / f"retrain-{arm}" / "runs").iterdir())[-1]
            retrained[arm] = replace(r, version=export_run(run_dir, registry, MODEL).version)
    with timer.stage(f"online A/B: {size.ab_requests} requests, biased vs debiased arms"):
        arms = online_ab(size, world, out, registry, v1, {a: retrained[a].version for a in ARMS})
    with timer.stage("paired counterfactual: every model ranks the same A/B-day requests"):
        versions = {"v1": v1, **{a: retrained[a].version for a in ARMS}}
        day = size.world.days + size.served_days
        paired = counterfactual(world, registry, versions, day, min(size.ab_requests, 2000))
    study = None
    if seeds > 1:
        with timer.stage(f"seed study: {seeds} training seeds per variant on the window"):
            first = {a: retrained[a].version for a in ARMS}
            study = seed_study(size, out, world, registry, days[0], first, seeds)
    learnt = retrained["debiased"].examination or []
    result = {
        "size": {
            "world": size.world.__dict__,
            "served_days": size.served_days,
            "requests_per_served_day": size.requests_per_served_day,
            "ab_requests": size.ab_requests,
            "window": window,
            "window_days": days[1],
        },
        "production": v1,
        "build_log_counts": counts,
        "retrained": {arm: r.__dict__ for arm, r in retrained.items()},
        **ab_summary(arms),
        "examination": {
            "learnt": learnt[:10],
            "true": examination(np.arange(10), 1.0).round(4).tolist(),
        },
        "counterfactual": {
            "requests": len(paired["v1"]),
            "mean": {name: float(v.mean()) for name, v in paired.items()},
            "debiased_minus_biased": paired_difference(paired["debiased"], paired["biased"]),
            "debiased_minus_v1": paired_difference(paired["debiased"], paired["v1"]),
        },
        "seed_study": study,
        "seconds": timer.seconds,
    }
    (out / "result.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / "report.md").write_text(render(result))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--out", type=Path, default=Path("out/debias_ab"))
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="training seeds per variant for the seed study (1: none)",
    )
    parser.add_argument(
        "--window",
        choices=WINDOWS,
        default="all",
        help="the retrains' days: all the log holds (offline + served) or the served days only",
    )
    parser.add_argument(
        "--world-seed", type=int, default=0, help="the simulated world's seed (another world)"
    )
    args = parser.parse_args()
    started = time.perf_counter()
    size = SIZES[args.size]
    size = replace(size, world=replace(size.world, seed=args.world_seed))
    result = run(size, args.out, args.seeds, args.window)
    print("\n" + render(result))
    print(f"total {time.perf_counter() - started:.0f} s; {args.out / 'report.md'}")


if __name__ == "__main__":
    main()
