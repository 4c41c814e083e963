"""The serving state and its lifecycle: build off to the side, warm, swap by one assignment.

`ServingState` is immutable: a config and the warmed models it references. A request reads
`manager.state` once and uses that object to the end, so a swap (one attribute assignment) never
changes anything under a request in flight; the old sessions live until the last such request
drops them. Builds are serialised by a lock; a failed build leaves the current state serving and
is reported in /readyz and /metrics.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from ranker.experiment_store import ExperimentStore, StoreError, model_fields
from ranker.experiments import ExperimentConfig, ExperimentError, ModelRef
from serving.errors import split_field
from serving.models import LoadedModel, ModelError, ModelPool
from serving.parsing import RequestParser

log = logging.getLogger("ranker.serving.state")


class ConfigRejected(ValueError):
    """A config (or the models it names) that cannot be served; `field` names where."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class ServingState:
    config: ExperimentConfig
    models: Mapping[ModelRef, LoadedModel]
    # time.time() when this state started serving.
    since: float = field(default_factory=time.time)
    # The /rank parser for the item features these models take.
    parser: RequestParser = field(init=False, repr=False, compare=False)
    # True when a model has a dynamic batcher: /rank then awaits `rank_batched` (serving.ranking);
    # False keeps every request on the inline `rank`, no await in its way.
    batching: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parser = RequestParser(m.kinds.item for m in self.models.values())
        object.__setattr__(self, "parser", parser)
        batching = any(m.batcher is not None for m in self.models.values())
        object.__setattr__(self, "batching", batching)


@dataclass
class StoreStatus:
    """What the service knows about its experiment store (read by /readyz and /metrics)."""

    ok: bool = False
    error: str | None = None
    errors: int = 0
    # time.time() of the last successful read; the served config is current as of then.
    last_success: float | None = None
    # Last config or model that could not be swapped in, and when.
    rejected: str | None = None
    rejected_at: float | None = None
    swaps: int = 0


class StateManager:
    """Owns the current ServingState, the store watcher thread, and every rebuild."""

    def __init__(self, store: ExperimentStore, pool: ModelPool, poll_interval: float) -> None:
        self.store = store
        self.pool = pool
        self.poll_interval = poll_interval
        self.state: ServingState | None = None
        self.status = StoreStatus()
        self._lock = threading.Lock()
        self._seen: object = object()  # store token last acted on
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- building ------------------------------------------------------------------------------
    def build(self, config: ExperimentConfig, *, force: bool = False) -> ServingState:
        """A warmed state for `config`; models already serving are reused unless `force`.

        ConfigRejected names the config field of a model that is missing or cannot be served.
        """
        where = {
            ModelRef(str(m.get("name")), str(m.get("version"))): path
            for path, m in reversed(model_fields(config.to_dict()))  # first mention wins
        }
        for ref in config.model_refs():
            if not self.pool.exists(ref):
                raise ConfigRejected(f"{where[ref]}.version", f"model {ref} is not in the registry")
        current = self.state
        reuse = {} if force or current is None else current.models
        models: dict[ModelRef, LoadedModel] = {}
        for ref in config.model_refs():
            try:
                models.update(self.pool.load([ref], reuse))
            except ModelError as exc:
                raise ConfigRejected(where[ref], str(exc)) from None
        try:
            config.check_models(lambda ref: ref in models, lambda ref: models[ref].tasks)
        except ExperimentError as exc:
            raise ConfigRejected(*split_field(str(exc), "config")) from None
        return ServingState(config, models)

    def swap(self, state: ServingState) -> None:
        self.state = state  # the one atomic step; requests holding the old state finish on it
        self.status.swaps += 1
        self.status.rejected = self.status.rejected_at = None
        log.info(
            "serving config version %d with models %s",
            state.config.version,
            [str(r) for r in state.models],
        )

    def apply(self, config: ExperimentConfig, *, force: bool = False) -> ServingState:
        with self._lock:
            state = self.build(config, force=force)
            self.swap(state)
            return state

    def reload(self) -> ServingState:
        """Re-read the store and re-load every model from the registry (fresh, re-verified)."""
        config = self._load_config()
        try:
            return self.apply(config, force=True)
        except ConfigRejected as exc:
            self._rejected(str(exc))
            raise

    def update(self, config: ExperimentConfig, expected_version: int | None = None) -> ServingState:
        """Validate and warm `config` here, store it as the next version, then serve it."""
        with self._lock:
            state = self.build(config)
            stored = self.store.save(config, expected_version)
            state = ServingState(stored, state.models)
            self.swap(state)
            with contextlib.suppress(StoreError):  # stored and serving: the token is a nicety
                self._seen = self.store.poll()
            return state

    def _load_config(self) -> ExperimentConfig:
        try:
            config = self.store.load()
        except StoreError as exc:
            self._store_failed(exc)
            raise
        except ExperimentError as exc:
            self._rejected(f"stored config: {exc}")
            raise
        self._store_ok()
        return config

    # -- watching the store --------------------------------------------------------------------
    def check(self) -> bool:
        """Poll the store once; rebuild and swap when its token moved. True if a swap happened."""
        try:
            token = self.store.poll()
        except StoreError as exc:
            self._store_failed(exc)
            return False
        self._store_ok()
        if token == self._seen and self.state is not None:
            return False
        self._seen = token  # a bad config is tried once, not every poll
        try:
            config = self.store.load()
        except StoreError as exc:
            self._store_failed(exc)
            self._seen = object()  # try again on the next poll
            return False
        except ExperimentError as exc:
            self._rejected(f"stored config: {exc}")
            return False
        except Exception as exc:  # a document the validators did not foresee: report, keep serving
            log.exception("stored experiment config could not be read")
            self._rejected(f"stored config: {type(exc).__name__}: {exc}")
            return False
        current = self.state
        if current is not None and current.config == config:
            return False
        try:
            self.apply(config)
        except ConfigRejected as exc:
            self._rejected(str(exc))
            return False
        return True

    def start(self) -> None:
        """First load (errors are reported, not raised: the watcher keeps trying), then watch."""
        self.check()
        self._thread = threading.Thread(target=self._watch, name="ranker-config-watch", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.store.wait(self.poll_interval)
            if self._stop.is_set():
                break
            try:
                self.check()
            except Exception:  # the watcher must outlive any single bad poll
                log.exception("experiment-config watcher")

    def stop(self) -> None:
        self._stop.set()
        self.store.close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # -- status --------------------------------------------------------------------------------
    def _store_ok(self) -> None:
        if not self.status.ok and self.status.error:
            log.info("experiment store %s is back", self.store.description)
        self.status.ok, self.status.error = True, None
        self.status.last_success = time.time()

    def _store_failed(self, exc: Exception) -> None:
        if self.status.ok or self.status.error is None:
            log.error("experiment store failed, keeping the last good config: %s", exc)
        self.status.ok, self.status.error = False, str(exc)
        self.status.errors += 1

    def _rejected(self, message: str) -> None:
        if message != self.status.rejected:  # not ready retries every poll: log each cause once
            log.error("not swapped in, keeping the current state: %s", message)
        self.status.rejected, self.status.rejected_at = message, time.time()

    @property
    def not_ready_reason(self) -> str:
        if self.state is not None:
            return ""
        return self.status.rejected or self.status.error or "starting"

    def config_age(self) -> float | None:
        """Seconds since the store last confirmed the served config (grows while it is down)."""
        last = self.status.last_success
        return None if last is None else max(0.0, time.time() - last)
