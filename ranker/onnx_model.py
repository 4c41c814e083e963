"""One verified ONNX Runtime session per model version, and its batched predict.

Every consumer of an exported model goes through here: the service's model pool, tuning and
offline scoring, the retraining job's "production as served" predictions and the export parity
check. A registry version is loaded only from bytes whose sha256 matches its manifest, and the
session is built from exactly the bytes that were hashed, so a file swapped in between fails.

Needs the `serve` extra (onnxruntime or onnxruntime-gpu): the only ranker module that imports it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import onnxruntime as ort

from ranker.registry import (
    MODEL_FILE,
    REQUEST_INDEX,
    Manifest,
    RegistryError,
    model_path,
    verify,
)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
SpinMode = Literal["off", "run", "always"]
SPIN_MODES: tuple[str, ...] = get_args(SpinMode)
# Rows per session run in `predict_rows` (bounds the intermediate tensors' memory).
BATCH_ROWS = 16384


class OnnxModelError(ValueError):
    """A model that cannot be loaded or run; the message names the model and the reason."""


@dataclass(frozen=True)
class RuntimeOptions:
    """How sessions run. The defaults are ONNX Runtime's own (all threads, CPU only)."""

    # Threads inside one operator / across operators; 0 lets ONNX Runtime choose.
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    # How ORT's idle intra-op workers wait (`SPIN_MODES`): `always` spins between runs too (ORT's
    # default: the lowest latency in a tight loop, a core burnt meanwhile); `run` spins inside a
    # run, between its operators' parallel sections, and stops at its end
    # (`session.force_spinning_stop`); `off` never spins (each section wakes sleeping workers).
    spinning: SpinMode = "always"
    # Execution providers in order of preference; ones this build lacks are dropped (CPU is last).
    providers: tuple[str, ...] = (CPU,)

    def session_options(self) -> ort.SessionOptions:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op_threads
        options.inter_op_num_threads = self.inter_op_threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        spinning = "0" if self.spinning == "off" else "1"
        options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
        if self.spinning == "run":
            options.add_session_config_entry("session.force_spinning_stop", "1")
        return options


def available_providers() -> list[str]:
    return list(ort.get_available_providers())


def usable_providers(wanted: Sequence[str]) -> tuple[str, ...]:
    """The wanted providers this onnxruntime build has, in the wanted order (CPU always last)."""
    available = set(ort.get_available_providers())
    chosen = [p for p in wanted if p in available]
    if CPU not in chosen:
        chosen.append(CPU)  # ORT needs it as the fallback for ops another provider lacks
    return tuple(chosen)


def read_verified(version_dir: Path) -> tuple[Manifest, bytes]:
    """A registry version's manifest and model bytes, the bytes hashed as they were read.

    RegistryError when the manifest is bad or the file differs from its sha256 (also when it
    changed between `verify` and the read).
    """
    manifest = verify(version_dir)
    path = Path(version_dir) / MODEL_FILE
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RegistryError(f"{path}: cannot read model: {exc.strerror}") from None
    if hashlib.sha256(data).hexdigest() != manifest.sha256:
        raise RegistryError(f"{path}: sha256 changed while loading; refusing it")
    return manifest, data


def run_bound(
    session: ort.InferenceSession,
    feeds: Mapping[str, np.ndarray],
    outputs: Sequence[str],
    device: str = "cpu",
) -> list[np.ndarray]:
    """One session run through IO binding, the path the CUDA provider serves on: inputs bound from
    host memory, `outputs` bound on `device` ("cuda" or "cpu") and copied back in the order asked
    for. ORT binds CPU memory too, so the tests and CI run this very code without a GPU."""
    binding = session.io_binding()
    for name, array in feeds.items():
        binding.bind_cpu_input(name, np.ascontiguousarray(array))
    for name in outputs:
        binding.bind_output(name, device)
    session.run_with_iobinding(binding)
    return list(binding.copy_outputs_to_cpu())


class OnnxModel:
    """An ONNX Runtime session with its output names; runs one batch or many rows in slices."""

    def __init__(
        self,
        data: bytes,
        outputs: Sequence[str] | None = None,
        options: RuntimeOptions | None = None,
    ) -> None:
        options = options or RuntimeOptions()
        self.providers = usable_providers(options.providers)
        try:
            self.session = ort.InferenceSession(
                data, sess_options=options.session_options(), providers=list(self.providers)
            )
        except Exception as exc:  # ORT raises its own exception types
            raise OnnxModelError(f"ONNX Runtime cannot load it: {exc}") from None
        self.input_names: tuple[str, ...] = tuple(i.name for i in self.session.get_inputs())
        graph_outputs = [o.name for o in self.session.get_outputs()]
        self.outputs: tuple[str, ...] = (
            tuple(outputs) if outputs is not None else tuple(graph_outputs)
        )
        if not set(self.outputs) <= set(graph_outputs):
            raise OnnxModelError(f"graph outputs {graph_outputs} lack {list(self.outputs)}")
        active = self.session.get_providers()
        # The provider the session actually runs on (the first one it accepted).
        self.provider: str = active[0] if active else CPU

    @classmethod
    def load(
        cls, version_dir: Path, options: RuntimeOptions | None = None
    ) -> tuple[Manifest, OnnxModel]:
        """A registry version's verified manifest and its session (outputs in manifest order)."""
        manifest, data = read_verified(Path(version_dir))
        try:
            return manifest, cls(data, manifest.outputs, options)
        except OnnxModelError as exc:
            raise OnnxModelError(f"model {manifest.name}/{manifest.version}: {exc}") from None

    @classmethod
    def load_version(
        cls, root: Path, name: str, version: str, options: RuntimeOptions | None = None
    ) -> tuple[Manifest, OnnxModel]:
        return cls.load(model_path(root, name, version).parent, options)

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """One session run: the outputs in `self.outputs` order, as ONNX Runtime returns them.
        On CUDA through IO binding: inputs to the GPU once, outputs back in one copy each."""
        if self.provider == CUDA:
            return run_bound(self.session, feeds, self.outputs, "cuda")
        return list(self.session.run(list(self.outputs), dict(feeds)))

    def predict_rows(
        self,
        inputs: Mapping[str, np.ndarray],
        *,
        batch: int = BATCH_ROWS,
        dtype: type[np.floating] = np.float64,
    ) -> dict[str, np.ndarray]:
        """Output -> predictions [rows] for row-wise inputs (user inputs one row per item), run in
        slices of `batch` rows. A graph input missing from `inputs` raises OnnxModelError; a
        batched graph's REQUEST_INDEX is made here (row-wise: item i reads user row i)."""
        index = REQUEST_INDEX in self.input_names and REQUEST_INDEX not in inputs
        names = [n for n in self.input_names if not (index and n == REQUEST_INDEX)]
        missing = [n for n in names if n not in inputs]
        if missing:
            raise OnnxModelError(f"the inputs have no {missing} (have {sorted(inputs)})")
        rows = len(inputs[names[0]]) if names else 0
        parts: dict[str, list[np.ndarray]] = {name: [] for name in self.outputs}
        for start in range(0, rows, batch):
            feeds = {n: inputs[n][start : start + batch] for n in names}
            if index:
                feeds[REQUEST_INDEX] = np.arange(min(batch, rows - start), dtype=np.int64)
            for name, values in zip(self.outputs, self.run(feeds), strict=True):
                parts[name].append(np.asarray(values, dtype=dtype).reshape(-1))
        return {
            name: np.concatenate(chunks) if chunks else np.zeros(0, dtype=dtype)
            for name, chunks in parts.items()
        }
