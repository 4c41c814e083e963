"""Row chunks (serving/row_split.py): the splitter's contract, and /rank through the real app with
requests split into chunks equal to the same requests run whole, on the plain and the batched
graph."""

from __future__ import annotations

import itertools
import os
import shutil
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from ranker.experiments import ModelRef
from serving.models import ModelPool
from serving.row_split import RowSplitter, chunk_bounds, exclusive_cpus
from serving.settings import CPU, Settings
from tests.serving.conftest import body_of, requests_of, serve

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("rows", [0, 1, 2, 7, 100, 101])
@pytest.mark.parametrize("parts", [2, 3])
def test_chunk_bounds_cover_the_rows_in_order_and_even_sizes(rows: int, parts: int) -> None:
    bounds = chunk_bounds(rows, parts)
    assert len(bounds) == parts
    assert bounds[0][0] == 0 and bounds[-1][1] == rows
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    sizes = [stop - start for start, stop in bounds]
    assert max(sizes) - min(sizes) <= 1


def test_map_runs_every_chunk_on_its_own_thread_in_order() -> None:
    splitter = RowSplitter(3, min_grace_s=10.0)  # no take-backs, however slow a helper starts
    try:
        seen: list[str] = []

        def work(x: int) -> int:
            seen.append(threading.current_thread().name)
            return x * 10

        assert splitter.map(work, [1, 2, 3]) == [10, 20, 30]
        assert splitter.map(work, [4]) == [40]  # fewer chunks than parts
        assert len(set(seen[:3])) == 3  # the caller and two helpers
        assert threading.current_thread().name in seen
        assert splitter.runs == 2
    finally:
        splitter.close()


def test_a_lagging_helper_chunk_is_run_by_the_caller_and_collected_later() -> None:
    splitter = RowSplitter(2, min_grace_s=0.01)
    release = threading.Event()
    threads: list[str] = []

    def work(x: int) -> int:
        threads.append(threading.current_thread().name)
        if threading.current_thread() is not threading.main_thread() and x == 2:
            release.wait(5)  # the straggler: its core taken
        return x * 10

    try:
        assert splitter.map(work, [1, 2]) == [10, 20]  # the caller ran chunk 2 too
        assert splitter.taken_back == 1
        assert threads.count(threading.main_thread().name) == 2
        assert splitter.map(work, [3, 4]) is None  # the straggler still runs: run whole
        assert splitter.declined == 1
        release.set()
        for _ in range(500):  # its late answer is collected, then splitting resumes
            got = splitter.map(work, [3, 4])
            if got is not None:
                break
            threading.Event().wait(0.01)
        assert got == [30, 40]
    finally:
        release.set()
        splitter.close()


def test_pinned_helpers_run_on_one_of_the_cpus_and_the_caller_stays_free() -> None:
    owned = sorted(os.sched_getaffinity(0))
    before = set(owned)
    for cpus in ([owned[0], owned[0]], [owned[0], owned[-1]]):
        splitter = RowSplitter(2, cpus=cpus, min_grace_s=10.0)
        try:
            for _ in range(3):
                caller, helper = splitter.map(lambda _: os.sched_getaffinity(0), [0, 1])  # type: ignore[misc]
                assert caller == before  # the caller is never pinned
                assert len(helper) == 1 and helper <= set(cpus)
        finally:
            splitter.close()
    with pytest.raises(ValueError, match="1 CPUs to pin"):
        RowSplitter(2, cpus=owned[:1])


def test_exclusive_cpus_only_when_the_process_owns_as_many_cpus_as_parts() -> None:
    owned = sorted(os.sched_getaffinity(0))
    assert exclusive_cpus(len(owned)) == owned
    assert exclusive_cpus(len(owned) + 1) is None


def test_an_exception_in_any_chunk_reaches_the_caller_after_every_chunk_ended() -> None:
    splitter = RowSplitter(2)
    finished: list[int] = []

    def work(x: int) -> int:
        if x == 2:
            raise ValueError("chunk 2 failed")
        finished.append(x)
        return x

    try:
        with pytest.raises(ValueError, match="chunk 2 failed"):
            splitter.map(work, [1, 2])
        assert finished == [1]
        with pytest.raises(ValueError, match="chunk 2 failed"):
            splitter.map(work, [2, 1])  # the caller's own chunk fails; the helper's still ran
        assert finished == [1, 1]
        assert splitter.map(work, [3, 4]) == [3, 4]  # the helper is still alive
    finally:
        splitter.close()


def test_a_busy_or_closed_splitter_runs_nothing_and_says_so() -> None:
    splitter = RowSplitter(2)
    inner: list[Any] = []

    def work(x: int) -> int:
        inner.append(splitter.map(lambda y: y, [x, x]))  # the splitter is busy: None
        return x

    assert splitter.map(work, [1, 2]) == [1, 2]
    assert inner == [None, None]
    splitter.close()
    assert splitter.map(work, [1, 2]) is None
    with pytest.raises(ValueError, match="at least 2 parts"):
        RowSplitter(1)
    with pytest.raises(ValueError, match="3 chunks"):
        RowSplitter(2).map(work, [1, 2, 3])


def split_settings(settings: Settings) -> Settings:
    """Two threads and every request of 4+ candidates split into 2 chunks."""
    return replace(settings, intra_op_threads=2, split_min_candidates=4)


async def rank_all(settings: Settings, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    async with serve(settings) as served:
        out = []
        for body in bodies:
            response = await served.client.post("/rank", json=body)
            assert response.status_code == 200, response.text
            out.append(orjson.loads(response.content))
        splitter = served.service.manager.pool.splitter
        runs = splitter.runs if splitter is not None else 0
        declined = splitter.declined if splitter is not None else 0
        metrics = (await served.client.get("/metrics")).text
        if splitter is None:
            assert "ranker_row_chunk_requests" not in metrics
        else:  # the counts, as /metrics tells them
            assert f'ranker_row_chunk_requests_total{{outcome="split"}} {float(runs)}' in metrics
            taken = float(splitter.taken_back)
            assert f'ranker_row_chunk_requests_total{{outcome="taken_back"}} {taken}' in metrics
    return [{"runs": runs, "declined": declined}, *out]


def assert_same_ranking(split: list[dict[str, Any]], whole: list[dict[str, Any]]) -> None:
    for a, b in zip(split[1:], whole[1:], strict=True):
        assert [i["item_id"] for i in a["items"]] == [i["item_id"] for i in b["items"]]
        np.testing.assert_allclose(
            [i["score"] for i in a["items"]], [i["score"] for i in b["items"]], rtol=1e-5
        )
        for task in a["items"][0]["predictions"]:
            np.testing.assert_allclose(
                [i["predictions"][task] for i in a["items"]],
                [i["predictions"][task] for i in b["items"]],
                rtol=1e-5,
                atol=1e-7,
            )


async def test_split_requests_rank_as_whole_ones(
    settings: Settings, log_rows: list[dict[str, Any]]
) -> None:
    requests = list(requests_of(log_rows).values())
    bodies = [body_of(rows, request_id=f"split-{i}") for i, rows in enumerate(requests[:6])]
    bodies = [b for b in bodies if len(b["candidates"]) >= 4]
    assert bodies
    whole = await rank_all(settings, bodies)
    split = await rank_all(split_settings(settings), bodies)
    assert whole[0]["runs"] == 0  # intra_op_threads=1: nothing to split over
    # every request (and the warm-ups) ran split, or whole when a lagging helper was still on the
    # last request's chunk (a busy machine)
    assert split[0]["runs"] >= 1
    assert split[0]["runs"] + split[0]["declined"] >= len(bodies)
    assert_same_ranking(split, whole)


async def test_requests_under_the_threshold_run_whole(
    settings: Settings, body: dict[str, Any]
) -> None:
    few = {**body, "candidates": body["candidates"][:3]}
    out = await rank_all(split_settings(settings), [few])
    # warm-ups (1 and 20 candidates): the 20 ran split, the 1 and this request did not
    assert out[0]["runs"] == 1


def test_the_batched_graph_splits_too(tiny_batched_registry: Path, tmp_path: Path) -> None:
    registry = tmp_path / "models"
    shutil.copytree(tiny_batched_registry, registry)
    ref = ModelRef("ranker", "v0002")
    base = Settings(registry=registry, providers=(CPU,), warmup_counts=(1,), impression_log=None)
    whole = ModelPool(replace(base, intra_op_threads=1)).load_one(ref)
    pool = ModelPool(replace(base, intra_op_threads=2, split_min_candidates=2))
    try:
        split = pool.load_one(ref)
        assert whole.manifest.batched and split.splitter is pool.splitter
        n = 9
        user = whole.encoder.encode_group("user", {}, 1)
        item = whole.encoder.encode_group("item", {"item_id": np.arange(n) * 7}, n)
        want = whole.predict({**user, **item})
        got = split.predict({**user, **item})
        assert pool.splitter is not None and pool.splitter.runs == 1
        for task in want:
            np.testing.assert_allclose(got[task], want[task], rtol=1e-5, atol=1e-7)
    finally:
        pool.close()
