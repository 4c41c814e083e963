"""`ranker retrain`: train on the newest logs, publish only what beats production, roll it out.

One run, under a lock (Redis or a lock file) so two never overlap:
    newest `window_days` days -> train a candidate with the production training config
    (all but the newest two days train, the day before the newest validates)
    -> score the candidate (PyTorch) and the production model (its published ONNX, through ONNX
    Runtime, exactly as served) on the newest day with the same metrics
    -> gate (training.retrain.gate) -> publish: export (atomic) and then, last, the experiment config
    (replace the default arm, or a treatment layer taking `share` of the buckets), saved with a
    stale-version check -> report (JSON + markdown) in report_dir/<run id>/.
A failed or killed run leaves registry and config as they were: nothing is written to either
before the gate has passed, the export is a rename, and the config is written in one step at the end.

Over 400 lines on purpose: this is the run's sequence (stores and lock, train, score both models,
gate, publish, roll out), each step a short function read in order; the gate, lock, cleanup and
report already live in their own modules beside it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import shutil
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import redis
import yaml

from ranker.experiment_store import (
    ExperimentStore,
    FileStore,
    StoreError,
    latest_names,
)
from ranker.experiment_store import open_store as open_experiment_store
from ranker.experiments import ExperimentConfig, ExperimentError, Layer, ModelRef, Variant
from ranker.features import FeatureEncoder
from ranker.registry import MODEL_FILE, Manifest, RegistryError, load_manifest, verify
from ranker.schema import FeatureSpec
from ranker.scoring import DEFAULT_FORMULA
from training.config import ConfigError
from training.data import EncodedData, encode_log, read_log
from training.exit_codes import EXIT_FAILED, EXIT_LOCKED, EXIT_OK, EXIT_UNREFERENCED, EXIT_USAGE
from training.retrain.cleanup import begin_publish, cleanup, end_publish
from training.retrain.config import RetrainConfig, RolloutConfig, candidate_config
from training.retrain.gate import Decision, decide
from training.retrain.lock import FileLock, LockedError, LockLostError, RedisLock, RunLock
from training.retrain.paired_bootstrap import Replicates, paired_bootstrap
from training.retrain.positions import at_served_positions, examination_curve
from training.retrain.report import Outcome, render, write_report

log = logging.getLogger("ranker.retrain")


_RUN_ID = re.compile(r"\d{8}T\d{6}Z(-\d+)*")


class RetrainError(RuntimeError):
    """A run that cannot go on; the registry and the experiment config are left untouched."""


# -- stores, lock, production --------------------------------------------------------------------
def open_store(config: RetrainConfig) -> ExperimentStore:
    """The service's experiment store. No seed: an empty store means "no production yet"."""
    exp = config.experiments
    return open_experiment_store(
        Path(config.registry),
        file=Path(exp.file) if exp.file and not exp.redis_url else None,
        redis_url=exp.redis_url or None,
        redis_prefix=exp.redis_prefix,
    )


def open_lock(config: RetrainConfig) -> RunLock:
    lock, exp = config.lock, config.experiments
    if lock.backend == "redis" or (lock.backend == "auto" and exp.redis_url):
        assert exp.redis_url is not None
        key = lock.key or f"{exp.redis_prefix}:retrain:{config.model_name}:lock"
        return RedisLock(exp.redis_url, key, lock.ttl_s)
    path = lock.file or Path(config.registry) / f".retrain-{config.model_name}.lock"
    return FileLock(path, lock.ttl_s)


def load_current(store: ExperimentStore) -> ExperimentConfig | None:
    """The stored experiment config, or None when nothing is stored yet."""
    if isinstance(store, FileStore):
        if not store.path.exists():
            return None
    elif store.poll() is None:
        return None
    return store.load()


def production_predictions(
    config: RetrainConfig, ref: ModelRef, gate_day: str
) -> tuple[Manifest, dict[str, np.ndarray], EncodedData]:
    """Production's per-row predictions on the gate day: its published ONNX through ONNX
    Runtime, fed by its own fitted feature spec, exactly as the service scores it."""
    from training.tune import onnx_predict

    version_dir = Path(config.registry) / ref.name / ref.version
    manifest = verify(version_dir)
    data = gate_day_rows(config, manifest.spec(), gate_day)
    return manifest, onnx_predict(version_dir, manifest, data), data


def gate_day_rows(config: RetrainConfig, spec: FeatureSpec, gate_day: str) -> EncodedData:
    """The gate day's rows encoded with a model's own fitted spec (only that day is read)."""
    day_log = read_log(
        list(config.data.paths),
        spec,
        drop_invalid=config.train.data.drop_invalid,
        days=[gate_day],
    )
    return encode_log(day_log, FeatureEncoder(spec))


def gate_intervals(
    config: RetrainConfig,
    candidate: dict[str, np.ndarray],
    cand_data: EncodedData,
    production: dict[str, np.ndarray],
    prod_data: EncodedData,
) -> dict[str, Replicates]:
    """Paired bootstrap over the gate day's requests. Both encodings read the same rows of the
    same files; a mismatch (a log that changed between the reads) stops the run."""
    same = np.array_equal(cand_data.request_id, prod_data.request_id) and all(
        np.array_equal(cand_data.labels[t], prod_data.labels[t])
        for t in cand_data.labels
        if t in prod_data.labels
    )
    if not same:
        raise RetrainError(
            "the gate day's rows differ between the candidate's and production's reads"
        )
    gate = config.gate
    return paired_bootstrap(
        cand_data.labels,
        candidate,
        {t: v for t, v in production.items() if t in cand_data.labels},
        cand_data.request_id,
        cand_data.user_id,
        gate.keys(),
        replicates=gate.bootstrap,
        seed=gate.seed,
    )


def rolled_out(
    current: ExperimentConfig | None, new: ModelRef, rollout: RolloutConfig
) -> tuple[ExperimentConfig, str]:
    """The experiment config that serves `new`, and what changed, in words."""
    if current is None:
        fresh = ExperimentConfig(1, "ranker", new, DEFAULT_FORMULA, ())
        return fresh, f"new experiment config: default arm -> {new}"
    if rollout.mode == "replace":
        changed = dataclasses.replace(current, default_model=new)
        return changed, f"default arm {current.default_model} -> {new}"
    end = round(rollout.share * rollout.buckets)
    layer = Layer(rollout.layer, rollout.buckets, (Variant(rollout.variant, 0, end, model=new),))
    names = [existing.name for existing in current.layers]
    layers = [layer if existing.name == layer.name else existing for existing in current.layers]
    if layer.name not in names:
        layers.append(layer)
    changed = dataclasses.replace(current, layers=tuple(layers))
    return changed, (
        f"layer {rollout.layer}: variant {rollout.variant} -> {new} on buckets [0, {end}) of "
        f"{rollout.buckets}; default arm stays {current.default_model}"
    )


# -- one run -------------------------------------------------------------------------------------
def _fresh_dir(parent: Path, run_id: str) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        path = parent / (run_id if n == 1 else f"{run_id}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RetrainError(f"{parent}: no free directory for run {run_id}")


def run_once(config: RetrainConfig) -> Outcome:
    """One retraining run under the lock. LockedError when another run holds it; any other
    exception is recorded in the report and re-raised."""
    started = time.perf_counter()
    now = datetime.now(UTC)
    lock = open_lock(config)
    lock.acquire()
    try:
        out = Outcome(
            run_id=now.strftime("%Y%m%dT%H%M%SZ"),
            started_at=now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            exit_code=EXIT_FAILED,
            model_name=config.model_name,
            config=config.to_dict(),
        )
        report_dir = _fresh_dir(Path(config.report_dir), out.run_id)
        out.run_id, out.report_dir = report_dir.name, str(report_dir)
        try:
            _run(config, lock, out)
            return out
        except BaseException as exc:  # interrupted runs are reported too, then re-raised
            out.decision, out.exit_code = "failed", EXIT_FAILED
            out.reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            out.reason += (
                "; registry and experiment config untouched"
                if out.published is None
                else f"; {out.published} is published but the experiment config was not updated"
            )
            raise
        finally:
            out.seconds = round(time.perf_counter() - started, 2)
            write_report(out, report_dir)
            log.info(
                "retrain %s: %s (%s); report %s", out.run_id, out.decision, out.reason, report_dir
            )
    finally:
        _prune_runs(Path(config.runs_dir), config.keep_runs)
        lock.release()


def _run(config: RetrainConfig, lock: RunLock, out: Outcome) -> None:
    """Train a candidate, score it and production on the gate day, publish if the gate passes."""
    from training.prepare import prepare_data
    from training.trainer import Trainer

    store = open_store(config)
    try:
        out.experiments = {"store": store.description, "mode": config.rollout.mode}
        current = load_current(store)
        out.experiments["version_before"] = current.version if current else None
        production = current.default_model if current else None
        out.production = str(production) if production else None
        out.cleanup = cleanup(config.registry, config.model_name, current).lines()
        for line in out.cleanup:
            log.info("retrain %s: cleanup: %s", out.run_id, line)
        if current is not None and config.rollout.mode == "treatment":
            _refuse_latest(store)

        run_dir = _fresh_dir(Path(config.runs_dir), out.run_id)
        out.run_dir = str(run_dir)
        train_config = candidate_config(config, run_dir)
        log.info("retrain %s: training a candidate in %s", out.run_id, run_dir)
        data = prepare_data(train_config)
        result = Trainer(train_config, data, run_dir, progress=False).fit()
        split = result["split"]
        out.window = {"train": split["train"], "valid": split["valid"], "gate": split["test"]}
        days = sum(len(v) for v in out.window.values())
        if days < config.window_days:
            out.warnings.append(f"the log holds {days} days; window_days is {config.window_days}")
        out.candidate_metrics = result["test"]

        manifest, intervals = None, None
        if production is not None:
            manifest, intervals = _against_production(
                config, out, production, split["test"][0], data.spec, run_dir
            )
        decision = decide(config.gate, result["test"], out.production_metrics, intervals)
        _record(out, decision)
        if not decision.publish:
            out.decision, out.exit_code = "keep", EXIT_OK
            return
        _publish(config, store, lock, out, run_dir, current, manifest)
    finally:
        store.close()


def _against_production(
    config: RetrainConfig,
    out: Outcome,
    production: ModelRef,
    gate_day: str,
    spec: FeatureSpec,
    run_dir: Path,
) -> tuple[Manifest, dict[str, Replicates]]:
    """Production scored as served and the candidate on the same gate-day rows: production's
    metrics, a warning when production saw the gate day, and the gate's paired intervals."""
    from training.checkpoint import BEST, load_best
    from training.evaluate import evaluate_predictions, predict

    log.info("retrain %s: scoring production %s on %s", out.run_id, production, gate_day)
    manifest, prod_preds, prod_data = production_predictions(config, production, gate_day)
    # The candidate's torch model on the same rows (its export must then match ONNX
    # Runtime within 1e-4 before it is published).
    cand_data = gate_day_rows(config, spec, gate_day)
    cand_preds = predict(load_best(run_dir / BEST), cand_data)
    curve = examination_curve(run_dir)
    if curve is not None:  # a debiased candidate: both models at the served positions
        if cand_data.position is None or prod_data.position is None:
            raise RetrainError(
                f"the candidate has a position tower but the gate day {gate_day} has no "
                "`position` column to score it at"
            )
        prod_preds = at_served_positions(prod_preds, prod_data.position, curve)
        cand_preds = at_served_positions(cand_preds, cand_data.position, curve)
    out.production_metrics = evaluate_predictions(prod_preds, prod_data)
    seen = manifest.data_window.get("train", []) + manifest.data_window.get("valid", [])
    if gate_day in seen:
        out.warnings.append(
            f"production {production} was trained or validated on the gate day "
            f"{gate_day}: the comparison favours it"
        )
    intervals = gate_intervals(config, cand_preds, cand_data, prod_preds, prod_data)
    out.gate_sample = {
        "rows": cand_data.rows,
        "requests": len(np.unique(cand_data.request_id)),
        "bootstrap": config.gate.bootstrap,
        "confidence": config.gate.confidence,
        "at_served_positions": curve is not None,
    }
    return manifest, intervals


def _refuse_latest(store: ExperimentStore) -> None:
    """A file config naming `latest` would serve a new version to everyone at once."""
    if isinstance(store, FileStore):
        names = latest_names(yaml.safe_load(store.path.read_text()))
        if names:
            raise ConfigError(
                f"{store.path} names model version 'latest' ({names}): publishing would switch "
                "every user at once; pin the versions there or use rollout.mode=replace"
            )


def _record(out: Outcome, decision: Decision) -> None:
    out.reason = decision.reason
    out.checks = [dataclasses.asdict(c) for c in decision.checks]


def _publish(
    config: RetrainConfig,
    store: ExperimentStore,
    lock: RunLock,
    out: Outcome,
    run_dir: Path,
    current: ExperimentConfig | None,
    production: Manifest | None,
) -> None:
    from training.export import export_run

    # The gate judged against `current`'s default arm: if it moved meanwhile, the verdict is stale.
    latest = load_current(store)
    before = latest.default_model if latest else None
    if before != (current.default_model if current else None):
        raise RetrainError(
            f"production changed during the run ({out.production} -> {before}); not publishing"
        )
    lock.check()
    latest = _pin_latest(store, latest, out)
    parent = None
    if production is not None:
        same = production.name == config.model_name
        parent = production.version if same else f"{production.name}/{production.version}"
    # From here to the config save a kill leaves debris; the journal lets the next run remove it.
    begin_publish(config.registry, config.model_name, out.run_id)
    manifest = export_run(run_dir, config.registry, config.model_name, parent=parent)
    out.published, out.decision = manifest.version, "publish"
    log.info("retrain %s: published %s/%s", out.run_id, manifest.name, manifest.version)
    new = ModelRef(manifest.name, manifest.version)
    try:
        lock.check()
        changed, out.rollout = rolled_out(latest, new, config.rollout)
        registry = Path(config.registry)
        # What the service checks before it swaps a config in: every model exists and predicts
        # the tasks its score formula weighs.
        changed.check_models(
            lambda ref: (registry / ref.name / ref.version / MODEL_FILE).is_file(),
            lambda ref: load_manifest(registry / ref.name / ref.version).task_names,
        )
        if isinstance(store, FileStore):
            store.path.parent.mkdir(parents=True, exist_ok=True)
        stored = store.save(changed, expected_version=latest.version if latest else 0)
    except (StoreError, ExperimentError, RegistryError, LockLostError, OSError) as exc:
        out.exit_code = EXIT_UNREFERENCED
        out.experiments["error"] = str(exc)
        out.reason += (
            f"; {manifest.version} is published but the experiment config was NOT updated "
            f"({type(exc).__name__}: {exc}). Serving keeps the versions the config names, so "
            "the new version is unused: point the config at it by hand, or the next run removes it"
        )
        return
    end_publish(config.registry, config.model_name)
    out.experiments["version_after"] = stored.version
    out.exit_code = EXIT_OK


def _pin_latest(
    store: ExperimentStore, current: ExperimentConfig | None, out: Outcome
) -> ExperimentConfig | None:
    """A file config naming `latest` would serve a new version as soon as it is exported, before
    the config names it (and for good if the run dies there): store it resolved first."""
    if current is None or not isinstance(store, FileStore):
        return current
    names = latest_names(yaml.safe_load(store.path.read_text()))
    if not names:
        return current
    pinned = store.save(current, expected_version=current.version)
    out.warnings.append(
        f"{store.path} named version 'latest' of {names}; pinned to "
        f"{[str(r) for r in current.model_refs()]} (config version {pinned.version}) before "
        "publishing, so a version is served only once the config names it"
    )
    return pinned


def _prune_runs(runs_dir: Path, keep: int | None) -> None:
    if keep is None or not runs_dir.is_dir():
        return
    runs = sorted(p for p in runs_dir.iterdir() if p.is_dir() and _RUN_ID.fullmatch(p.name))
    for old in runs[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


# -- report ------------------------------------------------------------------------------------
# -- command line ------------------------------------------------------------------------------
@contextlib.contextmanager
def progress_to_stderr() -> Iterator[None]:
    """The job's progress lines on stderr, without the exporter's chatty INFO logs."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def cleanup_command(config: RetrainConfig) -> int:
    """`ranker retrain --cleanup`: only the start-of-run cleanup, under the run lock."""
    try:
        lock = open_lock(config)
        lock.acquire()
    except LockedError as exc:
        print(f"ranker retrain: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    try:
        store = open_store(config)
        try:
            done = cleanup(config.registry, config.model_name, load_current(store))
        finally:
            store.close()
    except (StoreError, redis.RedisError, ExperimentError, OSError) as exc:
        print(f"ranker retrain --cleanup: failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        lock.release()
    for line in done.lines() or ["nothing to clean up"]:
        print(f"cleanup: {line}")
    return EXIT_OK


def run_command(config: RetrainConfig) -> int:
    """One run for the CLI: prints the report, returns the exit code (training.exit_codes)."""
    try:
        out = run_once(config)
    except LockedError as exc:
        print(f"ranker retrain: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    except ValueError as exc:  # config, data, registry: the user can act on the message
        print(f"ranker retrain: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (RetrainError, LockLostError, StoreError, redis.RedisError) as exc:
        print(f"ranker retrain: run failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(render(out), end="")
    print(f"report: {out.report_dir}")
    return out.exit_code
