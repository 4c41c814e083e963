"""ONNX Runtime runs through IO binding: the path the CUDA provider serves on.

With IO binding the inputs are copied to the device once and the outputs come back in one copy
per output, instead of ORT's per-run staging. ORT binds CPU memory too, so the same function runs
in the CPU tests and in CI: the code GPU serving uses is not left untested for want of a GPU.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnxruntime as ort


def run_bound(
    session: ort.InferenceSession,
    feeds: Mapping[str, np.ndarray],
    outputs: Sequence[str],
    device: str = "cpu",
) -> list[np.ndarray]:
    """One session run with inputs bound from host memory and `outputs` bound on `device`
    ("cuda" or "cpu"), copied back to numpy in the order asked for."""
    binding = session.io_binding()
    for name, array in feeds.items():
        binding.bind_cpu_input(name, np.ascontiguousarray(array))
    for name in outputs:
        binding.bind_output(name, device)
    session.run_with_iobinding(binding)
    return list(binding.copy_outputs_to_cpu())
