"""Service settings: one frozen dataclass, filled from `RANKER_*` environment variables.

`Settings.from_env()` reads the environment (no pydantic-settings needed); `check()` refuses
unsafe or contradictory values with a message naming the variable, and returns warnings that are
worth logging but not fatal (e.g. a public bind address).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

Environment = Literal["development", "production"]
LogFormat = Literal["json", "text"]
PREFIX = "RANKER_"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class SettingsError(ValueError):
    """An invalid setting; the message names the environment variable."""


@dataclass(frozen=True)
class Settings:
    # development or production; production refuses weak admin tokens.
    environment: Environment = "development"
    # Model registry root: <registry>/<name>/<version>/{model.onnx, manifest.json}.
    registry: Path = Path("models")
    # Redis URL; None keeps experiments in a YAML file and impressions in a JSONL file.
    redis_url: str | None = None
    # Prefix of every Redis key, channel and stream this service uses (one namespace per deployment).
    redis_prefix: str = "ranker"
    # Experiment config YAML (the file store, or the seed of an empty Redis); None: the default
    # shipped in serving/default_experiments.yaml (read-only).
    experiments_file: Path | None = None
    # Bearer token for the admin endpoints; None disables them (403), "" is refused.
    admin_token: str | None = field(default=None, repr=False)
    # ONNX Runtime threads per session (0: ORT's default).
    intra_op_threads: int = 2
    inter_op_threads: int = 1
    # Let ORT's worker threads spin between runs: lower latency, but they burn CPU that request
    # parsing on a small machine may need (benchmark both).
    ort_spinning: bool = True
    # Providers in order of preference; ones this onnxruntime build lacks are skipped, loudly.
    providers: tuple[str, ...] = (CUDA, CPU)
    # Refuse to start (or swap in a model) unless CUDA is the active provider.
    require_cuda: bool = False
    # Candidate counts each session runs once before it serves.
    warmup_counts: tuple[int, ...] = (1, 100, 500)
    # Request limits.
    max_candidates: int = 2000
    max_body_bytes: int = 4 * 1024 * 1024
    # JSONL impression log used when no Redis is configured; None: impressions are not logged.
    impression_log: Path | None = Path("out/serving/impressions.jsonl")
    # Redis stream length kept by XADD MAXLEN ~ (approximate trimming is O(1)).
    impression_stream_maxlen: int = 1_000_000
    # Records waiting for the writer; beyond this a record is dropped and counted.
    impression_queue: int = 10_000
    # Seconds between experiment-store polls (pub/sub hints can be lost).
    poll_interval_s: float = 2.0
    # Redis socket timeout in seconds: how fast a dead Redis is noticed.
    redis_timeout_s: float = 1.0
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"
    # json: one object per line (request_id, model_version, variant on request lines); text.
    log_format: LogFormat = "json"
    # One access line per /rank request (after the response is sent).
    access_log: bool = True
    # gc.freeze() once models are loaded: the start-up heap leaves the collector's scans (p99).
    freeze_gc: bool = True
    # Young-generation threshold of the cyclic GC after start-up (Python's default: 700; 0 keeps
    # it). A 500-candidate request allocates ~1,100 tracked containers, so at 700 collections run
    # mid-request and promote live request objects; raised, reference counting frees nearly all
    # of them before a collection looks. Cyclic garbage lives a little longer, nothing more.
    gc_threshold: int = 50_000

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from `RANKER_<FIELD>` variables (e.g. RANKER_REDIS_URL), then `overrides`."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            key = PREFIX + f.name.upper()
            if key in env:
                values[f.name] = _convert(f.name, env[key], key)
        settings = cls(**values)
        return replace(settings, **overrides) if overrides else settings

    @property
    def experiments_key(self) -> str:
        return f"{self.redis_prefix}:experiments"

    @property
    def experiments_channel(self) -> str:
        return f"{self.redis_prefix}:experiments:changed"

    @property
    def impressions_stream(self) -> str:
        return f"{self.redis_prefix}:impressions"

    def check(self) -> list[str]:
        """Raise SettingsError on unsafe values; return warnings to log."""
        warnings: list[str] = []
        if self.environment not in ("development", "production"):
            raise SettingsError(
                f"RANKER_ENVIRONMENT: must be development or production, got {self.environment!r}"
            )
        if self.admin_token is not None:
            if not self.admin_token.strip():
                raise SettingsError(
                    "RANKER_ADMIN_TOKEN: an empty token is refused; unset it to disable admin"
                )
            if self.environment == "production" and len(self.admin_token) < 16:
                raise SettingsError("RANKER_ADMIN_TOKEN: use at least 16 characters in production")
        if self.log_format not in ("json", "text"):
            raise SettingsError(f"RANKER_LOG_FORMAT: must be json or text, got {self.log_format!r}")
        positive = ("max_candidates", "max_body_bytes", "impression_queue", "port")
        for name in positive:
            if getattr(self, name) < 1:
                raise SettingsError(f"{PREFIX}{name.upper()}: must be >= 1")
        if self.max_body_bytes < 1024:
            raise SettingsError("RANKER_MAX_BODY_BYTES: must be at least 1024")
        if self.gc_threshold < 0:
            raise SettingsError("RANKER_GC_THRESHOLD: must be >= 0 (0 keeps Python's default)")
        if self.intra_op_threads < 0 or self.inter_op_threads < 0:
            raise SettingsError("RANKER_INTRA_OP_THREADS / RANKER_INTER_OP_THREADS: must be >= 0")
        if self.poll_interval_s <= 0 or self.redis_timeout_s <= 0:
            raise SettingsError("RANKER_POLL_INTERVAL_S / RANKER_REDIS_TIMEOUT_S: must be > 0")
        if not self.providers:
            raise SettingsError("RANKER_PROVIDERS: name at least one execution provider")
        bad = [n for n in self.warmup_counts if not 1 <= n <= self.max_candidates]
        if bad:
            raise SettingsError(
                f"RANKER_WARMUP_COUNTS: {bad} outside 1..RANKER_MAX_CANDIDATES ({self.max_candidates})"
            )
        if self.environment == "production" and self.redis_url is None:
            warnings.append("production without RANKER_REDIS_URL: experiments come from a file")
        if not _is_loopback(self.host) and self.admin_token is None:
            warnings.append(
                f"binding {self.host} without RANKER_ADMIN_TOKEN: admin endpoints are disabled"
            )
        return warnings


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_NONE = {"", "none", "null"}
_BOOL = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


def _convert(name: str, raw: str, key: str) -> Any:
    """Environment text -> the field's type; errors name the variable."""
    default = _DEFAULTS[name]
    text = raw.strip()
    try:
        if name == "admin_token":
            return raw  # kept verbatim so check() can refuse an empty one
        if name in ("redis_url", "experiments_file", "impression_log"):
            if text.lower() in _NONE:
                return None
            return text if name == "redis_url" else Path(text)
        if isinstance(default, bool):
            return _BOOL[text.lower()]
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if isinstance(default, Path):
            return Path(text)
        if isinstance(default, tuple):
            items = [t.strip() for t in text.split(",") if t.strip()]
            return tuple(int(t) for t in items) if name == "warmup_counts" else tuple(items)
        return text
    except (KeyError, ValueError):
        raise SettingsError(f"{key}: cannot read {raw!r} as {type(default).__name__}") from None


_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(Settings)}
