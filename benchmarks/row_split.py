"""Row chunks vs ONNX Runtime's own thread pool for one request's ONNX call.

    python -m benchmarks.row_split [--repeat 300] [--counts 16,32,64,100,200,500,1000]

The serving_rank benchmark's two models (8 experts [256, 128] and the demo's [128, 64], towers
[64], random weights), one request in the served layout (user side once, N candidates), called
five ways in turn, `--repeat` times per count after a warm-up: ORT with 2 intra-op threads whose
workers sleep between parallel sections (the service's `RANKER_ORT_SPINNING=off`), spin inside a
run (`run`), spin always (`always`, ORT's default); ORT with 1 thread, the request whole; and the
request as 2 row chunks at once on 1-thread sessions (serving/row_split.py, what the service does
from RANKER_SPLIT_MIN_CANDIDATES candidates on). Medians in ms; ratios against the sleeping pool,
the service's previous default, and against the best of the other four.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from benchmarks.interleave import blocked_medians
from benchmarks.report import machine, write_section
from benchmarks.serving_rank import CONFIG, DEMO_CONFIG, build_registry, request_body
from ranker.features import FeatureEncoder
from serving.row_split import RowSplitter, chunk_bounds, exclusive_cpus

MODELS = {"benchmark [256, 128]": CONFIG, "demo [128, 64]": DEMO_CONFIG}
WHOLE = [0]  # split calls that ran whole because a helper still ran the last call's chunk
WAYS = ("2 threads, sleeping", "2 threads, spin in run", "2 threads, spin always", "1 thread")


def session(path: Path, threads: int, spinning: str, stop: bool = False) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
    if stop:
        options.add_session_config_entry("session.force_spinning_stop", "1")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def calls(path: Path, feeds: dict[str, np.ndarray], splitter: RowSplitter) -> dict[str, Any]:
    """The five ways to run this request, as calls without arguments."""
    sessions = {
        WAYS[0]: session(path, 2, "0"),
        WAYS[1]: session(path, 2, "1", stop=True),
        WAYS[2]: session(path, 2, "1"),
        WAYS[3]: session(path, 1, "0"),
    }
    outputs = [o.name for o in sessions[WAYS[0]].get_outputs()]
    one = sessions[WAYS[3]]
    n = len(feeds["item_cat"])
    chunks = [
        {k: v if k.startswith("user_") else v[a:b] for k, v in feeds.items()}
        for a, b in chunk_bounds(n, splitter.parts)
    ]

    def run(chunk: dict[str, np.ndarray]) -> list[np.ndarray]:
        return one.run(outputs, chunk)  # type: ignore[no-any-return]

    def split() -> list[np.ndarray]:
        parts = splitter.map(run, chunks)
        if parts is None:  # a straggler of the last call still runs: whole, as the service does
            WHOLE[0] += 1
            return run(feeds)
        return [np.concatenate(p) for p in zip(*parts, strict=True)]

    whole = sessions[WAYS[0]].run(outputs, feeds)
    for got, want in zip(split(), whole, strict=True):  # the chunks compute the same thing
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    variants: dict[str, Callable[[], object]] = {
        way: functools.partial(session.run, outputs, feeds) for way, session in sessions.items()
    }
    variants["2 row chunks"] = split
    return variants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=300)
    parser.add_argument("--counts", default="16,32,64,100,200,500,1000")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    splitter = RowSplitter(2, cpus=exclusive_cpus(2))
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for label, config in MODELS.items():
            version_dir, table, spec = build_registry(tmp / label[:4], config)
            encoder = FeatureEncoder(spec)
            for n in counts:
                body = request_body(table, spec, n)
                user = {k: [v] for k, v in {**body["user"], **body["context"]}.items()}
                items = {f: [c.get(f) for c in body["candidates"]] for f in spec.names}
                feeds = {
                    **encoder.encode_group("user", user, 1),
                    **encoder.encode_group("item", items, n),
                }
                times = blocked_medians(
                    calls(version_dir / "model.onnx", feeds, splitter), args.repeat
                )
                rows.append((label, n, times))
                print(label, n, {k: round(v, 3) for k, v in times.items()}, flush=True)
    splitter.close()
    seconds = time.perf_counter() - started
    header = (
        "| model | candidates | " + " | ".join(WAYS) + " | 2 row chunks | chunks / sleeping "
        "| chunks / best of the others |"
    )
    lines = [
        "## Serving: row chunks vs ORT's thread pool for one request",
        "",
        f"`python -m benchmarks.row_split --repeat {args.repeat}`: the serving_rank benchmark's "
        "models (MMoE, 8 experts, towers [64], random weights), one request in the served layout "
        "(user side once), called five ways in turn: ORT's pool of 2 threads sleeping between "
        "parallel sections (RANKER_ORT_SPINNING=off, the service's default before row chunks), "
        "spinning inside a run, spinning always; 1 thread, whole; 2 row chunks at once on 1-thread "
        "sessions (serving/row_split.py); "
        f"{args.repeat} calls per way and count in 5 blocks of consecutive calls, the ways taking "
        "turns block by block (call-by-call turns let a spinning session's workers take the core "
        f"the next call needs), medians in ms; {machine()}; of the split calls, "
        f"{splitter.taken_back} had a lagging helper's chunk run by the caller and {WHOLE[0]} ran "
        "whole because a helper was still busy; "
        f"whole run {seconds:.0f} s.",
        "",
        header,
        "|---|---:|" + "---:|" * (len(WAYS) + 3),
    ]
    for label, n, times in rows:
        chunks = times["2 row chunks"]
        best = min(times[w] for w in WAYS)
        cells = " | ".join(f"{times[w]:.3f}" for w in WAYS)
        lines.append(
            f"| {label} | {n} | {cells} | {chunks:.3f} | {chunks / times[WAYS[0]]:.2f} | "
            f"**{chunks / best:.2f}** |"
        )
    write_section("row_split", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
