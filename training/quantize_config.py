"""What `ranker export --quantize int8` may do: mode, sample sizes and the quality bound.

Kept free of numpy and ONNX imports so the CLI can build its parser without loading them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Literal

Mode = Literal["dynamic", "static"]
MODES: tuple[str, ...] = ("dynamic", "static")


@dataclass(frozen=True)
class QualityBound:
    """The most an int8 version may lose against its fp32 parent on the validation day."""

    # Click AUC may drop by at most this much (absolute).
    max_auc_drop: float = 0.001
    # Each regression task's RMSE may rise by at most this fraction of the fp32 RMSE (0.005 = 0.5%).
    max_rmse_rise: float = 0.005

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(
                    f"quality bound {name}: must be a finite number >= 0, got {value!r}"
                )


@dataclass(frozen=True)
class QuantizeOptions:
    """How to quantise and what loss is acceptable."""

    mode: Mode = "dynamic"
    bound: QualityBound = field(default_factory=QualityBound)
    # Training-day requests whose activation ranges fix the static scales.
    calibration_requests: int = 256
    # Validation-day requests scored by both graphs (None: all).
    parity_requests: int | None = 5000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"quantize mode: must be one of {list(MODES)}, got {self.mode!r}")
        if self.calibration_requests < 1:
            raise ValueError(f"calibration_requests: must be >= 1, got {self.calibration_requests}")
        if self.parity_requests is not None and self.parity_requests < 1:
            raise ValueError(f"parity_requests: must be >= 1, got {self.parity_requests}")
