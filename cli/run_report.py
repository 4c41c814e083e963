"""A training run's metrics as a few readable lines, for `ranker train` and the demo."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def describe_normalised(value: float) -> str:
    """`normalised` = 1 - RMSE / std(labels), in words: a negative value is worse than a constant.

    A model that always predicts the label mean has RMSE = std(labels), so 0 is that constant and 1
    a perfect fit.
    """
    if value < 0:
        return f"RMSE {-100 * value:.1f}% above predicting the mean (worse than that constant)"
    return f"RMSE {100 * value:.1f}% below predicting the mean"


def render_metrics(result: Mapping[str, Any]) -> str:
    """Test (or validation) metrics of a training run, one line per task."""
    split = "test" if "test" in result else "valid"
    lines = [f"best epoch {result['best_epoch']} of {result['epochs_run']}; {split} metrics:"]
    for task, scores in result[split].items():
        if task in ("score", "loss"):
            continue
        shown = ", ".join(
            f"{name} {value:.4g}" + _oracle(scores, name)
            for name, value in scores.items()
            if not name.startswith(("oracle_", "gap_", "constant_", "captured_"))
            and name != "normalised"
        )
        if "normalised" in scores:
            shown += f"; {describe_normalised(scores['normalised'])}"
        lines.append(f"  {task:<11} {shown}")
    return "\n".join(lines)


def _oracle(scores: Mapping[str, float], name: str) -> str:
    """ " (oracle X, captured Y%)" when the log had oracle columns; the captured share is
    (model - constant) / (oracle - constant), see training.evaluate."""
    if f"oracle_{name}" not in scores:
        return ""
    captured = scores.get(f"captured_{name}")
    share = f", captured {100 * captured:.0f}%" if captured is not None else ""
    return f" (oracle {scores['oracle_' + name]:.4g}{share})"
