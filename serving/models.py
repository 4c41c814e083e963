"""Model versions as warmed ONNX Runtime sessions (CUDA when present, else CPU, never silently).

A version is loaded only after its bytes match the manifest's sha256; the session is built from
exactly the bytes that were hashed. The graph takes the user group with batch 1 and the item group
with batch N and broadcasts the user side inside, so a request costs one `run`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ranker.experiments import ModelRef
from ranker.features import FeatureEncoder
from ranker.registry import MODEL_FILE, Manifest, RegistryError, model_path, verify
from ranker.schema import FeatureSpec, SpecError
from serving.binding import run_bound
from serving.settings import CPU, CUDA, Settings

log = logging.getLogger("ranker.serving.models")


class ModelError(ValueError):
    """A model version that cannot be served; the message says why."""


@dataclass(frozen=True)
class FieldKinds:
    """Feature kinds per request part, for validation: name -> categorical | multi_categorical | dense."""

    user: Mapping[str, str]
    context: Mapping[str, str]
    item: Mapping[str, str]

    @classmethod
    def of(cls, spec: FeatureSpec) -> FieldKinds:
        parts: dict[str, dict[str, str]] = {"user": {}, "context": {}, "item": {}}
        for feature in spec.features:
            parts[feature.side][feature.name] = feature.kind
        return cls(parts["user"], parts["context"], parts["item"])


@dataclass(frozen=True)
class LoadedModel:
    """One model version ready to serve. Immutable; shared by the states that reference it."""

    ref: ModelRef
    manifest: Manifest
    encoder: FeatureEncoder
    kinds: FieldKinds
    session: ort.InferenceSession = field(repr=False)
    tasks: tuple[str, ...]
    outputs: tuple[str, ...]
    # Providers asked for in settings (in order) and the one the session actually runs on.
    requested: tuple[str, ...]
    provider: str
    load_seconds: float

    @property
    def fallback(self) -> bool:
        """True when the session runs on a provider other than the first one asked for."""
        return bool(self.requested) and self.provider != self.requested[0]

    def predict(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One session run; task -> predictions [N] in natural units, in the manifest's task order."""
        if self.provider == CUDA:
            # Inputs to the GPU once, outputs back in one copy (serving/binding.py; the same
            # function runs bound to CPU in the tests).
            outputs = run_bound(self.session, feeds, self.outputs, "cuda")
        else:
            outputs = self.session.run(self.outputs, dict(feeds))
        return {
            task: np.asarray(out).reshape(-1) for task, out in zip(self.tasks, outputs, strict=True)
        }

    def warm(self, counts: Iterable[int]) -> None:
        """Run once per candidate count so allocations and kernels are ready before serving."""
        user = self.encoder.encode_group("user", {}, 1)
        for count in counts:
            items = {"item_id": np.arange(count, dtype=np.int64)}
            item = self.encoder.encode_group("item", items, count)
            self.predict({**user, **item})


def session_options(settings: Settings) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.intra_op_threads
    options.inter_op_num_threads = settings.inter_op_threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    spinning = "1" if settings.ort_spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
    return options


def usable_providers(wanted: Sequence[str]) -> tuple[str, ...]:
    """The wanted providers this onnxruntime build has, in the wanted order (CPU always last)."""
    available = set(ort.get_available_providers())
    chosen = [p for p in wanted if p in available]
    if CPU not in chosen:
        chosen.append(CPU)  # ORT needs it as the fallback for ops another provider lacks
    return tuple(chosen)


class ModelPool:
    """Loads model versions from the registry: verify, build the session, check, warm."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = Path(settings.registry)
        self.providers = usable_providers(settings.providers)
        skipped = [p for p in settings.providers if p not in self.providers]
        if skipped:
            log.warning(
                "providers %s are not in this onnxruntime build (%s); sessions will use %s",
                skipped,
                ort.get_available_providers(),
                list(self.providers),
            )
        if settings.require_cuda and CUDA not in self.providers:
            raise ModelError(
                f"RANKER_REQUIRE_CUDA is set but onnxruntime offers {ort.get_available_providers()}"
            )

    def exists(self, ref: ModelRef) -> bool:
        try:
            model_path(self.root, ref.name, ref.version)
        except RegistryError:
            return False
        return True

    def manifest(self, ref: ModelRef) -> Manifest:
        """The version's manifest after the sha256 check (ModelError otherwise)."""
        try:
            path = model_path(self.root, ref.name, ref.version)
            return verify(path.parent)
        except RegistryError as exc:
            raise ModelError(str(exc)) from None

    def load(
        self, refs: Iterable[ModelRef], reuse: Mapping[ModelRef, LoadedModel] | None = None
    ) -> dict[ModelRef, LoadedModel]:
        """Every ref loaded and warmed; versions in `reuse` are kept as they are (immutable)."""
        reuse = reuse or {}
        return {ref: reuse[ref] if ref in reuse else self.load_one(ref) for ref in refs}

    def load_one(self, ref: ModelRef) -> LoadedModel:
        started = time.perf_counter()
        manifest = self.manifest(ref)
        path = self.root / ref.name / ref.version / MODEL_FILE
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelError(f"{path}: cannot read model: {exc.strerror}") from None
        # verify() hashed the file; hash the bytes we load too, so a file swapped in between fails.
        if hashlib.sha256(data).hexdigest() != manifest.sha256:
            raise ModelError(f"{path}: sha256 changed while loading; refusing it")
        try:
            spec = manifest.spec()
        except SpecError as exc:
            raise ModelError(f"model {ref}: bad feature spec in manifest: {exc}") from None
        encoder = FeatureEncoder(spec)
        tasks = tuple(manifest.task_names)
        outputs = tuple(manifest.outputs)
        for group in ("user", "item"):
            if list(manifest.inputs.get(group, [])) != encoder.input_names(group):
                raise ModelError(
                    f"model {ref}: manifest inputs.{group} {manifest.inputs.get(group)} differ "
                    f"from the feature spec's {encoder.input_names(group)}"
                )
        if len(outputs) != len(tasks):
            raise ModelError(f"model {ref}: {len(outputs)} outputs for {len(tasks)} tasks")
        try:
            session = ort.InferenceSession(
                data, sess_options=session_options(self.settings), providers=list(self.providers)
            )
        except Exception as exc:  # ORT raises its own exception types
            raise ModelError(f"model {ref}: ONNX Runtime cannot load it: {exc}") from None
        graph_inputs = sorted(i.name for i in session.get_inputs())
        wanted_inputs = sorted(manifest.inputs.get("user", []) + manifest.inputs.get("item", []))
        if graph_inputs != wanted_inputs:
            raise ModelError(
                f"model {ref}: graph inputs {graph_inputs} != manifest {wanted_inputs}"
            )
        graph_outputs = [o.name for o in session.get_outputs()]
        if not set(outputs) <= set(graph_outputs):
            raise ModelError(f"model {ref}: graph outputs {graph_outputs} lack {list(outputs)}")
        active = session.get_providers()
        provider = active[0] if active else CPU
        if provider != self.providers[0]:
            log.error(
                "model %s: asked for %s, ONNX Runtime runs it on %s",
                ref,
                self.providers[0],
                provider,
            )
        if self.settings.require_cuda and provider != CUDA:
            raise ModelError(f"model {ref}: RANKER_REQUIRE_CUDA is set, session runs on {provider}")
        model = LoadedModel(
            ref=ref,
            manifest=manifest,
            encoder=encoder,
            kinds=FieldKinds.of(spec),
            session=session,
            tasks=tasks,
            outputs=outputs,
            requested=tuple(self.settings.providers),
            provider=provider,
            load_seconds=0.0,
        )
        try:
            model.warm(self.settings.warmup_counts)
        except Exception as exc:
            raise ModelError(f"model {ref}: warm-up run failed: {exc}") from None
        seconds = time.perf_counter() - started
        log.info("model %s loaded on %s and warmed in %.2f s", ref, provider, seconds)
        return replace(model, load_seconds=seconds)
