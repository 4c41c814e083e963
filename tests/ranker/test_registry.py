"""Model registry: numbered versions, atomic publication, manifests that round-trip, hash checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import ranker.registry as registry
from ranker.registry import (
    Manifest,
    Publication,
    RegistryError,
    latest_version,
    list_versions,
    load_manifest,
    model_path,
    publish,
    verify,
)
from ranker.schema import load_default_spec
from tests.conftest import assert_runs_without_torch

MODEL = b"\x08\x09fake onnx bytes"


def fields(**changes: Any) -> dict[str, Any]:
    """Manifest fields of a plausible model, as export passes them."""
    doc: dict[str, Any] = {
        "feature_spec": load_default_spec().to_dict(),
        "tasks": [
            {"name": "click", "kind": "binary", "loss": "bce"},
            {"name": "watch_time", "kind": "regression", "loss": "log_mse"},
        ],
        "inputs": {"user": ["user_cat"], "item": ["item_cat", "item_multi", "item_dense"]},
        "outputs": ["click", "watch_time"],
        "opset": 18,
        "data_window": {"train": ["2026-01-01"], "valid": ["2026-01-02"], "test": []},
        "metrics": {"valid": {"click": {"auc": 0.71, "gauc": float("nan")}}, "test": None},
        "parent": None,
        "model_kind": "mmoe",
        "hparams": {"kind": "mmoe", "config": {"num_experts": 2, "expert_units": [16]}},
        "exporter": {"name": "test", "parity_max_diff": 6e-8},
    }
    return {**doc, **changes}


def test_publish_numbers_versions_and_manifests_round_trip(tmp_path: Path) -> None:
    first = publish(tmp_path, "ranker", MODEL, Publication(**fields()))
    second = publish(tmp_path, "ranker", MODEL + b"!", Publication(**fields(parent="v0001")))
    assert (first.version, second.version) == ("v0001", "v0002")
    assert list_versions(tmp_path, "ranker") == ["v0001", "v0002"]
    assert latest_version(tmp_path, "ranker") == "v0002"
    assert sorted(p.name for p in (tmp_path / "ranker" / "v0002").iterdir()) == [
        "MODEL_CARD.md",
        "manifest.json",
        "model.onnx",
    ]
    assert model_path(tmp_path, "ranker", "v0001").read_bytes() == MODEL
    for manifest in (first, second):
        folder = tmp_path / "ranker" / manifest.version
        assert load_manifest(folder) == manifest
        assert load_manifest(folder / "manifest.json") == manifest
        assert verify(folder) == manifest
    assert second.parent == "v0001"
    assert second.created_at.endswith("Z")
    assert second.task_names == ["click", "watch_time"]
    assert second.spec() == load_default_spec()


def test_manifest_is_strict_json(tmp_path: Path) -> None:
    """NaN metrics are stored as null: serving's orjson rejects NaN."""
    manifest = publish(tmp_path, "m", MODEL, Publication(**fields()))
    text = (tmp_path / "m" / "v0001" / "manifest.json").read_text()

    def refuse(token: str) -> None:
        raise AssertionError(f"non-standard JSON constant {token}")

    doc = json.loads(text, parse_constant=refuse)
    assert doc["metrics"]["valid"]["click"] == {"auc": 0.71, "gauc": None}
    assert Manifest.from_dict(doc) == manifest


def test_publish_from_a_file(tmp_path: Path) -> None:
    source = tmp_path / "exported.onnx"
    source.write_bytes(MODEL * 1000)
    manifest = publish(tmp_path / "reg", "m", source, Publication(**fields()))
    assert verify(tmp_path / "reg" / "m" / manifest.version).sha256 == manifest.sha256
    assert model_path(tmp_path / "reg", "m", "v0001").read_bytes() == MODEL * 1000


def test_verify_refuses_a_tampered_model(tmp_path: Path) -> None:
    manifest = publish(tmp_path, "m", MODEL, Publication(**fields()))
    model = tmp_path / "m" / "v0001" / "model.onnx"
    data = bytearray(model.read_bytes())
    data[3] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(RegistryError, match="sha256 mismatch") as info:
        verify(model.parent)
    message = str(info.value)
    assert str(model) in message
    assert manifest.sha256 in message
    assert registry.file_sha256(model) in message


def test_verify_refuses_missing_or_corrupt_manifest(tmp_path: Path) -> None:
    publish(tmp_path, "m", MODEL, Publication(**fields()))
    folder = tmp_path / "m" / "v0001"
    manifest = folder / "manifest.json"
    manifest.write_text("{not json")
    with pytest.raises(RegistryError, match="not valid JSON") as info:
        verify(folder)
    assert str(manifest) in str(info.value)
    manifest.write_text(json.dumps({"name": "m"}))
    with pytest.raises(RegistryError, match="missing keys"):
        verify(folder)
    manifest.unlink()
    with pytest.raises(RegistryError, match="cannot read manifest") as info:
        verify(folder)
    assert str(manifest) in str(info.value)


def test_verify_refuses_a_missing_model_and_a_moved_version(tmp_path: Path) -> None:
    publish(tmp_path, "m", MODEL, Publication(**fields()))
    (tmp_path / "m" / "v0001").rename(tmp_path / "m" / "v0007")
    with pytest.raises(RegistryError, match="for version 'v0001'"):
        verify(tmp_path / "m" / "v0007")
    (tmp_path / "m" / "v0007").rename(tmp_path / "m" / "v0001")
    (tmp_path / "m" / "v0001" / "model.onnx").unlink()
    with pytest.raises(RegistryError, match="cannot read model"):
        verify(tmp_path / "m" / "v0001")


def test_leftover_temporary_directory_is_not_a_version(tmp_path: Path) -> None:
    """A publish killed before its rename leaves a hidden temp dir that nothing lists."""
    publish(tmp_path, "m", MODEL, Publication(**fields()))
    killed = tmp_path / "m" / f"{registry.TMP_PREFIX}deadbeef"
    killed.mkdir()
    (killed / "model.onnx").write_bytes(MODEL[:3])
    (tmp_path / "m" / "notes").mkdir()  # nor are other stray entries
    assert list_versions(tmp_path, "m") == ["v0001"]
    assert publish(tmp_path, "m", MODEL, Publication(**fields())).version == "v0002"
    assert list_versions(tmp_path, "m") == ["v0001", "v0002"]


def test_versions_sort_by_number_and_continue_after_the_highest(tmp_path: Path) -> None:
    for version in ("v0009", "v0010", "v0002"):
        (tmp_path / "m" / version).mkdir(parents=True)
    assert list_versions(tmp_path, "m") == ["v0002", "v0009", "v0010"]
    assert publish(tmp_path, "m", MODEL, Publication(**fields())).version == "v0011"


def test_a_lost_race_retries_with_the_next_number(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two publishers read the same listing; the second must not overwrite the first's version."""
    publish(tmp_path, "m", b"first", Publication(**fields()))
    real = registry.list_versions
    calls = []

    def stale(root: Path, name: str) -> list[str]:
        calls.append(name)
        return [] if len(calls) == 1 else real(root, name)

    monkeypatch.setattr(registry, "list_versions", stale)
    second = publish(tmp_path, "m", b"second", Publication(**fields()))
    assert second.version == "v0002"
    assert model_path(tmp_path, "m", "v0001").read_bytes() == b"first"
    assert verify(tmp_path / "m" / "v0002") == second
    assert not [p for p in (tmp_path / "m").iterdir() if p.name.startswith(".")]


def test_a_version_appearing_before_the_rename_is_not_overwritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other publisher wins between our existence check and our rename: rename(2) fails on the
    non-empty directory and we take the next number."""
    real = registry.os.rename
    lost = []

    def racing_rename(source: Path, target: Path) -> None:
        if not lost:
            lost.append(target)
            Path(target).mkdir()
            (Path(target) / "model.onnx").write_bytes(b"winner")
        real(source, target)

    monkeypatch.setattr(registry.os, "rename", racing_rename)
    manifest = publish(tmp_path, "m", MODEL, Publication(**fields()))
    assert (lost[0].name, manifest.version) == ("v0001", "v0002")
    assert (tmp_path / "m" / "v0001" / "model.onnx").read_bytes() == b"winner"
    assert verify(tmp_path / "m" / "v0002") == manifest


def test_missing_entries_name_the_path(tmp_path: Path) -> None:
    assert list_versions(tmp_path, "m") == []
    assert latest_version(tmp_path, "m") is None
    publish(tmp_path, "m", MODEL, Publication(**fields()))
    with pytest.raises(
        RegistryError, match=r"v0003.*published versions of 'm': \['v0001'\]"
    ) as info:
        model_path(tmp_path, "m", "v0003")
    assert str(tmp_path / "m" / "v0003" / "model.onnx") in str(info.value)
    with pytest.raises(RegistryError, match="model name"):
        publish(tmp_path, "../escape", MODEL, Publication(**fields()))


def test_manifest_rejects_unknown_format_and_keys() -> None:
    doc = Manifest(
        name="m", version="v0001", created_at="now", sha256="0" * 64, **fields()
    ).to_dict()
    assert Manifest.from_dict(doc).to_dict() == doc
    with pytest.raises(RegistryError, match="unknown keys"):
        Manifest.from_dict({**doc, "extra": 1}, "x.json")
    with pytest.raises(RegistryError, match="unsupported manifest format"):
        Manifest.from_dict({**doc, "format": 99}, "x.json")


def test_batched_defaults_to_false_for_manifests_written_before_it() -> None:
    doc = Manifest(
        name="m", version="v0001", created_at="now", sha256="0" * 64, **fields()
    ).to_dict()
    assert doc["batched"] is False
    del doc["batched"]
    assert Manifest.from_dict(doc).batched is False
    assert Manifest.from_dict({**doc, "batched": True}).batched is True
    with pytest.raises(RegistryError, match="'batched' must be true or false"):
        Manifest.from_dict({**doc, "batched": "yes"}, "x.json")


def test_publication_records_a_batched_graph(tmp_path: Path) -> None:
    manifest = publish(tmp_path, "m", MODEL, Publication(**fields(), batched=True))
    assert manifest.batched and load_manifest(tmp_path / "m" / "v0001").batched


PUBLISH_AND_VERIFY = """
import tempfile
from ranker import registry
root = tempfile.mkdtemp()
manifest = registry.publish(root, "m", b"model", registry.Publication(
    feature_spec={}, tasks=[], inputs={}, outputs=[], opset=18,
    data_window={}, metrics={}, parent=None, model_kind="mmoe", hparams={}, exporter={},
))
assert registry.verify(registry.model_path(root, "m", "v0001").parent) == manifest
"""


def test_registry_works_without_torch() -> None:
    assert_runs_without_torch(PUBLISH_AND_VERIFY)
