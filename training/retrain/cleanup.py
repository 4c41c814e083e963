"""Debris of killed retraining runs: a publish journal written before the export, and a cleanup
that runs at the start of every run (and as `ranker retrain --cleanup`), under the run lock.

A run publishes in two steps, registry first, experiment config last. Killed in between, it
leaves a published version that no config names; killed inside the export, a `.tmp-*`
directory in the registry. Before exporting, the run writes a journal beside the registry (run
id, time, the versions that existed); after the config save it deletes it. A journal found at
the start of the next run therefore names a run that died mid-publish, and what that run added
is known exactly:
- versions published since the journal and named by no experiment config are removed (renamed
  out of the listing in one step, then deleted); the service never served them, since it serves
  only the versions its config names (a file config's `latest` is pinned before the export);
- `.tmp-*` directories created since the journal are removed.
Orphans the journal does not cover (another tool's, or older) are reported, never deleted: a
`.tmp-*` directory, or a version newer than every version the config names.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from ranker.experiments import ExperimentConfig
from ranker.registry import TMP_PREFIX, list_versions

# Versions being removed are renamed to this prefix first (out of the listing at once); a kill
# during the delete leaves one, which the next cleanup deletes whatever the journal says.
REMOVING = f"{TMP_PREFIX}orphan-"
# File-system time stamps may lag the journal's clock reading by a little.
SLACK_S = 2.0


@dataclass
class Cleanup:
    """What one cleanup removed, and what it found but left to a person."""

    removed: list[str] = field(default_factory=list)
    reported: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [f"removed {r}" for r in self.removed] + [f"found {r}" for r in self.reported]


def journal_path(registry: str | Path, name: str) -> Path:
    return Path(registry) / f".retrain-{name}.publish.json"


def begin_publish(registry: str | Path, name: str, run_id: str) -> None:
    """Record, durably, that `run_id` is about to publish; removed by `end_publish`."""
    path = journal_path(registry, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "run_id": run_id,
        "pid": os.getpid(),
        "started_at": datetime.now(UTC).isoformat(),
        "time": datetime.now(UTC).timestamp(),
        "versions_before": list_versions(registry, name),
    }
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}")
    with open(tmp, "w") as handle:
        handle.write(json.dumps(doc))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def end_publish(registry: str | Path, name: str) -> None:
    journal_path(registry, name).unlink(missing_ok=True)


def _referenced(config: ExperimentConfig | None, name: str) -> set[str]:
    if config is None:
        return set()
    return {ref.version for ref in config.model_refs() if ref.name == name}


def _remove(path: Path) -> None:
    doomed = path.with_name(f"{REMOVING}{path.name}-{uuid.uuid4().hex[:8]}")
    os.rename(path, doomed)
    shutil.rmtree(doomed)


def cleanup(registry: str | Path, name: str, config: ExperimentConfig | None) -> Cleanup:
    """Remove what a killed run left (see the module docstring); report other orphans.
    `config` is the experiment config the service reads now (None: none stored)."""
    folder = Path(registry) / name
    out = Cleanup()
    referenced = _referenced(config, name)
    journal_file = journal_path(registry, name)
    journal = None
    if journal_file.is_file():
        try:
            journal = json.loads(journal_file.read_text())
            since = float(journal["time"]) - SLACK_S
            before = set(journal["versions_before"])
            killed = str(journal["run_id"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            out.reported.append(f"{journal_file}: unreadable publish journal ({exc}); left as is")
            journal = None
    if journal is not None:
        for version in list_versions(registry, name):
            if version in before:
                continue
            if version in referenced:
                continue  # killed after the config save: the publish completed
            _remove(folder / version)
            out.removed.append(
                f"{name}/{version}: published by run {killed}, which died before the "
                "experiment config named it"
            )
    for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
        if not (entry.is_dir() and entry.name.startswith(TMP_PREFIX)):
            continue
        ours = entry.name.startswith(REMOVING) or (
            journal is not None and entry.stat().st_mtime >= since
        )
        if ours:
            shutil.rmtree(entry)
            why = f"left by run {killed}" if journal is not None else "a half-removed orphan"
            out.removed.append(f"{entry}: temporary directory, {why}")
        else:
            out.reported.append(f"{entry}: temporary directory of an unknown publish")
    if journal is not None:
        journal_file.unlink(missing_ok=True)
    versions = list_versions(registry, name)  # oldest first
    newest = max((versions.index(v) for v in referenced if v in versions), default=-1)
    for version in versions[newest + 1 :] if config is not None else []:
        if version not in referenced:
            out.reported.append(
                f"{name}/{version}: published, newer than every version the experiment config "
                "names, and named by none (not this job's: left as is)"
            )
    return out
