"""`ranker export`: a run directory's best model -> ONNX, checked against PyTorch, published.

The graph takes the model's inputs as they are: `user_*` with a batch axis `user_batch` (1 per
request, or N for row-wise scoring) and `item_*` with the candidate axis `candidates`; one output
per task, in task order and natural units. Dense statistics are buffers, so they are in the graph.
Before publishing, ONNX Runtime (CPU) must match torch eager on held-out rows of the run's own log,
in both layouts, within `tolerance`. `batched=True` publishes the batched graph instead (user rows
of several requests, `request_index`; the manifest says `batched: true`), checked in a third
layout too: the held-out requests merged into one run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from ranker.features import FeatureEncoder
from ranker.model_card import CARD_FILE
from ranker.models import REQUEST_INDEX, MultiTaskModel
from ranker.models.ensemble import MeanOfModels
from ranker.onnx_model import OnnxModel, OnnxModelError
from ranker.registry import MANIFEST_FILE, MODEL_FILE, Manifest, Publication, publish
from ranker.schema import FeatureSpec
from training.checkpoint import BEST, load_best
from training.data import EncodedData, encode_table, read_log

EXPORTER = "torch.onnx.export(dynamo=True)"
USER_AXIS, ITEM_AXIS = "user_batch", "candidates"
REQUESTS_AXIS = "requests"  # the user inputs' axis in the batched graph
# Requests scored one by one (user batch 1) in the per-request parity layout.
PARITY_REQUESTS = 8


class ExportError(ValueError):
    """A run directory that cannot be exported, or an ONNX graph that does not match PyTorch."""


def export_run(
    run_dir: str | Path,
    registry_root: str | Path,
    name: str,
    *,
    opset: int = 18,
    parity_rows: int = 512,
    tolerance: float = 1e-4,
    parent: str | None = None,
    data_paths: Sequence[str | Path] | None = None,
    batched: bool = False,
) -> Manifest:
    """Export `run_dir`'s best.pt to ONNX, check parity, publish as the next version of `name`.

    `data_paths` replaces the log paths recorded in the run's config (e.g. when the log moved).
    `batched` publishes the graph a dynamic batcher feeds (serving's RANKER_BATCH_MAX_REQUESTS).
    Parity is max |onnx - torch| / max(1, |torch|): absolute for probabilities, relative for
    watch_time above one second.
    """
    run_dir = Path(run_dir)
    best = run_dir / BEST
    state, run_metrics, model = read_run(run_dir, best)
    spec = FeatureSpec.from_yaml(state["spec_yaml"], str(best))
    split = state["split"]
    days = list(split["test"] or split["valid"])
    paths = list(data_paths) if data_paths is not None else list(state["config"]["data"]["paths"])
    rows = held_out_rows(
        paths, spec, days, parity_rows, bool(state["config"]["data"].get("drop_invalid"))
    )
    if rows.rows < 2:
        raise ExportError(
            f"{paths}: fewer than 2 held-out rows on days {days} for the parity check"
        )

    example = {k: v[:2] for k, v in rows.inputs.items()}
    model_bytes = to_onnx(model, example, opset, batched=batched)
    parity = check_parity(model_bytes, model, rows, tolerance)
    exporter = exporter_record(tolerance, parity, parity_days=days)
    publication = _publication(model, spec, state, run_metrics, opset, parent, exporter, batched)
    manifest = publish(registry_root, name, model_bytes, publication)
    if (run_dir / "mlflow_run.json").is_file():  # a tracked run: attach the version to it
        from training.tracking import log_export

        version_dir = Path(registry_root) / name / manifest.version
        log_export(run_dir, version_dir, [MODEL_FILE, MANIFEST_FILE, CARD_FILE])
    return manifest


def exporter_record(tolerance: float, parity: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """The manifest's `exporter`: the exporter and library versions, the parity check's result
    and tolerance, and what else the export records (its parity days, an ensemble's members)."""
    return {
        "name": EXPORTER,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        **extra,
        "tolerance": tolerance,
        **parity,
    }


def read_run(run_dir: Path, best: Path) -> tuple[dict[str, Any], dict[str, Any], MultiTaskModel]:
    """The best checkpoint's state, the run's metrics and the inference model, checked."""
    if not best.is_file():
        raise ExportError(f"{best}: not found; {run_dir} is not a finished training run")
    metrics_file = run_dir / "metrics.json"
    try:
        run_metrics = json.loads(metrics_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"{metrics_file}: cannot read the run's metrics: {exc}") from None
    state = torch.load(best, map_location="cpu", weights_only=True)
    model = load_best(best)
    # Auxiliary heads belong to the training wrapper; one here would be exported and served.
    aux = [k for k in model.state_dict() if "aux" in k]
    if aux:
        raise ExportError(f"{best}: inference model holds auxiliary-head tensors {aux[:3]}")
    return state, run_metrics, model


def _publication(
    model: MultiTaskModel,
    spec: FeatureSpec,
    state: dict[str, Any],
    run_metrics: dict[str, Any],
    opset: int,
    parent: str | None,
    exporter: dict[str, Any],
    batched: bool,
) -> Publication:
    """What the exporter says about the model (the registry adds name, version, time, sha256)."""
    encoder = FeatureEncoder(spec)
    hparams = model.hparams()
    split = state["split"]
    return Publication(
        feature_spec=spec.to_dict(),
        tasks=hparams["tasks"],
        inputs={g: encoder.input_names(g) for g in ("user", "item")},
        outputs=list(model.task_names),
        opset=opset,
        data_window={k: list(split[k]) for k in ("train", "valid", "test")},
        metrics={
            "valid": run_metrics.get("valid"),
            "test": run_metrics.get("test"),
            "best_epoch": state["epoch"],
            # Calibration under drift baked into the graph: per task the applied offset, its
            # target day and the per-day offsets it was fitted on (training/calibration.py).
            **({"calibration": run_metrics["calibration"]} if "calibration" in run_metrics else {}),
        },
        parent=parent,
        model_kind=hparams["kind"],
        hparams=hparams,
        exporter=exporter,
        batched=batched,
    )


def held_out_rows(
    paths: Sequence[str | Path], spec: FeatureSpec, days: Sequence[str], rows: int, drop: bool
) -> EncodedData:
    """The first `rows` impressions of `days`, encoded with the run's fitted spec."""
    try:
        log = read_log(list(paths), spec, drop_invalid=drop, oracle=False, days=days)
    except ValueError as exc:
        raise ExportError(
            f"cannot read held-out rows for the parity check (pass data_paths if the log moved): {exc}"
        ) from None
    return encode_table(log.table.slice(0, rows), FeatureEncoder(spec))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter: torch.export warns about its own internals (pytree deprecations,
    merged axis names) and logs missing torchvision ops; none of it is the user's business."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def to_onnx(
    model: MultiTaskModel | MeanOfModels,
    example: Mapping[str, np.ndarray],
    opset: int,
    *,
    batched: bool = False,
) -> bytes:
    """The inference model as a checked ONNX graph (bytes) with dynamic user and candidate axes.

    torch.export cannot keep B_u and N apart: the user part is added to the item part, so it
    specialises B_u to 1 or unifies it with N. We trace with B_u = N (>= 2), then give the user
    inputs their own axis name: ONNX Add broadcasts, so the graph also runs with B_u = 1 (the
    parity check proves it for each export).

    `batched=True` gives the graph for a batch of requests: user inputs with their own axis
    `requests` (B), item inputs and `request_index` [N] (each item's row in the user inputs) on the
    candidate axis, so a dynamic batcher can merge concurrent requests into one run.
    """
    batch = {len(v) for v in example.values()}
    if len(batch) != 1 or batch.pop() < 2:
        raise ExportError("export example: every input needs the same batch size, at least 2")
    inputs = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in example.items()}
    axis = torch.export.Dim(ITEM_AXIS)
    names = list(model.input_names)
    shapes: dict[str, dict[int, Any]] = {k: {0: axis} for k in inputs}
    if batched:
        # Two requests, each candidate in one of them: B and N traced apart, so neither specialises.
        n = len(next(iter(inputs.values())))
        requests = torch.export.Dim(REQUESTS_AXIS)
        inputs = {k: v[:2] if k.startswith("user_") else v for k, v in inputs.items()}
        inputs[REQUEST_INDEX] = torch.arange(n, dtype=torch.int64) % 2
        shapes = {k: {0: requests if k.startswith("user_") else axis} for k in inputs}
        names.append(REQUEST_INDEX)
    with _quiet(), torch.no_grad():
        program = torch.onnx.export(
            model.eval(),
            (),
            kwargs={"inputs": inputs},
            dynamo=True,
            opset_version=opset,
            input_names=names,
            output_names=list(model.task_names),
            dynamic_shapes={"inputs": shapes},
            verbose=False,
        )
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    return _finish_graph(program.model_proto, batched)


def _finish_graph(proto: onnx.ModelProto, batched: bool) -> bytes:
    """Name the exported graph's axes (user or requests, candidates), drop the shapes traced
    under B_u = N, refuse auxiliary-head tensors, and check the graph."""
    graph = proto.graph
    for value in [*graph.input, *graph.output]:
        dim = value.type.tensor_type.shape.dim[0]
        if not dim.dim_param:
            raise ExportError(f"ONNX {value.name!r}: batch axis was fixed to {dim.dim_value}")
        user_axis = REQUESTS_AXIS if batched else USER_AXIS
        dim.dim_param = user_axis if value.name.startswith("user_") else ITEM_AXIS
    # Intermediate shapes were recorded under B_u = N; ONNX Runtime re-infers them.
    del graph.value_info[:]
    names = [t.name for t in graph.initializer] + [n.name for n in graph.node]
    if any("aux" in n for n in names):
        raise ExportError("ONNX graph contains auxiliary-head tensors")
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"exported ONNX graph is invalid: {exc}") from None
    return bytes(proto.SerializeToString())


def _max_diff(got: np.ndarray, want: np.ndarray) -> float:
    if want.size == 0:
        return 0.0
    return float(np.max(np.abs(got - want) / np.maximum(1.0, np.abs(want))))


def check_parity(
    model_bytes: bytes,
    model: MultiTaskModel | MeanOfModels,
    data: EncodedData,
    tolerance: float,
) -> dict[str, Any]:
    """ONNX Runtime (CPU) vs torch eager, row-wise (user batch N) and per request (user batch 1,
    the first few requests); for a batched graph also those requests merged into one run.
    Returns the differences per layout and task; ExportError above `tolerance`."""
    try:
        session = OnnxModel(model_bytes)
    except OnnxModelError as exc:
        raise ExportError(f"exported graph: {exc}") from None
    if list(session.outputs) != list(model.task_names):
        raise ExportError(
            f"ONNX outputs {list(session.outputs)} differ from the tasks {model.task_names}"
        )
    batched = REQUEST_INDEX in session.input_names

    def compare(feeds: dict[str, np.ndarray]) -> dict[str, float]:
        if batched and REQUEST_INDEX not in feeds:  # user rows 1 (all items) or N (row i)
            users = len(next(v for k, v in feeds.items() if k.startswith("user_")))
            items = len(next(v for k, v in feeds.items() if k.startswith("item_")))
            feeds = {**feeds, REQUEST_INDEX: np.arange(items, dtype=np.int64) % users}
        try:
            got = session.run(feeds)
        except Exception as exc:  # ORT raises its own types; the message is what matters
            raise ExportError(f"ONNX Runtime failed on held-out rows: {exc}") from None
        with torch.no_grad():
            want = model({k: torch.from_numpy(v) for k, v in feeds.items()})
        return {
            t: _max_diff(g, want[t].numpy()) for t, g in zip(model.task_names, got, strict=True)
        }

    inputs = {k: np.ascontiguousarray(v) for k, v in data.inputs.items()}
    rowwise = compare(inputs)
    _, first = np.unique(data.request_id, return_index=True)
    per_request = dict.fromkeys(model.task_names, 0.0)
    requests = data.request_id[np.sort(first)][:PARITY_REQUESTS]
    singles = []
    for request in requests:
        index = np.flatnonzero(data.request_id == request)
        feeds = {
            k: np.ascontiguousarray(v[index[:1]] if k.startswith("user_") else v[index])
            for k, v in inputs.items()
        }
        singles.append(feeds)
        for task, diff in compare(feeds).items():
            per_request[task] = max(per_request[task], diff)
    layouts = {"rowwise": rowwise, "per_request": per_request}
    if batched:  # the requests as a dynamic batcher merges them (serving.batching.merge)
        merged = {k: np.concatenate([f[k] for f in singles]) for k in inputs}
        counts = [len(f[next(k for k in f if k.startswith("item_"))]) for f in singles]
        merged[REQUEST_INDEX] = np.repeat(np.arange(len(singles), dtype=np.int64), counts)
        layouts["batched"] = compare(merged)
    worst = max(d for layout in layouts.values() for d in layout.values())
    if not worst <= tolerance:  # NaN fails too
        raise ExportError(
            f"ONNX and PyTorch predictions differ by {worst:.3g} > tolerance {tolerance:g}: "
            + ", ".join(f"{name} {diffs}" for name, diffs in layouts.items())
        )
    return {
        "parity_rows": data.rows,
        "parity_requests": len(requests),
        "parity_metric": "max |onnx - torch| / max(1, |torch|)",
        "parity": layouts,
        "parity_max_diff": worst,
    }
