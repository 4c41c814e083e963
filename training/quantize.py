"""int8 versions of published fp32 models (`ranker export --quantize int8`).

The fp32 graph's MatMul and Gemm nodes (the experts, gates and towers: nearly all of the work per
candidate) get int8 weights with ONNX Runtime's quantiser; embeddings and the rest stay fp32. Two
modes: `dynamic` quantises activations per run from their observed range; `static` fixes their
scales from a calibration sample of the training days (requests in the served layout). The int8
graph must keep the fp32 graph's contract (input and output names, types, the `user_batch` and
`candidates` axes, user batch 1 broadcast against N items), then scores the validation day beside
its parent (training.quantize_parity). It is published as its own registry version, the report
under `exporter.quantization`, only when its loss is within the bound; otherwise nothing is
published and QuantizeError says which metric failed.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime import quantization as oq

from ranker.features import FeatureEncoder
from ranker.onnx_model import OnnxModel, OnnxModelError, RuntimeOptions
from ranker.registry import MODEL_FILE, Manifest, Publication, publish, verify
from training.data import EncodedData, encode_table, read_log
from training.quantize_config import Mode, QuantizeOptions
from training.quantize_parity import parity_report, request_feeds, request_rows
from training.quantize_parity import violations as bound_violations

# The dense layers; Gather (embeddings) would only shrink the file, not the time per candidate.
QUANTIZED_OPS = ["MatMul", "Gemm"]
# Candidate counts the contract check runs with user batch 1 (1: no accidental squeeze to a scalar).
CONTRACT_COUNTS = (1, 7)


class QuantizeError(ValueError):
    """An int8 graph that cannot be built, breaks the model contract or loses too much quality."""


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The quantiser logs a pre-processing hint on every call at WARNING level on the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


class _Feeds(oq.CalibrationDataReader):  # type: ignore[misc]  # untyped base class
    def __init__(self, feeds: Sequence[Mapping[str, np.ndarray]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        feed = next(self._feeds, None)
        return None if feed is None else dict(feed)


def quantize_graph(
    model: bytes, mode: Mode, calibration: Sequence[Mapping[str, np.ndarray]] = ()
) -> bytes:
    """The int8 graph of an fp32 ONNX model (bytes); `static` needs calibration feeds."""
    if mode == "static" and not calibration:
        raise QuantizeError("static quantisation needs calibration feeds; none were given")
    with tempfile.TemporaryDirectory(prefix="ranker-quantize-") as tmp:
        source, target = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        source.write_bytes(model)
        try:
            with _quiet():
                if mode == "dynamic":
                    oq.quantize_dynamic(
                        source,
                        target,
                        op_types_to_quantize=QUANTIZED_OPS,
                        weight_type=oq.QuantType.QInt8,
                    )
                else:
                    # QDQ with uint8 activations and int8 weights: ORT's advice for x86 CPUs.
                    oq.quantize_static(
                        source,
                        target,
                        _Feeds(calibration),
                        quant_format=oq.QuantFormat.QDQ,
                        op_types_to_quantize=QUANTIZED_OPS,
                        activation_type=oq.QuantType.QUInt8,
                        weight_type=oq.QuantType.QInt8,
                        calibrate_method=oq.CalibrationMethod.MinMax,
                    )
        except Exception as exc:  # the quantiser raises assorted types; the message matters
            raise QuantizeError(f"ONNX Runtime {mode} quantisation failed: {exc}") from None
        return target.read_bytes()


def cpu_session(model: bytes, threads: int | None = None) -> ort.InferenceSession:
    """A CPU session of a graph, built by the project's one session builder (ranker.onnx_model)."""
    try:
        return OnnxModel(model, options=RuntimeOptions(intra_op_threads=threads or 0)).session
    except OnnxModelError as exc:
        raise QuantizeError(f"ONNX Runtime cannot load the graph: {exc}") from None


def _signature(values: Sequence[Any]) -> list[tuple[str, str, list[Any]]]:
    return [(v.name, v.type, list(v.shape)) for v in values]


def check_contract(
    fp32: ort.InferenceSession,
    int8: ort.InferenceSession,
    feeds: Mapping[str, np.ndarray],
    user_inputs: Sequence[str],
) -> None:
    """The int8 graph takes and gives what the fp32 one does: the same input and output names,
    types and axis names, and output shapes equal to fp32's with user batch 1 against N items."""
    for side, want, got in (
        ("inputs", fp32.get_inputs(), int8.get_inputs()),
        ("outputs", fp32.get_outputs(), int8.get_outputs()),
    ):
        if _signature(want) != _signature(got):
            raise QuantizeError(
                f"int8 graph {side} {_signature(got)} differ from fp32 {_signature(want)}"
            )
    rows = next(iter(feeds.values())).shape[0]
    for count in CONTRACT_COUNTS:
        index = np.arange(count) % rows
        request = {
            name: np.ascontiguousarray(values[index[:1]] if name in user_inputs else values[index])
            for name, values in feeds.items()
        }
        want_out, got_out = fp32.run(None, request), int8.run(None, request)
        for meta, w, g in zip(fp32.get_outputs(), want_out, got_out, strict=True):
            if np.shape(w) != np.shape(g) or np.asarray(g).dtype != np.asarray(w).dtype:
                raise QuantizeError(
                    f"int8 output {meta.name!r} for user batch 1 and {count} items: shape "
                    f"{np.shape(g)} {np.asarray(g).dtype}, fp32 gives {np.shape(w)} "
                    f"{np.asarray(w).dtype}"
                )


def read_days(
    paths: Sequence[str | Path], manifest: Manifest, days: Sequence[str], drop_invalid: bool
) -> EncodedData:
    """Rows of `days` encoded with the version's fitted feature spec (other day partitions are
    not read)."""
    spec = manifest.spec()
    try:
        log = read_log(list(paths), spec, drop_invalid=drop_invalid, oracle=False, days=days)
    except ValueError as exc:
        raise QuantizeError(f"cannot read the training log {list(paths)}: {exc}") from None
    table = log.table
    if table.num_rows == 0:
        raise QuantizeError(f"{list(paths)}: no rows on days {list(days)}")
    return encode_table(table, FeatureEncoder(spec))


def calibration_feeds(
    data: EncodedData, user_inputs: Sequence[str], requests: int, seed: int
) -> list[dict[str, np.ndarray]]:
    """A seeded sample of whole requests, each in the served layout."""
    every = request_rows(data)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(every), size=min(requests, len(every)), replace=False)
    return [request_feeds(data, every[i], user_inputs) for i in sorted(chosen)]


def quantize_version(
    registry_root: str | Path,
    name: str,
    version: str,
    data_paths: Sequence[str | Path],
    options: QuantizeOptions | None = None,
    *,
    drop_invalid: bool = False,
    target_name: str | None = None,
) -> Manifest:
    """Quantise the published fp32 version `name/version` and publish the int8 graph as the next
    version of `target_name` (default `name`), its parent `version`. `data_paths` is the training
    log: calibration from the version's training days, parity on its validation days."""
    options = options or QuantizeOptions()
    version_dir = Path(registry_root) / name / version
    parent, train_days, valid_days = _fp32_parent(version_dir)
    user_inputs = list(parent.inputs.get("user", []))
    fp32_bytes = (version_dir / MODEL_FILE).read_bytes()
    calibration: list[dict[str, np.ndarray]] = []
    if options.mode == "static":
        train = read_days(data_paths, parent, train_days, drop_invalid)
        calibration = calibration_feeds(
            train, user_inputs, options.calibration_requests, options.seed
        )
    int8_bytes = quantize_graph(fp32_bytes, options.mode, calibration)
    fp32, int8 = cpu_session(fp32_bytes), cpu_session(int8_bytes)
    valid = read_days(data_paths, parent, valid_days, drop_invalid)
    check_contract(fp32, int8, valid.inputs, user_inputs)
    report = parity_report(
        fp32,
        int8,
        list(parent.outputs),
        valid,
        user_inputs,
        max_requests=options.parity_requests,
    )
    report["days"] = valid_days
    refused = bound_violations(report, options.bound)
    if refused:
        raise QuantizeError(
            f"int8 version of {name}/{version} refused, nothing published: "
            f"{'; '.join(refused)} (measured on {valid_days}, {report['requests']} requests)"
        )
    target = target_name or name
    parent_ref = version if target == name else f"{name}/{version}"
    quantization = _quantization(options, parent, parent_ref, train_days, calibration, report)
    return publish(
        registry_root, target, int8_bytes, _publication(parent, int8_bytes, quantization)
    )


def _quantization(
    options: QuantizeOptions,
    parent: Manifest,
    parent_ref: str,
    train_days: list[str],
    calibration: list[dict[str, np.ndarray]],
    report: dict[str, Any],
) -> dict[str, Any]:
    """The manifest's record of how the int8 graph was made and how close it stays."""
    return {
        "dtype": "int8",
        "mode": options.mode,
        "tool": f"onnxruntime.quantization.quantize_{options.mode}",
        "ops": QUANTIZED_OPS,
        "weights": "int8, per tensor",
        "activations": "uint8, "
        + ("scales fixed by calibration (MinMax, QDQ)" if calibration else "scale per run"),
        "parent": parent_ref,
        "parent_sha256": parent.sha256,
        "calibration": {"days": train_days, "requests": len(calibration)} if calibration else None,
        "bound": {
            "max_auc_drop": options.bound.max_auc_drop,
            "max_rmse_rise": options.bound.max_rmse_rise,
        },
        "parity": report,
    }


def _fp32_parent(version_dir: Path) -> tuple[Manifest, list[str], list[str]]:
    """The verified fp32 version with its training days (calibration) and validation days
    (parity); refused when it is already int8 or its manifest lacks either."""
    try:
        parent = verify(version_dir)
    except ValueError as exc:
        raise QuantizeError(str(exc)) from None
    if "quantization" in parent.exporter:
        raise QuantizeError(f"{version_dir}: already an int8 version; quantise its fp32 parent")
    if parent.batched:  # its parity and contract checks feed one request per run
        raise QuantizeError(
            f"{version_dir}: a batched graph; quantise a single-request export of the same run"
        )
    window = parent.data_window
    valid_days = list(window.get("valid") or window.get("test") or [])
    train_days = list(window.get("train") or [])
    if not valid_days or not train_days:
        raise QuantizeError(
            f"{version_dir}: manifest data_window needs train and valid days, has {window}"
        )
    return parent, train_days, valid_days


def _publication(parent: Manifest, int8_bytes: bytes, quantization: dict[str, Any]) -> Publication:
    """The int8 version says what its fp32 parent says, with the quantisation added."""
    return Publication(
        feature_spec=parent.feature_spec,
        tasks=parent.tasks,
        inputs=parent.inputs,
        outputs=parent.outputs,
        opset=_opset(int8_bytes, parent.opset),
        data_window=parent.data_window,
        metrics=parent.metrics,
        parent=quantization["parent"],
        model_kind=parent.model_kind,
        hparams=parent.hparams,
        exporter={
            "name": quantization["tool"],
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
            # How the fp32 graph was made and checked against PyTorch.
            "fp32": parent.exporter,
            "quantization": quantization,
        },
    )


def _opset(model: bytes, default: int) -> int:
    proto = onnx.load_from_string(model)
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default)
