"""Model versions as warmed ONNX Runtime sessions (CUDA when present, else CPU, never silently).

The verified session itself is `ranker.onnx_model` (shared with tuning, retraining and export);
this pool adds what serving needs: the settings' providers and threads, the check that manifest,
feature spec and graph agree, and a warm-up. The graph takes the user group with batch 1 and the
item group with batch N and broadcasts the user side inside, so a request costs one `run`.

A version exported with `--batched` (manifest `batched: true`) takes the user rows of several
requests and `request_index`; with RANKER_BATCH_MAX_REQUESTS > 1 it gets a RequestBatcher that
merges concurrent requests into one run, otherwise each request runs it alone (request_index 0).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ranker.experiments import ModelRef
from ranker.features import FeatureEncoder
from ranker.onnx_model import (
    OnnxModel,
    OnnxModelError,
    RuntimeOptions,
    available_providers,
    read_verified,
    usable_providers,
)
from ranker.registry import REQUEST_INDEX, Manifest, RegistryError, model_path, verify
from ranker.schema import FeatureSpec, SpecError
from serving.batching import RequestBatcher, merge
from serving.row_split import RowSplitter, chunk_bounds, exclusive_cpus
from serving.settings import CUDA, Settings

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
    onnx: OnnxModel = field(repr=False)
    tasks: tuple[str, ...]
    outputs: tuple[str, ...]
    # Providers asked for in settings (in order) and the one the session actually runs on.
    requested: tuple[str, ...]
    provider: str
    load_seconds: float
    # The version's dynamic batcher when batching is on and its graph is batched; None: each
    # request runs inline (`predict`).
    batcher: RequestBatcher | None = field(default=None, repr=False, compare=False)
    # The process's row splitter when RANKER_SPLIT_MIN_CANDIDATES is on (serving/row_split.py):
    # a request of at least `split_rows` candidates runs as one chunk per thread.
    splitter: RowSplitter | None = field(default=None, repr=False, compare=False)
    split_rows: int = 0

    @property
    def fallback(self) -> bool:
        """True when the session runs on a provider other than the first one asked for."""
        return bool(self.requested) and self.provider != self.requested[0]

    def predict(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One session run; task -> predictions [N] in natural units, in the manifest's task order."""
        n = len(feeds[self.manifest.inputs["item"][0]])
        if self.manifest.batched:  # the batched graph for one request: every item reads user row 0
            feeds = {**feeds, REQUEST_INDEX: np.zeros(n, dtype=np.int64)}
        if self.splitter is not None and n >= max(self.split_rows, self.splitter.parts):
            return self._tasks(self._run_split(self.splitter, feeds, n))
        return self._tasks(self.onnx.run(feeds))

    def _run_split(
        self, splitter: RowSplitter, feeds: Mapping[str, np.ndarray], n: int
    ) -> list[np.ndarray]:
        """One run per contiguous chunk of the items, at once; each chunk takes the whole user
        side (one row, recomputed per chunk: a [1, d] product, negligible)."""
        user = self.manifest.inputs["user"]
        chunks = [
            {name: value if name in user else value[start:stop] for name, value in feeds.items()}
            for start, stop in chunk_bounds(n, splitter.parts)
        ]
        outputs = splitter.map(self.onnx.run, chunks)
        if outputs is None:  # a warm-up on another thread, or a straggler's chunk: run it whole
            return self.onnx.run(feeds)
        return [np.concatenate(parts) for parts in zip(*outputs, strict=True)]

    async def predict_batched(
        self, user: Mapping[str, np.ndarray], item: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """`predict` through the batcher: this request's rows of a run shared with the requests
        that arrived with it (the run on an executor thread; the event loop keeps serving)."""
        assert self.batcher is not None, f"model {self.ref} has no batcher"
        return self._tasks(await self.batcher.predict(user, item))

    def _tasks(self, outputs: Iterable[np.ndarray]) -> dict[str, np.ndarray]:
        return {
            task: np.asarray(out).reshape(-1) for task, out in zip(self.tasks, outputs, strict=True)
        }

    def warm(self, counts: Iterable[int]) -> None:
        """Run once per candidate count so allocations and kernels are ready before serving
        (with a batcher, also two requests merged, the shapes batches take)."""
        user = self.encoder.encode_group("user", {}, 1)
        for count in counts:
            items = {"item_id": np.arange(count, dtype=np.int64)}
            item = self.encoder.encode_group("item", items, count)
            self.predict({**user, **item})
            if self.batcher is not None:
                self.onnx.run(merge([(user, item), (user, item)])[0])

    async def close(self) -> None:
        """Stop the batcher's worker, if any (requests still queued fail)."""
        if self.batcher is not None:
            await self.batcher.close()


def runtime_options(settings: Settings, providers: tuple[str, ...]) -> RuntimeOptions:
    """Sessions take the settings' threads, or one each when requests are split into row chunks
    (the chunks are the parallelism; an intra-op pool per chunk would only contend)."""
    return RuntimeOptions(
        intra_op_threads=1 if splits_rows(settings, providers) else settings.intra_op_threads,
        inter_op_threads=settings.inter_op_threads,
        spinning=settings.ort_spinning,
        providers=providers,
    )


def splits_rows(settings: Settings, providers: tuple[str, ...]) -> bool:
    """Row chunks (serving/row_split.py) on the CPU with 2+ threads and a threshold set; a GPU
    provider runs each request whole."""
    return (
        settings.split_min_candidates > 0
        and settings.intra_op_threads > 1
        and bool(providers)
        and providers[0] != CUDA
    )


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
                available_providers(),
                list(self.providers),
            )
        if settings.require_cuda and CUDA not in self.providers:
            raise ModelError(
                f"RANKER_REQUIRE_CUDA is set but onnxruntime offers {available_providers()}"
            )
        # One splitter for every version: only the event loop ranks inline, one request at a time.
        self.splitter: RowSplitter | None = None
        if splits_rows(settings, self.providers):
            parts = settings.intra_op_threads
            cpus = exclusive_cpus(parts) if settings.split_pin_cpus else None
            self.splitter = RowSplitter(parts, cpus=cpus)

    def close(self) -> None:
        """Stop the row splitter's helper threads, if any."""
        if self.splitter is not None:
            self.splitter.close()

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
        """Verify, build the session, check it against the manifest and the spec, warm it."""
        started = time.perf_counter()
        manifest, onnx = self._session(ref)
        try:
            spec = manifest.spec()
        except SpecError as exc:
            raise ModelError(f"model {ref}: bad feature spec in manifest: {exc}") from None
        encoder = FeatureEncoder(spec)
        check_io(ref, manifest, encoder, onnx)
        if onnx.provider != self.providers[0]:
            log.error(
                "model %s: asked for %s, ONNX Runtime runs it on %s",
                ref,
                self.providers[0],
                onnx.provider,
            )
        if self.settings.require_cuda and onnx.provider != CUDA:
            raise ModelError(
                f"model {ref}: RANKER_REQUIRE_CUDA is set, session runs on {onnx.provider}"
            )
        model = LoadedModel(
            ref=ref,
            manifest=manifest,
            encoder=encoder,
            kinds=FieldKinds.of(spec),
            onnx=onnx,
            tasks=tuple(manifest.task_names),
            outputs=onnx.outputs,
            requested=tuple(self.settings.providers),
            provider=onnx.provider,
            load_seconds=0.0,
            batcher=self._batcher(ref, manifest, onnx),
            splitter=self.splitter if onnx.provider != CUDA else None,
            split_rows=self.settings.split_min_candidates,
        )
        try:
            model.warm(self.settings.warmup_counts)
        except Exception as exc:
            raise ModelError(f"model {ref}: warm-up run failed: {exc}") from None
        seconds = time.perf_counter() - started
        log.info("model %s loaded on %s and warmed in %.2f s", ref, onnx.provider, seconds)
        return replace(model, load_seconds=seconds)

    def _batcher(self, ref: ModelRef, manifest: Manifest, onnx: OnnxModel) -> RequestBatcher | None:
        """A dynamic batcher for a batched graph when batching is on (RANKER_BATCH_MAX_REQUESTS);
        its runs go to the event loop's default executor, so it owns no thread to close."""
        settings = self.settings
        if not settings.batching:
            return None
        if not manifest.batched:
            log.warning(
                "model %s: RANKER_BATCH_MAX_REQUESTS=%d but its graph is not batched (export it "
                "with `ranker export --batched`); serving it one request per run",
                ref,
                settings.batch_max_requests,
            )
            return None
        return RequestBatcher(
            onnx.run,
            max_batch=settings.batch_max_requests,
            max_delay_us=settings.batch_max_delay_us,
        )

    def _session(self, ref: ModelRef) -> tuple[Manifest, OnnxModel]:
        """The version's verified manifest and session (ModelError naming the ref otherwise)."""
        try:
            manifest, data = read_verified(model_path(self.root, ref.name, ref.version).parent)
        except RegistryError as exc:
            raise ModelError(str(exc)) from None
        if len(manifest.outputs) != len(manifest.tasks):
            raise ModelError(
                f"model {ref}: {len(manifest.outputs)} outputs for {len(manifest.tasks)} tasks"
            )
        options = runtime_options(self.settings, self.providers)
        try:
            return manifest, OnnxModel(data, manifest.outputs, options)
        except OnnxModelError as exc:
            raise ModelError(f"model {ref}: {exc}") from None


def check_io(ref: ModelRef, manifest: Manifest, encoder: FeatureEncoder, onnx: OnnxModel) -> None:
    """The manifest's inputs are what the spec encodes and what the graph takes."""
    for group in ("user", "item"):
        if list(manifest.inputs.get(group, [])) != encoder.input_names(group):
            raise ModelError(
                f"model {ref}: manifest inputs.{group} {manifest.inputs.get(group)} differ "
                f"from the feature spec's {encoder.input_names(group)}"
            )
    graph_inputs = sorted(onnx.input_names)
    wanted_inputs = manifest.inputs.get("user", []) + manifest.inputs.get("item", [])
    wanted_inputs = sorted(wanted_inputs + ([REQUEST_INDEX] if manifest.batched else []))
    if graph_inputs != wanted_inputs:
        raise ModelError(f"model {ref}: graph inputs {graph_inputs} != manifest {wanted_inputs}")
