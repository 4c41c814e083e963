"""`ranker ab-report` on synthetic impression records and outcomes with a known truth."""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import redis

from cli.main import main
from ranker.experiments import ExperimentConfig
from tests.serving.conftest import AB_FILE
from training.ab.inputs import redis_lines
from training.ab.report import ab_report
from training.ab.stats import chi2_sf, ratio, relative_lift, srm_test

CONFIG = ExperimentConfig.parse(AB_FILE.read_bytes())  # layer `weights`: control | watch_heavy


def write_jsonl(path: Path, docs: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(d) + b"\n" for d in docs))
    return path


def record(request_id: str, user: int, items: list[int], variant: str | None = None) -> dict:
    """An impression record as the service writes it (scores and predictions left out)."""
    assignment = CONFIG.assign(user)
    layers = [{"layer": n, "bucket": b, "variant": v} for n, b, v in assignment.layers]
    if variant is not None:  # forced, to build a broken split
        layers[0]["variant"] = variant
    return {"request_id": request_id, "user_id": user, "ts": 0, "model": "ranker",
            "model_version": "v0001", "variant": f"weights={layers[0]['variant']}",
            "layers": layers, "item_ids": items}  # fmt: skip


def synthetic(
    tmp_path: Path, users: int, ctr_lift: float, seed: int = 0, forced: list[str] | None = None
) -> tuple[list[dict], list[dict]]:
    """One request of 10 items per user. CTR varies by user (Beta, mean 0.1) and is `1 + ctr_lift`
    times higher for watch_heavy; completion given a click is the same in both arms."""
    rng = np.random.default_rng(seed)
    records, outcomes = [], []
    p_user = rng.beta(2.0, 18.0, users)
    for u in range(users):
        rec = record(f"r{u}", u, list(range(u, u + 10)), forced[u] if forced else None)
        records.append(rec)
        p = p_user[u] * (1 + ctr_lift if rec["layers"][0]["variant"] == "watch_heavy" else 1.0)
        clicks = rng.random(10) < p
        duration = rng.uniform(10, 60, 10)
        completion = rng.beta(3.0, 3.0, 10)
        for k, item in enumerate(rec["item_ids"]):
            watch = float(clicks[k] * completion[k] * duration[k])
            outcomes.append({"request_id": f"r{u}", "item_id": item, "click": int(clicks[k]),
                             "watch_time": watch, "duration": float(duration[k]),
                             "variant": rec["variant"]})  # fmt: skip
    return records, outcomes


def run(tmp_path: Path, records: list[dict], outcomes: list[dict], **kw: Any) -> dict[str, Any]:
    imp = write_jsonl(tmp_path / "impressions.jsonl", records)
    out = write_jsonl(tmp_path / "outcomes.jsonl", outcomes)
    report, written = ab_report(out, tmp_path / "report", impressions=imp, **kw)
    assert all(path.stat().st_size > 0 for path in written.values())
    return report


def test_recovers_known_ctr_lift_on_20k_users(tmp_path: Path) -> None:
    records, outcomes = synthetic(tmp_path, 20_000, ctr_lift=0.10)
    report = run(tmp_path, records, outcomes, experiments=AB_FILE)
    assert report["layer"] == "weights" and report["control"] == "control"
    assert set(report["variants"]) == {"control", "watch_heavy"}
    ctr = report["lift"]["watch_heavy"]["ctr"]
    low, high = ctr["ci"]
    assert low <= 0.10 <= high and low > 0, ctr  # covers the truth and tells it from no effect
    assert abs(ctr["value"] - 0.10) < 0.04
    # Watch time per click is unchanged, so watch time per impression moves with CTR ...
    watch = report["lift"]["watch_heavy"]["watch_time_per_impression"]
    assert watch["ci"][0] <= 0.10 <= watch["ci"][1]
    # ... and completion per click does not move: its interval covers 0.
    per_click = report["lift"]["watch_heavy"]["completion_per_click"]
    assert per_click["ci"][0] <= 0.0 <= per_click["ci"][1]
    assert not report["srm"]["flagged"]
    assert report["join"]["matched"] == 200_000
    assert report["join"]["impressions_without_outcome"] == 0
    control = report["variants"]["control"]
    assert (
        control["requests"] == control["users"] and control["impressions"] == 10 * control["users"]
    )
    doc = json.loads((tmp_path / "report" / "report.json").read_text())
    assert doc["warnings"] == [] and math.isclose(
        doc["lift"]["watch_heavy"]["ctr"]["value"], ctr["value"]
    )
    assert "watch_heavy" in (tmp_path / "report" / "report.md").read_text()


def test_delta_method_interval_covers_truth_95_percent() -> None:
    """400 replicate experiments with user-level heterogeneity: coverage of the true lift."""
    rng = np.random.default_rng(1)
    covered = 0
    for _ in range(400):
        arms = []
        for factor in (1.0, 1.1):  # true CTR lift 10%: E[n p 1.1] / E[n p] with n independent of p
            n = rng.poisson(8, 1000) + 1
            p = rng.beta(1.0, 9.0, 1000) * factor
            arms.append(ratio(rng.binomial(n, p), n))
        low, high = relative_lift(arms[1], arms[0]).ci
        covered += low <= 0.10 <= high
    assert 0.92 <= covered / 400 <= 0.98, covered


def test_chi2_survival_function() -> None:
    assert chi2_sf(3.841458820694124, 1) == pytest.approx(0.05, rel=1e-9)
    assert chi2_sf(5.991464547107979, 2) == pytest.approx(0.05, rel=1e-9)
    assert chi2_sf(18.307038053275146, 10) == pytest.approx(0.05, rel=1e-9)
    for x in (0.01, 0.5, 3.0, 20.0, 60.0):  # dof 1 has a closed form
        assert chi2_sf(x, 1) == pytest.approx(math.erfc(math.sqrt(x / 2)), rel=1e-9)
        assert chi2_sf(x, 2) == pytest.approx(math.exp(-x / 2), rel=1e-9)
    assert chi2_sf(0.0, 3) == 1.0
    assert srm_test([10, 5], [1.0, 0.0]) == (math.inf, 0.0)  # users in an arm of share 0
    assert srm_test([10], [1.0]) == (0.0, 1.0)  # one arm: nothing to compare


def test_srm_flagged_on_55_45_split_of_configured_50_50(tmp_path: Path) -> None:
    forced = ["control"] * 1100 + ["watch_heavy"] * 900
    records, outcomes = synthetic(tmp_path, 2000, ctr_lift=0.0, forced=forced)
    report = run(tmp_path, records, outcomes, experiments=AB_FILE)
    srm = report["srm"]
    assert srm["users"] == {"control": 1100, "watch_heavy": 900}
    assert srm["expected_share"] == {"control": 0.5, "watch_heavy": 0.5}
    assert srm["flagged"] and srm["p_value"] == pytest.approx(math.erfc(math.sqrt(10)), rel=1e-9)
    assert "SAMPLE RATIO MISMATCH" in (tmp_path / "report" / "report.md").read_text()


def test_srm_not_flagged_on_a_fair_split(tmp_path: Path) -> None:
    records, outcomes = synthetic(tmp_path, 2000, ctr_lift=0.0)
    for experiments in (AB_FILE, None):  # configured 50/50, or equal split assumed
        report = run(tmp_path, records, outcomes, experiments=experiments)
        assert not report["srm"]["flagged"] and report["srm"]["p_value"] > 0.001


def test_unmatched_and_duplicate_rows_are_counted(tmp_path: Path) -> None:
    records, outcomes = synthetic(tmp_path, 300, ctr_lift=0.0)
    outcomes = outcomes[5:]  # 5 impressions of request r0 lose their outcome
    outcomes.append({**outcomes[0], "request_id": "nobody"})  # an outcome of no impression
    outcomes.append(dict(outcomes[0]))  # a duplicate outcome
    outcomes.append({**outcomes[1], "request_id": "r1", "variant": "weights=other"})
    records.append(dict(records[3]))  # the service logged a request twice
    report = run(tmp_path, records, outcomes)
    join = report["join"]
    assert join["impression_rows"] == 3000 and join["outcome_rows"] == 2998
    assert join["impressions_without_outcome"] == 5
    arm_of_r0 = records[0]["layers"][0]["variant"]
    assert join["impressions_without_outcome_by_variant"] == {arm_of_r0: 5}
    assert join["outcomes_without_impression"] == 1
    assert join["duplicate_outcomes"] == 2 and join["duplicate_records"] == 1
    assert join["matched"] == 2995
    assert sum(v["impressions"] for v in report["variants"].values()) == 2995
    text = (tmp_path / "report" / "report.md").read_text()
    assert "5 impression rows" in text and "1 outcome rows match no impression" in text


@pytest.mark.parametrize(
    ("which", "line", "expected"),
    [
        ("outcomes", b'{"request_id": "r0", "item_id": 1, "click": 1,', "line 3: not valid JSON"),
        (
            "outcomes",
            b'{"request_id": "r0", "item_id": 1, "click": 2, "watch_time": 1, "duration": 5}',
            "line 3: field 'click' must be 0 or 1",
        ),
        (
            "outcomes",
            b'{"request_id": "r0", "item_id": 1, "click": 0, "watch_time": 0, "duration": 0}',
            "line 3: field 'duration' must be a number > 0",
        ),
        ("impressions", b"[1, 2]", "line 3: expected a JSON object"),
        (
            "impressions",
            b'{"request_id": "x", "user_id": 1, "item_ids": 5}',
            "line 3: field 'item_ids'",
        ),
    ],
)
def test_bad_line_names_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], which: str, line: bytes, expected: str
) -> None:
    records, outcomes = synthetic(tmp_path, 5, ctr_lift=0.0)
    files = {
        "impressions": write_jsonl(tmp_path / "impressions.jsonl", records),
        "outcomes": write_jsonl(tmp_path / "outcomes.jsonl", outcomes),
    }
    lines = files[which].read_bytes().splitlines()
    files[which].write_bytes(b"\n".join([*lines[:2], line, *lines[2:]]) + b"\n")
    code = main(["ab-report", "--impressions", str(files["impressions"]), "--outcomes",
                 str(files["outcomes"]), "--out", str(tmp_path / "r")])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert f"{files[which]}: {expected}" in err, err


def test_unknown_control_and_missing_file_are_clear_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records, outcomes = synthetic(tmp_path, 50, ctr_lift=0.0)
    imp = write_jsonl(tmp_path / "impressions.jsonl", records)
    out = write_jsonl(tmp_path / "outcomes.jsonl", outcomes)
    args = ["ab-report", "--impressions", str(imp), "--outcomes", str(out), "--out", str(tmp_path)]
    assert main([*args, "--control", "nope"]) == 2
    assert "control 'nope' is not a variant" in capsys.readouterr().err
    assert main([*args, "--layer", "models", "--experiments", str(AB_FILE)]) == 2
    assert "no layer 'models'" in capsys.readouterr().err
    assert main([*args[:2], str(tmp_path / "missing.jsonl"), *args[3:]]) == 2
    assert "missing.jsonl: no such file" in capsys.readouterr().err


def test_reads_impressions_from_a_redis_stream(tmp_path: Path) -> None:
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0", socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis at 127.0.0.1:6379 is not answering ({exc}); this test needs it")
    stream = f"ranker-test-{uuid.uuid4().hex[:12]}:impressions"
    records, outcomes = synthetic(tmp_path, 500, ctr_lift=0.0)
    try:
        pipe = client.pipeline(transaction=False)
        for r in records:
            pipe.xadd(stream, {"record": orjson.dumps(r)})
        pipe.execute()
        out = write_jsonl(tmp_path / "outcomes.jsonl", outcomes)
        paged = redis_lines("redis://127.0.0.1:6379/0", stream, page=64)
        from_redis, _ = ab_report(
            out, tmp_path / "a", redis_url="redis://127.0.0.1:6379/0", stream=stream
        )
        from_file = run(tmp_path, records, outcomes)
    finally:
        client.delete(stream)
        client.close()
    assert [doc for _, doc in paged] == records
    assert from_redis["join"] == from_file["join"] and from_redis["join"]["matched"] == 5000
    assert from_redis["variants"] == from_file["variants"]
