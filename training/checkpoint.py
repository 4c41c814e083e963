"""The run directory's model files: `checkpoint.pt` (everything `--resume` needs) and `best.pt`
(the best epoch's inference model, its config and fitted spec, which export reads), written
atomically; `load_best` rebuilds the inference model from best.pt. What goes into each file is
the trainer's (Trainer.save_checkpoint, Trainer.save_best)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ranker.models import MultiTaskModel, build_model
from ranker.models.calibration import OutputCalibration
from ranker.schema import FeatureSpec
from ranker.tasks import build_tasks

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"


def atomic_save(obj: Any, path: Path) -> int:
    """Write to a temporary file, fsync, rename over `path`, fsync the directory: a crash leaves
    the old file or the new one, never a torn one. Returns the size in bytes."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())
    size = tmp.stat().st_size
    tmp.replace(path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return size


def load_best(path: Path, device: str = "cpu") -> MultiTaskModel:
    """The best epoch's inference model from a run directory's best.pt, with its calibration
    under drift when the run fitted one."""
    state = torch.load(path, map_location=device, weights_only=True)
    spec = FeatureSpec.from_yaml(state["spec_yaml"], str(path))
    hparams = state["hparams"]
    tasks = build_tasks(
        [t["name"] for t in hparams["tasks"]], {t["name"]: t["loss"] for t in hparams["tasks"]}
    )
    model = build_model(hparams["kind"], spec, tasks, hparams["config"])
    model.load_state_dict(state["model_state"])
    offsets = state.get("calibration")  # calibration under drift (training/calibration.py)
    if offsets:
        model.calibration = OutputCalibration.for_tasks(model.tasks, offsets)
    model.to(device)
    model.eval()
    return model
