"""`ranker ab-report`: per-variant metrics of an online A/B test, from impression records + outcomes.

Impression records (one per served request, written by the service to JSONL or a Redis stream:
`request_id`, `user_id`, `variant`, `layers` [{layer, bucket, variant}], `item_ids` best first) are
expanded to one row per served item and joined with outcome rows (`request_id`, `item_id`, `click`,
`watch_time`, `duration`; written by `ranker simulate-traffic` or any other source) on
(request_id, item_id); ids compare as strings, as in the service (7 and "7" are one item).
The variant of a row is the record's variant in the analysed layer ("-": in no variant of it).

Nothing is dropped silently: impressions without an outcome, outcomes without an impression,
duplicate keys (the first is kept) and variant labels that disagree are counted in the report.
Reading and validation are in `training.ab.inputs`; the statistics (delta method clustered by
user, SRM chi-square) in `training.ab.stats`; report.md, report.json and lift.png in
`training.ab.render`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ranker.experiments import ExperimentConfig, ExperimentError
from training.ab.inputs import (
    NO_VARIANT,
    Impressions,
    Outcomes,
    expand,
    jsonl_lines,
    read_outcomes,
    redis_lines,
)
from training.ab.render import write_report
from training.ab.stats import SRM_ALPHA, Estimate, ratio, relative_lift, srm_test
from training.errors import DataError

# name -> (numerator, denominator) of per-user sums; every metric is a ratio of two of them.
METRICS: dict[str, tuple[str, str]] = {
    "ctr": ("clicks", "impressions"),
    "watch_time_per_impression": ("watch_time", "impressions"),
    "watch_time_per_request": ("watch_time", "requests"),
    "completion": ("completion", "impressions"),  # mean min(watch/duration, 1), 0 if no click
    "completion_per_click": ("completion", "clicks"),
}


@dataclass
class Joined:
    """Matched rows: impression arm and user, outcome labels."""

    arm: np.ndarray
    user: np.ndarray
    request: np.ndarray
    click: np.ndarray
    watch_time: np.ndarray
    completion: np.ndarray


def join(imp: Impressions, out: Outcomes) -> tuple[Joined, dict[str, Any]]:
    """Inner join on (request_id, item_id) and the counts of everything that did not match."""
    index: dict[tuple[str, str], int] = {}
    for i, key in enumerate(out.keys):
        index.setdefault(key, i)
    rows = np.array([index.get(key, -1) for key in imp.keys], dtype=np.int64)
    found = rows >= 0
    rows = rows[found]
    arm = np.array(imp.arm, dtype=object)
    missing = Counter(arm[~found].tolist())
    mismatch = sum(
        1
        for i, j in zip(np.flatnonzero(found).tolist(), rows.tolist(), strict=True)
        if out.label[j] is not None and out.label[j] != imp.label[i]
    )
    stats = {
        "impression_rows": len(imp.keys),
        "outcome_rows": len(out.keys),
        "matched": int(found.sum()),
        "impressions_without_outcome": int((~found).sum()),
        "impressions_without_outcome_by_variant": dict(sorted(missing.items())),
        "outcomes_without_impression": len(index) - int(found.sum()),
        "duplicate_outcomes": len(out.keys) - len(index),
        "duplicate_records": imp.duplicates,
        "records_without_layer": imp.without_layer,
        "variant_label_mismatches": mismatch,
    }
    watch = out.watch_time[rows]
    joined = Joined(
        arm=arm[found],
        user=np.array(imp.user, dtype=object)[found],
        request=np.array([k[0] for k in imp.keys], dtype=object)[found],
        click=out.click[rows],
        watch_time=watch,
        completion=np.minimum(watch / out.duration[rows], 1.0),
    )
    return joined, stats


def user_sums(joined: Joined, arm: str) -> dict[str, np.ndarray]:
    """Per-user sums of one arm: impressions, requests, clicks, watch_time, completion."""
    mask = joined.arm == arm
    users, u = np.unique(joined.user[mask].astype(str), return_inverse=True)
    _, first_row = np.unique(joined.request[mask].astype(str), return_index=True)
    n = len(users)
    return {
        "impressions": np.bincount(u, minlength=n).astype(np.float64),
        "requests": np.bincount(u[first_row], minlength=n).astype(np.float64),
        **{k: np.bincount(u, getattr(joined, k)[mask], n) for k in ("watch_time", "completion")},
        "clicks": np.bincount(u, joined.click[mask], n),
    }


def configured_shares(path: Path, layer: str | None) -> tuple[str | None, dict[str, float]]:
    """The layer (the only one when None) and each arm's share of users in an experiment config."""
    try:
        config = ExperimentConfig.parse(Path(path).read_bytes(), str(path))
    except (OSError, ExperimentError) as exc:
        raise DataError(str(path), str(exc)) from None
    names = [entry.name for entry in config.layers]
    if layer is None and len(names) == 1:
        layer = names[0]
    chosen = next((entry for entry in config.layers if entry.name == layer), None)
    if chosen is None:
        raise DataError(str(path), f"no layer {layer!r} to analyse; layers: {names} (--layer)")
    shares = {v.name: (v.end - v.start) / chosen.buckets for v in chosen.variants}
    rest = 1.0 - sum(shares.values())
    if rest > 1e-12:
        shares[NO_VARIANT] = rest
    return layer, shares


def _estimate(e: Estimate, lift: bool = False) -> dict[str, Any]:
    doc = {"value": e.value, "se": e.se, "ci": list(e.ci)}
    return {**doc, "p_value": e.p_value} if lift else doc


def analyze(
    imp: Impressions,
    joined: Joined,
    join_stats: dict[str, Any],
    control: str | None,
    shares: dict[str, float] | None,
) -> dict[str, Any]:
    """The report document (JSON-ready, NaN where undefined): variants, lifts, SRM, join counts."""
    observed = list(imp.users_by_arm)
    arms = list(shares or {}) + sorted(a for a in observed if a not in (shares or {}))
    if shares is None:
        arms = sorted(observed)
    control = control or ("control" if "control" in arms else arms[0])
    if control not in arms:
        raise ValueError(f"control {control!r} is not a variant of the layer; variants: {arms}")
    arms.remove(control)
    arms.insert(0, control)
    expected = shares if shares is not None else {a: 1.0 / len(arms) for a in arms}
    chi2, p = srm_test(
        [imp.users_by_arm.get(a, 0) for a in arms], [expected.get(a, 0.0) for a in arms]
    )
    variants, estimates = {}, {}
    for arm in arms:
        sums = user_sums(joined, arm)
        estimates[arm] = {m: ratio(sums[y], sums[x]) for m, (y, x) in METRICS.items()}
        variants[arm] = {
            "users": len(sums["impressions"]),
            **{k: float(sums[k].sum()) for k in ("requests", "impressions", "clicks")},
            "metrics": {m: _estimate(e) for m, e in estimates[arm].items()},
        }
    lift = {
        arm: {
            m: _estimate(relative_lift(estimates[arm][m], estimates[control][m]), True)
            for m in METRICS
        }
        for arm in arms[1:]
    }
    srm = {
        "users": {a: imp.users_by_arm.get(a, 0) for a in arms},
        "expected_share": {a: expected.get(a, 0.0) for a in arms},
        "split": "experiment config" if shares is not None else "equal split assumed",
        "chi2": chi2,
        "p_value": p,
        "alpha": SRM_ALPHA,
        "flagged": p < SRM_ALPHA,
    }
    return {
        "control": control,
        "variants": variants,
        "lift": lift,
        "srm": srm,
        "join": join_stats,
        "users_in_several_variants": imp.users_in_several_arms,
        "method": (
            "ratio metrics of per-user sums; 95% normal intervals by the delta method, clustered "
            "by user (the randomised unit); relative lift = treatment / control - 1 with a "
            "delta-method interval; SRM: Pearson chi-square of users per variant vs the split"
        ),
    }


def ab_report(
    outcomes: Path,
    out: Path,
    *,
    impressions: Path | None = None,
    redis_url: str | None = None,
    stream: str = "ranker:impressions",
    control: str | None = None,
    layer: str | None = None,
    experiments: Path | None = None,
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Read, join, analyse and write report.md, report.json and lift.png into `out`."""
    if (impressions is None) == (redis_url is None):
        raise ValueError("give exactly one impression source: a JSONL file or a Redis URL")
    shares = None
    if experiments is not None:
        layer, shares = configured_shares(experiments, layer)
    if impressions is not None:
        source, lines = str(impressions), jsonl_lines(Path(impressions))
    else:
        source, lines = f"redis stream {stream}", redis_lines(str(redis_url), stream)
    layer, imp = expand(source, lines, layer)
    joined, stats = join(imp, read_outcomes(Path(outcomes)))
    report = {
        "layer": layer,
        "sources": {
            "impressions": source,
            "outcomes": str(outcomes),
            "experiments": None if experiments is None else str(experiments),
        },
        **analyze(imp, joined, stats, control, shares),
    }
    return report, write_report(report, Path(out))
