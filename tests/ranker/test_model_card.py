"""MODEL_CARD.md: written into every published version, holding its manifest's figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ranker.model_card import CARD_FILE, render_card
from ranker.registry import Publication, load_manifest, publish
from tests.ranker.test_registry import MODEL, fields

VALID = {
    "click": {
        "auc": 0.7123,
        "oracle_auc": 0.7456,
        "captured_auc": 0.87,
        "logloss": 0.4511,
        "calibration": 1.0321,
        "oracle_calibration": 0.9987,
    },
    "watch_time": {"rmse": 12.5, "oracle_rmse": 11.25, "captured_rmse": 0.6},
}


def _card(root: Path, version: str) -> str:
    return (root / "ranker" / version / CARD_FILE).read_text()


def _publish(root: Path, metrics: dict[str, Any], **changes: Any) -> str:
    doc = fields(metrics={"valid": metrics, "test": None, "best_epoch": 3}, **changes)
    return publish(root, "ranker", MODEL, Publication(**doc)).version


def test_every_version_gets_a_card_with_its_window_metrics_and_oracle(tmp_path: Path) -> None:
    version = _publish(tmp_path, VALID)
    card = _card(tmp_path, version)
    manifest = load_manifest(tmp_path / "ranker" / version)
    assert card == render_card(manifest.to_dict(), None)
    assert f"# Model card: ranker {version}" in card
    assert "- train: 2026-01-01 (1 day)" in card and "- test: none" in card
    assert "First model: no parent version to compare with." in card
    assert "Split: valid; best epoch 3" in card
    assert "| click | auc | 0.7123 | 0.7456 | 0.8700 | n/a | n/a |" in card
    assert "| watch_time | rmse | 12.5000 | 11.2500 | 0.6000 | n/a | n/a |" in card
    assert "mean prediction / observed rate = 1.0321" in card and "oracle 0.9987" in card
    assert "| click | binary | bce |" in card
    assert "## Intended use and limits" in card


def test_card_compares_with_the_parent_version(tmp_path: Path) -> None:
    first = _publish(tmp_path, VALID)
    better = {
        "click": {**VALID["click"], "auc": 0.7223, "logloss": 0.4611},
        "watch_time": {"rmse": 12.0},
    }
    second = _publish(tmp_path, better, parent=first)
    card = _card(tmp_path, second)
    assert f"Replaces `{first}`" in card
    assert "| click | auc | 0.7223 | 0.7456 | 0.8700 | 0.7123 | +0.0100 (better) |" in card
    # Lower is better for logloss and RMSE.
    assert "| click | logloss | 0.4611 | n/a | n/a | 0.4511 | +0.0100 (worse) |" in card
    assert "| watch_time | rmse | 12.0000 | n/a | n/a | 12.5000 | -0.5000 (better) |" in card
    # A parent of another model is named model/version; a missing one is said, not guessed.
    third = _publish(tmp_path, VALID, parent="other/v0009")
    assert "Replaces `other/v0009`, whose manifest could not be read" in _card(tmp_path, third)


def test_card_prefers_the_test_split_and_handles_missing_metrics(tmp_path: Path) -> None:
    doc = fields(metrics={"valid": VALID, "test": {"click": {"auc": 0.69}}})
    card = _card(tmp_path, publish(tmp_path, "ranker", MODEL, Publication(**doc)).version)
    assert "Split: test" in card and "| click | auc | 0.6900 | n/a |" in card
    empty = fields(metrics={"valid": None, "test": None})
    card = _card(tmp_path, publish(tmp_path, "ranker", MODEL, Publication(**empty)).version)
    assert "The manifest records no offline metrics." in card
