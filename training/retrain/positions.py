"""The gate's view of a position-debiased candidate (`debias.position: pal`).

Such a candidate predicts outcomes once an item is seen (its position-0 model), while the gate
day's outcomes were logged at served positions, where an item is seen with P(seen | p) < 1 below
the top. Scored as is, it looks worse on every logged day the better it removes the position
effect (the first closed loop refused it on completion RMSE, +2.6%, while it ranked better
online). Every task here is 0 unless the item was seen, so under the examination hypothesis
E[y | x, p] = P(seen | p) * E[y | x, seen]: the gate maps *both* models' predictions to the served
positions with the candidate's learnt curve, so the position, which neither model serves with,
helps neither side.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def examination_curve(run_dir: Path) -> np.ndarray | None:
    """The run's learnt P(seen | position), index = position (the last entry serves every
    position past it); None for a run without a position tower."""
    curve = json.loads((run_dir / "metrics.json").read_text()).get("examination")
    return None if curve is None else np.asarray(curve, dtype=np.float64)


def at_served_positions(
    predictions: dict[str, np.ndarray], position: np.ndarray, curve: np.ndarray
) -> dict[str, np.ndarray]:
    """Each task's expected outcome once seen -> its expected outcome at the row's position."""
    seen = curve[np.minimum(position, len(curve) - 1)]
    return {task: (values * seen).astype(values.dtype) for task, values in predictions.items()}
