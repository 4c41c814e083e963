"""Experiment-config stores: Redis (shared by replicas) or a YAML file, and their key names.

Both behind `ExperimentStore`: `load()` the current config, `save()` a validated one as the next
version (refusing a stale `expected_version`), `poll()` a cheap token that changes when the config
may have, and `wait()` until a change hint or a timeout. The service polls every few seconds even
with Redis pub/sub, because a pub/sub message is lost when the subscriber is disconnected.

Model version `latest` (file configs and PUT bodies) resolves to the registry's newest published
version when the config is loaded; stored Redis configs always name concrete versions, so all
replicas serve the same one. The file store's poll token includes the newest versions, so a new
publish is picked up without a restart.

Shared by the service (which watches the store) and the retraining job (which writes it), so both
use the same key names without importing each other. Needs the `serve` extra (redis).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import redis
import yaml

from ranker.experiments import ExperimentConfig, ExperimentError
from ranker.registry import RegistryError, latest_version

log = logging.getLogger("ranker.experiment_store")

LATEST = "latest"
DEFAULT_PREFIX = "ranker"


def experiments_key(prefix: str = DEFAULT_PREFIX) -> str:
    """The Redis hash holding the config (fields `version` and `config`)."""
    return f"{prefix}:experiments"


def experiments_channel(prefix: str = DEFAULT_PREFIX) -> str:
    """The pub/sub channel that carries each new version number."""
    return f"{experiments_key(prefix)}:changed"


class StoreError(RuntimeError):
    """The store cannot be read or written (unavailable, empty, corrupt)."""


class StaleVersionError(StoreError):
    """`save` was given an expected version that is no longer current."""

    def __init__(self, expected: int, current: int) -> None:
        super().__init__(f"expected version {expected}, the store holds version {current}")
        self.expected = expected
        self.current = current


class ExperimentStore(Protocol):
    description: str

    def load(self) -> ExperimentConfig: ...

    def save(
        self, config: ExperimentConfig, expected_version: int | None = None
    ) -> ExperimentConfig: ...

    def poll(self) -> object: ...

    def wait(self, timeout: float) -> bool: ...

    def close(self) -> None: ...


def model_fields(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(field path, model mapping) of every model a config document names, default first."""
    found: list[tuple[str, dict[str, Any]]] = []
    default = doc.get("default")
    if isinstance(default, dict) and isinstance(default.get("model"), dict):
        found.append(("default.model", default["model"]))
    layers = doc.get("layers")
    for layer in layers if isinstance(layers, list) else []:
        if not isinstance(layer, dict):
            continue
        variants = layer.get("variants")
        for variant in variants if isinstance(variants, list) else []:
            if isinstance(variant, dict) and isinstance(variant.get("model"), dict):
                where = f"layers.{layer.get('name')}.{variant.get('name')}.model"
                found.append((where, variant["model"]))
    return found


def _with_model_copy(part: Any) -> Any:
    """A shallow copy of a mapping whose `model` mapping is copied too (other values shared)."""
    if not isinstance(part, dict):
        return part
    part = dict(part)
    if isinstance(part.get("model"), dict):
        part["model"] = dict(part["model"])
    return part


def resolve_latest(doc: Any, registry: Path) -> Any:
    """A copy of a config document with model version `latest` replaced by a concrete version."""
    if not isinstance(doc, dict):
        return doc
    # Copy only the containers on the way to each model mapping: a deep copy of an untrusted
    # body could recurse without bound.
    doc = _with_model_copy(doc)
    if isinstance(doc.get("default"), dict):
        doc["default"] = _with_model_copy(doc["default"])
    if isinstance(doc.get("layers"), list):
        doc["layers"] = [
            {**layer, "variants": [_with_model_copy(v) for v in layer["variants"]]}
            if isinstance(layer, dict) and isinstance(layer.get("variants"), list)
            else layer
            for layer in doc["layers"]
        ]
    for where, model in model_fields(doc):
        if model.get("version") != LATEST or not isinstance(model.get("name"), str):
            continue
        try:
            version = latest_version(registry, model["name"])
        except RegistryError as exc:
            raise ExperimentError(f"{where}.name: {exc}") from None
        if version is None:
            raise ExperimentError(
                f"{where}.version: 'latest' but {registry / model['name']} has no published "
                "version (run `ranker export` or `ranker demo`)"
            )
        model["version"] = version
    return doc


def latest_names(doc: Any) -> list[str]:
    if not isinstance(doc, dict):
        return []
    return sorted(
        {m["name"] for _, m in model_fields(doc) if m.get("version") == LATEST and "name" in m}
    )


def parse_document(doc: Any, registry: Path) -> ExperimentConfig:
    return ExperimentConfig.from_dict(resolve_latest(doc, registry))


class FileStore:
    """A YAML file, saved atomically; a read-only one (a packaged default) refuses `save`."""

    def __init__(self, path: Path, registry: Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.registry = Path(registry)
        self.read_only = read_only
        self.description = f"file {self.path}"
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def _read(self) -> Any:
        try:
            text = self.path.read_text()
        except OSError as exc:
            raise StoreError(
                f"{self.path}: cannot read experiment config: {exc.strerror}"
            ) from None
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ExperimentError(f"config: {self.path} is not valid YAML: {exc}") from None

    def load(self) -> ExperimentConfig:
        return parse_document(self._read(), self.registry)

    def save(
        self, config: ExperimentConfig, expected_version: int | None = None
    ) -> ExperimentConfig:
        if self.read_only:
            raise StoreError(
                f"{self.path} is the packaged default and read-only; set RANKER_EXPERIMENTS_FILE "
                "to a writable file or RANKER_REDIS_URL to change experiments"
            )
        with self._lock:
            current = 0
            if self.path.exists():
                doc = self._read()
                current = doc.get("version", 0) if isinstance(doc, dict) else 0
            if expected_version is not None and expected_version != current:
                raise StaleVersionError(expected_version, current)
            stored = ExperimentConfig.from_dict({**config.to_dict(), "version": current + 1})
            text = yaml.safe_dump(stored.to_dict(), sort_keys=False)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
            try:
                with os.fdopen(fd, "w") as handle:
                    handle.write(text)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, self.path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            return stored

    def poll(self) -> object:
        """File identity plus the newest versions of models it names as `latest`."""
        try:
            stat = self.path.stat()
        except OSError as exc:
            raise StoreError(f"{self.path}: {exc.strerror}") from None
        try:
            names = latest_names(self._read())
            newest = tuple((n, latest_version(self.registry, n)) for n in names)
        except (ExperimentError, RegistryError):
            newest = ()  # load() reports the problem; the token still tracks the file
        return (stat.st_mtime_ns, stat.st_size, newest)

    def wait(self, timeout: float) -> bool:
        return self._stop.wait(timeout)

    def close(self) -> None:
        self._stop.set()


# Version bump and publish in one transaction; WATCH makes a concurrent writer retry.
_MAX_RETRIES = 20
_WAIT_SLICE = 0.25


class RedisStore:
    """A Redis hash `{prefix}:experiments` with fields `version` and `config` (JSON).

    `save` bumps the version under WATCH/MULTI and publishes the new version on
    `{prefix}:experiments:changed`. An empty key is seeded from `seed` (the file config) once.
    """

    def __init__(
        self,
        url: str,
        key: str,
        channel: str,
        registry: Path,
        *,
        timeout: float = 1.0,
        seed: Callable[[], ExperimentConfig] | None = None,
    ) -> None:
        self.client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self.key = key
        self.channel = channel
        self.registry = Path(registry)
        self.seed = seed
        kwargs = self.client.connection_pool.connection_kwargs
        self.description = (
            f"redis {kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)} "
            f"key {key}"
        )
        self._pubsub: Any = None
        self._stop = threading.Event()
        self._wait_lock = threading.Lock()

    def load(self) -> ExperimentConfig:
        try:
            raw = self.client.hmget(self.key, ["version", "config"])
        except redis.RedisError as exc:
            raise StoreError(f"{self.description}: {exc}") from None
        version, text = raw
        if text is None:
            if self.seed is None:
                raise StoreError(
                    f"{self.description}: no experiment config stored; PUT /experiments one "
                    "or set RANKER_EXPERIMENTS_FILE to seed it"
                )
            try:
                return self.save(self.seed(), expected_version=0)
            except StaleVersionError:
                return self.load()  # another replica seeded it first
        config = ExperimentConfig.parse(text, self.description)
        if version is None or int(version) != config.version:
            raise StoreError(f"{self.description}: version field {version!r} != config version")
        return config

    def save(
        self, config: ExperimentConfig, expected_version: int | None = None
    ) -> ExperimentConfig:
        try:
            with self.client.pipeline() as pipe:
                for _ in range(_MAX_RETRIES):
                    try:
                        pipe.watch(self.key)
                        current = int(pipe.hget(self.key, "version") or 0)
                        if expected_version is not None and expected_version != current:
                            raise StaleVersionError(expected_version, current)
                        stored = ExperimentConfig.from_dict(
                            {**config.to_dict(), "version": current + 1}
                        )
                        pipe.multi()
                        pipe.hset(
                            self.key,
                            mapping={"version": stored.version, "config": stored.to_json()},
                        )
                        pipe.publish(self.channel, str(stored.version))
                        pipe.execute()
                        return stored
                    except redis.WatchError:
                        continue
        except redis.RedisError as exc:
            raise StoreError(f"{self.description}: {exc}") from None
        raise StoreError(f"{self.description}: too many concurrent writers, gave up")

    def poll(self) -> object:
        try:
            version = self.client.hget(self.key, "version")
        except redis.RedisError as exc:
            raise StoreError(f"{self.description}: {exc}") from None
        return int(version) if version is not None else None

    def wait(self, timeout: float) -> bool:
        """Block until a change hint arrives or `timeout` passes; True on a hint.

        Waits in short slices so `close()` (from another thread) is noticed quickly; only the
        thread inside `wait` touches the subscriber, since redis-py's PubSub is not thread-safe.
        """
        deadline = time.monotonic() + timeout
        with self._wait_lock:
            while not self._stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                try:
                    if self._pubsub is None:
                        self._pubsub = self.client.pubsub(ignore_subscribe_messages=True)
                        self._pubsub.subscribe(self.channel)
                    message = self._pubsub.get_message(timeout=min(left, _WAIT_SLICE))
                except (redis.RedisError, OSError, ValueError) as exc:
                    # Lost connection: drop the subscriber; the poll covers until Redis is back.
                    log.debug("pub/sub on %s failed: %s", self.channel, exc)
                    self._reset_pubsub()
                    self._stop.wait(min(left, _WAIT_SLICE))
                    continue
                if message is not None and message.get("type") == "message":
                    return True
            return False

    def _reset_pubsub(self) -> None:
        if self._pubsub is not None:
            with contextlib.suppress(redis.RedisError, OSError, AttributeError):
                self._pubsub.close()
            self._pubsub = None

    def close(self) -> None:
        self._stop.set()
        with self._wait_lock:  # a waiting thread leaves within one slice
            self._reset_pubsub()
        self.client.close()


def open_store(
    registry: Path,
    *,
    file: Path | None,
    redis_url: str | None = None,
    redis_prefix: str = DEFAULT_PREFIX,
    read_only: bool = False,
    seed_from_file: bool = False,
    timeout: float = 1.0,
) -> ExperimentStore:
    """Redis at `redis_url` when given, else the YAML `file`.

    `seed_from_file`: an empty Redis key is seeded once from `file` (the service does; the
    retraining job does not, since an empty store means "no production yet" to it).
    """
    file_store = FileStore(file, registry, read_only=read_only) if file is not None else None
    if redis_url is None:
        if file_store is None:
            raise StoreError("experiment store: neither a Redis URL nor a file was given")
        return file_store
    seed = file_store.load if seed_from_file and file_store is not None else None
    return RedisStore(
        redis_url,
        experiments_key(redis_prefix),
        experiments_channel(redis_prefix),
        registry,
        timeout=timeout,
        seed=seed,
    )
