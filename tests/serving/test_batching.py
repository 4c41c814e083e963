"""The batched graph and the dynamic batcher: merged requests give exactly the single-request
results, in real ONNX Runtime sessions; the IO-binding path (what CUDA serving runs) on CPU."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from ranker.features import FeatureEncoder
from ranker.models import MODELS, REQUEST_INDEX, build_model
from ranker.onnx_model import run_bound
from ranker.schema import DenseStats, load_default_spec
from serving.batching import RequestBatcher, merge, split
from training.data import encode_log, read_log
from training.export import REQUESTS_AXIS, to_onnx

Feeds = dict[str, np.ndarray]


@pytest.fixture(scope="module")
def rows(tiny_log: Path) -> Feeds:
    spec = load_default_spec().with_stats(
        {"duration": DenseStats(3.5, 1.0), "upload_age_days": DenseStats(1.5, 1.0)}
    )
    return encode_log(read_log(tiny_log, spec), FeatureEncoder(spec)).inputs


def sessions(rows: Feeds, kind: str) -> tuple[ort.InferenceSession, ort.InferenceSession]:
    """(single-request graph, batched graph) of one randomly initialised model."""
    spec = load_default_spec().with_stats(
        {"duration": DenseStats(3.5, 1.0), "upload_age_days": DenseStats(1.5, 1.0)}
    )
    model = build_model(kind, spec, None, {}).eval()
    example = {k: v[:8] for k, v in rows.items()}
    cpu = ["CPUExecutionProvider"]
    single = ort.InferenceSession(to_onnx(model, example, 18), providers=cpu)
    batched = ort.InferenceSession(to_onnx(model, example, 18, batched=True), providers=cpu)
    return single, batched


def request(rows: Feeds, user_row: int, items: slice) -> tuple[Feeds, Feeds]:
    user = {k: v[user_row : user_row + 1] for k, v in rows.items() if k.startswith("user_")}
    item = {k: v[items] for k, v in rows.items() if k.startswith("item_")}
    return user, item


@pytest.fixture(scope="module")
def mmoe(rows: Feeds) -> tuple[ort.InferenceSession, ort.InferenceSession]:
    return sessions(rows, "mmoe")


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_two_users_in_one_batch_equal_two_single_runs(rows: Feeds, kind: str) -> None:
    single, batched = sessions(rows, kind)
    first, second = request(rows, 0, slice(0, 7)), request(rows, 40, slice(7, 30))
    feeds, offsets = merge([first, second])
    assert feeds[REQUEST_INDEX].tolist() == [0] * 7 + [1] * 23
    together = split(batched.run(None, feeds), offsets)
    for (user, item), got in zip([first, second], together, strict=True):
        want = single.run(None, {**user, **item})
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    # The two users really differ, so equality above is not one user's scores twice.
    alone = single.run(None, {**second[0], **first[1]})
    assert not np.allclose(alone[0], together[0][0])


def test_batched_graph_axes(mmoe: tuple[ort.InferenceSession, ort.InferenceSession]) -> None:
    _, batched = mmoe
    axes = {i.name: i.shape[0] for i in batched.get_inputs()}
    assert axes[REQUEST_INDEX] == "candidates"
    assert {a for name, a in axes.items() if name.startswith("user_")} == {REQUESTS_AXIS}
    assert {a for name, a in axes.items() if name.startswith("item_")} == {"candidates"}


def test_merge_refuses_a_request_with_more_than_one_user(rows: Feeds) -> None:
    user, item = request(rows, 0, slice(0, 5))
    two = {k: np.concatenate([v, v]) for k, v in user.items()}
    with pytest.raises(ValueError, match="batch 1"):
        merge([(two, item)])
    with pytest.raises(ValueError, match="at least one"):
        merge([])


def test_run_bound_on_cpu_equals_a_plain_run(
    rows: Feeds, mmoe: tuple[ort.InferenceSession, ort.InferenceSession]
) -> None:
    single, _ = mmoe
    user, item = request(rows, 3, slice(0, 50))
    names = [o.name for o in single.get_outputs()]
    bound = run_bound(single, {**user, **item}, names, "cpu")
    for g, w in zip(bound, single.run(names, {**user, **item}), strict=True):
        np.testing.assert_array_equal(g, w)


def runner(session: ort.InferenceSession) -> Callable[[Feeds], list[np.ndarray]]:
    names = [o.name for o in session.get_outputs()]
    return lambda feeds: run_bound(session, feeds, names, "cpu")


def test_batcher_merges_concurrent_requests_and_returns_each_its_own_rows(
    rows: Feeds, mmoe: tuple[ort.InferenceSession, ort.InferenceSession]
) -> None:
    single, batched = mmoe
    requests = [request(rows, 5 * r, slice(3 * r, 3 * r + 10 + r)) for r in range(6)]

    async def main() -> list[list[np.ndarray]]:
        with ThreadPoolExecutor(1) as pool:
            batcher = RequestBatcher(
                runner(batched), max_batch=4, max_delay_us=50_000, executor=pool
            )
            results = await asyncio.gather(*(batcher.predict(u, i) for u, i in requests))
            assert not batcher.running  # the worker ended with its queue; the next one restarts
            assert len((await batcher.predict(*requests[0]))[0]) == 10
            await batcher.close()
            # Six requests at once, at most four per batch: a batch of 4 and one of 2 (then 1).
            assert batcher.batch_sizes == {4: 1, 2: 1, 1: 1}
            return results

    for (user, item), got in zip(requests, asyncio.run(main()), strict=True):
        assert len(got[0]) == len(next(iter(item.values())))
        for g, w in zip(got, single.run(None, {**user, **item}), strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_batcher_without_delay_runs_a_lone_request_at_once(
    rows: Feeds, mmoe: tuple[ort.InferenceSession, ort.InferenceSession]
) -> None:
    _, batched = mmoe

    async def main() -> None:
        batcher = RequestBatcher(runner(batched), max_batch=8, max_delay_us=0)
        out = await asyncio.wait_for(batcher.predict(*request(rows, 0, slice(0, 4))), 5)
        assert [len(o) for o in out] == [4, 4, 4]
        assert batcher.batch_sizes == {1: 1}
        await batcher.close()

    asyncio.run(main())


def test_a_failing_run_fails_every_request_of_its_batch_and_the_batcher_goes_on(
    rows: Feeds, mmoe: tuple[ort.InferenceSession, ort.InferenceSession]
) -> None:
    _, batched = mmoe
    good = runner(batched)
    calls = {"n": 0}

    def flaky(feeds: Feeds) -> list[np.ndarray]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("device lost")
        return good(feeds)

    async def main() -> None:
        batcher = RequestBatcher(flaky, max_batch=2, max_delay_us=50_000)
        first = [batcher.predict(*request(rows, r, slice(0, 3))) for r in range(2)]
        outcome = await asyncio.gather(*first, return_exceptions=True)
        assert all(isinstance(o, RuntimeError) and "device lost" in str(o) for o in outcome)
        again = await batcher.predict(*request(rows, 0, slice(0, 3)))
        assert len(again[0]) == 3
        await batcher.close()

    asyncio.run(main())


def test_batcher_refuses_bad_limits() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        RequestBatcher(lambda f: [], max_batch=0, max_delay_us=0)
    with pytest.raises(ValueError, match="max_delay_us"):
        RequestBatcher(lambda f: [], max_batch=1, max_delay_us=-1)
