"""Model registry: `<root>/<name>/<version>/{model.onnx, manifest.json}` (torch-free: serving reads it).

A version directory is complete or absent. `publish` writes both files into a hidden temporary
directory beside the versions, fsyncs them, then renames it to the next version (`v0001`, `v0002`,
...); a publish killed midway leaves only a `.tmp-*` directory, which is never listed as a version.
The manifest holds the sha256 of model.onnx; `verify` refuses a file whose hash differs. Each
version also gets a MODEL_CARD.md rendered from its manifest and its parent's (ranker.model_card).
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ranker.model_card import CARD_FILE, render_card
from ranker.schema import FeatureSpec

MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 1
TMP_PREFIX = ".tmp-"
# The batched graph's extra int64 input [N]: each item's row in the user inputs (user rows [B]).
REQUEST_INDEX = "request_index"

_VERSION = re.compile(r"v(\d{4,})")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_CHUNK = 1 << 20


class RegistryError(ValueError):
    """A missing, corrupt or tampered registry entry; the message names the path."""


@dataclass(frozen=True)
class Manifest:
    """What a model version is and how it was made. Stored as manifest.json next to model.onnx."""

    name: str
    version: str
    # UTC time of publication, ISO 8601 ("2026-01-04T12:00:00Z").
    created_at: str
    # Hex sha256 of model.onnx.
    sha256: str
    # FeatureSpec.to_dict() of the fitted spec (dense statistics included).
    feature_spec: dict[str, Any]
    # Tasks in output order: {"name", "kind", "loss"} each.
    tasks: tuple[dict[str, str], ...]
    # ONNX input names per group: {"user": [...], "item": [...]}.
    inputs: dict[str, list[str]]
    # ONNX output names, in task order.
    outputs: tuple[str, ...]
    opset: int
    # Days the model was trained, validated and tested on: {"train": [...], "valid": [...], "test": [...]}.
    data_window: dict[str, list[str]]
    # Offline metrics of the training run (metrics.json's valid/test sections).
    metrics: dict[str, Any]
    # Version that was in production when this one was trained; None for a first model.
    parent: str | None
    # Architecture name and the hyper-parameters that rebuild it (MultiTaskModel.hparams()).
    model_kind: str
    hparams: dict[str, Any]
    # Exporter name and versions, parity rows and the measured ONNX-vs-torch difference.
    exporter: dict[str, Any]
    # True when model.onnx is the batched graph (user rows [B], item rows [N] and REQUEST_INDEX
    # [N]) that a dynamic batcher can feed many requests at once; absent in older manifests.
    batched: bool = False
    format: int = MANIFEST_FORMAT

    def __post_init__(self) -> None:
        # Normalise to what JSON gives back, so a manifest equals its reloaded copy; non-finite
        # floats become null because strict JSON parsers (orjson in serving) reject NaN.
        for f in fields(self):
            value = _plain(getattr(self, f.name))
            if f.name in ("tasks", "outputs"):
                value = tuple(value)
            object.__setattr__(self, f.name, value)

    @property
    def task_names(self) -> list[str]:
        return [t["name"] for t in self.tasks]

    def spec(self) -> FeatureSpec:
        """The feature spec the model was trained with, ready for a FeatureEncoder."""
        return FeatureSpec.from_dict(self.feature_spec, f"manifest {self.name}/{self.version}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, doc: Any, source: str = "manifest") -> Manifest:
        if not isinstance(doc, Mapping):
            raise RegistryError(f"{source}: expected a JSON object, got {type(doc).__name__}")
        if doc.get("format", MANIFEST_FORMAT) != MANIFEST_FORMAT:
            raise RegistryError(
                f"{source}: unsupported manifest format {doc.get('format')!r} "
                f"(this code reads {MANIFEST_FORMAT})"
            )
        names = [f.name for f in fields(cls)]
        optional = {f.name for f in fields(cls) if f.default is not MISSING}
        missing = [n for n in names if n not in doc and n not in optional]
        if missing:
            raise RegistryError(f"{source}: missing keys {missing}")
        unknown = sorted(set(doc) - set(names))
        if unknown:
            raise RegistryError(f"{source}: unknown keys {unknown}; valid: {names}")
        for key, kind in (("tasks", list), ("outputs", list), ("inputs", dict), ("sha256", str)):
            if not isinstance(doc[key], kind):
                raise RegistryError(f"{source}: {key!r} must be a {kind.__name__}")
        if not isinstance(doc.get("batched", False), bool):
            raise RegistryError(f"{source}: 'batched' must be true or false")
        return cls(**{n: doc[n] for n in names if n in doc})


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _plain(value.item())
    return value


# -- reading ---------------------------------------------------------------------------------
def load_manifest(path: str | Path) -> Manifest:
    """A manifest from its file or its version directory."""
    path = Path(path)
    file = path / MANIFEST_FILE if path.is_dir() else path
    try:
        text = file.read_text()
    except OSError as exc:
        raise RegistryError(f"{file}: cannot read manifest: {exc.strerror}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RegistryError(f"{file}: manifest is not valid JSON: {exc}") from None
    try:
        return Manifest.from_dict(doc, str(file))
    except TypeError as exc:
        raise RegistryError(f"{file}: {exc}") from None


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify(version_dir: str | Path) -> Manifest:
    """The version's manifest, after checking model.onnx against its sha256 (RegistryError if not)."""
    version_dir = Path(version_dir)
    manifest = load_manifest(version_dir / MANIFEST_FILE)
    if manifest.version != version_dir.name:
        raise RegistryError(
            f"{version_dir / MANIFEST_FILE}: manifest is for version {manifest.version!r}, "
            f"found in directory {version_dir.name!r}"
        )
    model = version_dir / MODEL_FILE
    try:
        actual = file_sha256(model)
    except OSError as exc:
        raise RegistryError(f"{model}: cannot read model: {exc.strerror}") from None
    if actual != manifest.sha256:
        raise RegistryError(
            f"{model}: sha256 mismatch: manifest expects {manifest.sha256}, file has {actual}"
        )
    return manifest


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise RegistryError(
            f"model name {name!r} must be letters, digits, '.', '_' or '-' (not starting with them)"
        )


def _version_number(version: str) -> int | None:
    match = _VERSION.fullmatch(version)
    return int(match.group(1)) if match else None


def list_versions(root: str | Path, name: str) -> list[str]:
    """Published versions of a model, oldest first; [] when the model has none."""
    _check_name(name)
    folder = Path(root) / name
    if not folder.is_dir():
        return []
    found = [
        (number, entry.name)
        for entry in folder.iterdir()
        if entry.is_dir() and (number := _version_number(entry.name)) is not None
    ]
    return [version for _, version in sorted(found)]


def latest_version(root: str | Path, name: str) -> str | None:
    """The newest published version, or None when the model has none."""
    versions = list_versions(root, name)
    return versions[-1] if versions else None


def model_path(root: str | Path, name: str, version: str) -> Path:
    """Path of a published version's model.onnx (RegistryError naming the path if absent)."""
    _check_name(name)
    path = Path(root) / name / version / MODEL_FILE
    if _version_number(version) is None or not path.is_file():
        raise RegistryError(
            f"{path}: no such model version; published versions of {name!r}: "
            f"{list_versions(root, name)}"
        )
    return path


# -- publishing ------------------------------------------------------------------------------
def _parent_doc(root: str | Path, name: str, parent: str | None) -> dict[str, Any] | None:
    """The replaced version's manifest (`v0003` of the same model or `other/v0003`) for the model
    card; None when there is none or it cannot be read (the card says so)."""
    if parent is None:
        return None
    ref = parent if "/" in parent else f"{name}/{parent}"
    try:
        return load_manifest(Path(root) / ref).to_dict()
    except RegistryError:
        return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _copy_model(source: bytes | str | Path, target: Path) -> str:
    """Write the ONNX model to `target` (fsynced); returns its sha256."""
    if isinstance(source, bytes):
        _write_synced(target, source)
        return hashlib.sha256(source).hexdigest()
    digest = hashlib.sha256()
    try:
        with open(source, "rb") as src, open(target, "wb") as dst:
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
    except OSError as exc:
        raise RegistryError(f"{exc.filename}: cannot copy model: {exc.strerror}") from None
    return digest.hexdigest()


@dataclass(frozen=True)
class Publication:
    """What a publisher says about a model; the registry adds name, version, time and sha256.

    The fields are the Manifest's own (see there for each one's meaning and shape).
    """

    feature_spec: Mapping[str, Any]
    tasks: Sequence[Mapping[str, str]]
    inputs: Mapping[str, Sequence[str]]
    outputs: Sequence[str]
    opset: int
    data_window: Mapping[str, Sequence[str]]
    metrics: Mapping[str, Any]
    parent: str | None
    model_kind: str
    hparams: Mapping[str, Any]
    exporter: Mapping[str, Any]
    batched: bool = False

    def manifest(self, name: str, version: str, sha256: str) -> Manifest:
        return Manifest(
            name=name,
            version=version,
            created_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            sha256=sha256,
            feature_spec=dict(self.feature_spec),
            tasks=tuple(dict(t) for t in self.tasks),
            inputs={k: list(v) for k, v in self.inputs.items()},
            outputs=tuple(self.outputs),
            opset=self.opset,
            data_window={k: list(v) for k, v in self.data_window.items()},
            metrics=dict(self.metrics),
            parent=self.parent,
            model_kind=self.model_kind,
            hparams=dict(self.hparams),
            exporter=dict(self.exporter),
            batched=self.batched,
        )


def publish(
    root: str | Path,
    name: str,
    model: bytes | str | Path,
    publication: Publication,
    *,
    max_attempts: int = 100,
) -> Manifest:
    """Publish an ONNX model (bytes or a file) as the next version of `name`; atomic.

    Concurrent publishers may pick the same number: the rename onto an existing version fails and
    the loser retries with the next free number, so no version is ever overwritten.
    """
    _check_name(name)
    folder = Path(root) / name
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    if created:
        _fsync_dir(folder.parent)
    tmp = folder / f"{TMP_PREFIX}{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        sha = _copy_model(model, tmp / MODEL_FILE)
        number = 0
        for _ in range(max_attempts):
            existing = [_version_number(v) or 0 for v in list_versions(root, name)]
            number = max([number, *existing]) + 1
            manifest = publication.manifest(name, f"v{number:04d}", sha)
            _write_synced(tmp / MANIFEST_FILE, manifest.to_json().encode())
            card = render_card(manifest.to_dict(), _parent_doc(root, name, publication.parent))
            _write_synced(tmp / CARD_FILE, card.encode())
            _fsync_dir(tmp)
            target = folder / manifest.version
            if target.exists():  # rename(2) would replace an empty directory
                continue
            try:
                os.rename(tmp, target)
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    continue  # another publisher took this number
                raise RegistryError(f"{target}: cannot publish: {exc.strerror}") from None
            _fsync_dir(folder)
            return manifest
        raise RegistryError(f"{folder}: no free version number after {max_attempts} attempts")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
