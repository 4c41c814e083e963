"""Service settings: one frozen, validated dataclass, filled from `RANKER_*` environment variables.

`Settings.from_env()` reads them with pydantic-settings: `RANKER_<FIELD>` variables first, then
files named like them in a secrets directory (`RANKER_SECRETS_DIR`, default /run/secrets when it
exists: Docker and Kubernetes secrets), and `RANKER_ADMIN_TOKEN_FILE` for the token alone. Types
are checked by pydantic (errors name the variable); `check()` refuses unsafe or contradictory
values, and returns warnings worth logging, among them every `RANKER_*` variable that is no
setting (a misspelt `RANKER_REGISTY` would otherwise be ignored in silence).
"""

from __future__ import annotations

import difflib
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import field, fields, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, ValidationError, create_model, field_validator
from pydantic.dataclasses import dataclass
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    SecretsSettingsSource,
    SettingsConfigDict,
)

from ranker.experiment_store import experiments_channel, experiments_key

Environment = Literal["development", "production"]
LogFormat = Literal["json", "text"]
PREFIX = "RANKER_"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class SettingsError(ValueError):
    """An invalid setting; the message names the environment variable."""


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
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
    # How ORT's worker threads wait between parallel sections (ranker.onnx_model.RuntimeOptions):
    # `off` (default) never spins; `always` spins after a run too: on 2 cores the spinning worker
    # held a core while the response was written (p50 1.0-2.1x higher, CPU per request about
    # double, on a loaded 2-core machine); `run` spins inside a run and stops at its end: p50
    # 9-11% lower than `off` on a quiet 2-core machine, but about 2% of runs stall ~4 ms when
    # the woken worker lands on the core where the caller spins, so p99 rises up to ~2x at 100
    # (docs/serving.md). `1`/`true` mean `always`, `0`/`false` `off`, as before.
    ort_spinning: Literal["off", "run", "always"] = "off"  # ranker.onnx_model.SPIN_MODES
    # A request of at least this many candidates runs as `intra_op_threads` row chunks at once,
    # one per thread, on one-thread sessions (serving/row_split.py): two thread hand-offs per
    # request instead of ORT waking its pool at every operator. Smaller requests run whole on
    # one thread (the chunks broke even at 32-64 candidates with the benchmark's model, 64-100
    # with the demo's). 0: off, ORT's own intra-op pool (and ort_spinning) as before. CPU only.
    split_min_candidates: int = 80
    # Pin the row-chunk helpers to the CPUs the caller is not on, when the process owns exactly
    # intra_op_threads CPUs (serving/row_split.py::exclusive_cpus); unpinned, a woken helper
    # often pre-empted the caller.
    split_pin_cpus: bool = True
    # Providers in order of preference; ones this onnxruntime build lacks are skipped, loudly.
    providers: tuple[str, ...] = (CUDA, CPU)
    # Refuse to start (or swap in a model) unless CUDA is the active provider.
    require_cuda: bool = False
    # Candidate counts each session runs once before it serves.
    warmup_counts: tuple[int, ...] = (1, 100, 500)
    # Dynamic batching (serving/batching.py): at most this many concurrent /rank requests share
    # one run of a version exported with `ranker export --batched`; 0 or 1: off, each request
    # runs alone on the event loop. Off by default: on the CPU the batched graph is slower than
    # one run per request (0.76-1.05x on 16 cores; through this service on 2 cores batching gave
    # 0.59-0.68x the throughput; docs/benchmarks.md); on a GPU (torch, H100) batching paid from
    # 2-4 concurrent requests. A version whose graph is not batched is served unbatched.
    batch_max_requests: int = 0
    # How long a request waits for company, in microseconds. 0: no timer, a batch holds whoever
    # arrived while the previous one ran. asyncio's timers sleep in epoll (1 ms resolution), so
    # any wait under 1000 costs a whole millisecond.
    batch_max_delay_us: int = 0
    # Request limits.
    max_candidates: int = 2000
    max_body_bytes: int = 4 * 1024 * 1024
    # JSONL impression log used when no Redis is configured; None: impressions are not logged.
    impression_log: Path | None = Path("out/serving/impressions.jsonl")
    # Redis stream length kept by XADD MAXLEN ~ (approximate trimming is O(1)).
    impression_stream_maxlen: int = 1_000_000
    # Log the raw features each served item was ranked with (user and context once per request)
    # and its served position in the impression record: training rows are then what was served.
    log_features: bool = True
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
    # OpenTelemetry spans for /rank stages (serving.tracing; the `otel` extra). Off: no cost.
    otel: bool = False

    @field_validator("redis_url", "experiments_file", "impression_log", mode="before")
    @classmethod
    def _none_text(cls, value: Any) -> Any:
        """`none`, `null` or empty text switch an optional setting off (as in the variables)."""
        if isinstance(value, str) and value.strip().lower() in ("", "none", "null"):
            return None
        return value

    @field_validator("ort_spinning", mode="before")
    @classmethod
    def _spin_mode(cls, value: Any) -> Any:
        """The boolean spellings the setting had before it had three modes."""
        if isinstance(value, bool):
            return "always" if value else "off"
        if isinstance(value, str):
            text = value.strip().lower()
            return {"1": "always", "true": "always", "0": "off", "false": "off"}.get(text, text)
        return value

    @field_validator("providers", "warmup_counts", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(t.strip() for t in value.split(",") if t.strip())
        return value

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        secrets_dir: Path | None = None,
        **overrides: Any,
    ) -> Settings:
        """Settings from `environ` (os.environ by default) and the secrets directory (see the
        module docstring), then `overrides`."""
        environ = os.environ if environ is None else environ
        env = {k.upper(): v for k, v in environ.items() if k.upper().startswith(PREFIX)}
        if secrets_dir is None and env.get(PREFIX + "SECRETS_DIR"):
            secrets_dir = Path(env[PREFIX + "SECRETS_DIR"])
        if secrets_dir is None and DEFAULT_SECRETS_DIR.is_dir():
            secrets_dir = DEFAULT_SECRETS_DIR
        if secrets_dir is not None and not secrets_dir.is_dir():
            raise SettingsError(f"{PREFIX}SECRETS_DIR: {secrets_dir} is not a directory")
        # pydantic-settings' sources, highest priority last: secrets files, then variables.
        values: dict[str, Any] = {}
        if secrets_dir is not None:
            values.update(SecretsSettingsSource(_Sources, secrets_dir=secrets_dir)())
        values.update(_Environment(_Sources, environ)())
        values = {
            k: v if k == "admin_token" else v.strip() for k, v in values.items() if v is not None
        }
        token_file = env.get(PREFIX + "ADMIN_TOKEN_FILE")
        if token_file:
            if PREFIX + "ADMIN_TOKEN" in env:
                raise SettingsError(
                    f"{PREFIX}ADMIN_TOKEN and {PREFIX}ADMIN_TOKEN_FILE are both set; keep one"
                )
            try:
                values["admin_token"] = Path(token_file).read_text().rstrip("\r\n")
            except OSError as exc:
                raise SettingsError(
                    f"{PREFIX}ADMIN_TOKEN_FILE: cannot read {token_file}: {exc.strerror}"
                ) from None
        try:
            settings = cls(**{**values, **overrides})
        except ValidationError as exc:
            raise _named(exc) from None
        unknown = sorted(set(env) - KNOWN_VARIABLES)
        object.__setattr__(settings, "_unknown_variables", tuple(unknown))
        return settings

    @property
    def batching(self) -> bool:
        """True when batched versions go through a dynamic batcher (RANKER_BATCH_MAX_REQUESTS > 1)."""
        return self.batch_max_requests > 1

    def replace(self, **changes: Any) -> Settings:
        """A validated copy with `changes` (dataclasses.replace works as well)."""
        return replace(self, **changes)

    @property
    def experiments_key(self) -> str:
        return experiments_key(self.redis_prefix)

    @property
    def experiments_channel(self) -> str:
        return experiments_channel(self.redis_prefix)

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
        batching = {"batch_max_requests": "0 or 1: off", "batch_max_delay_us": "0: no wait"}
        for name, zero in batching.items():
            if getattr(self, name) < 0:
                raise SettingsError(
                    f"{PREFIX}{name.upper()}: must be >= 0 ({zero}), got {getattr(self, name)}"
                )
        if self.intra_op_threads < 0 or self.inter_op_threads < 0:
            raise SettingsError("RANKER_INTRA_OP_THREADS / RANKER_INTER_OP_THREADS: must be >= 0")
        if self.split_min_candidates < 0:
            raise SettingsError("RANKER_SPLIT_MIN_CANDIDATES: must be >= 0 (0: off)")
        if self.poll_interval_s <= 0 or self.redis_timeout_s <= 0:
            raise SettingsError("RANKER_POLL_INTERVAL_S / RANKER_REDIS_TIMEOUT_S: must be > 0")
        if not self.providers:
            raise SettingsError("RANKER_PROVIDERS: name at least one execution provider")
        bad = [n for n in self.warmup_counts if not 1 <= n <= self.max_candidates]
        if bad:
            raise SettingsError(
                f"RANKER_WARMUP_COUNTS: {bad} outside 1..RANKER_MAX_CANDIDATES ({self.max_candidates})"
            )
        for name in getattr(self, "_unknown_variables", ()):
            # Compared without the prefix, which every name shares.
            known = sorted(v.removeprefix(PREFIX) for v in KNOWN_VARIABLES)
            close = difflib.get_close_matches(name.removeprefix(PREFIX), known, n=1)
            hint = f"; did you mean {PREFIX}{close[0]}?" if close else ""
            warnings.append(f"{name} is not a setting and is ignored{hint}")
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


def _named(error: ValidationError) -> SettingsError:
    """pydantic's first complaint, naming the variable it came from."""
    first = error.errors()[0]
    name = str(first["loc"][0]) if first["loc"] else "settings"
    return SettingsError(f"{PREFIX}{name.upper()}: cannot read {first['input']!r}: {first['msg']}")


# Variables read besides the fields: where the secrets are.
META_VARIABLES = frozenset({PREFIX + "SECRETS_DIR", PREFIX + "ADMIN_TOKEN_FILE"})
KNOWN_VARIABLES = frozenset(PREFIX + f.name.upper() for f in fields(Settings)) | META_VARIABLES
DEFAULT_SECRETS_DIR = Path("/run/secrets")


class _Environment(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping (os.environ by default), so
    that tests and embedding programs need not change the process environment."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {k.lower(): v for k, v in self._environ.items()}  # case-insensitive, as configured


class _SourceConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=PREFIX, case_sensitive=False, extra="ignore")


# pydantic-settings as the source only: every setting as raw text (None when not given), from the
# environment, then the secrets directory; Settings itself parses and validates.
_Sources = create_model(  # type: ignore[call-overload]
    "_Sources", __base__=_SourceConfig, **{f.name: (str | None, None) for f in fields(Settings)}
)
