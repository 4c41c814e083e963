"""Write an A/B report document (`training.ab.report.analyze`) as report.json, report.md, lift.png."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import orjson


def warnings(report: dict[str, Any]) -> list[str]:
    """What a reader must know before trusting the numbers."""
    out = []
    srm = report["srm"]
    if srm["flagged"]:
        out.append(
            f"SAMPLE RATIO MISMATCH: users per variant {srm['users']} vs shares "
            f"{srm['expected_share']} ({srm['split']}), chi-square p = {srm['p_value']:.2g} < "
            f"{srm['alpha']:g}; the assignment or the logging is broken, do not trust the lifts"
        )
    j = report["join"]
    if j["impressions_without_outcome"]:
        share = j["impressions_without_outcome"] / max(j["impression_rows"], 1)
        out.append(
            f"{j['impressions_without_outcome']} impression rows ({share:.1%}) have no outcome "
            f"and are left out of the metrics: {j['impressions_without_outcome_by_variant']}"
        )
    notes = {
        "outcomes_without_impression": "outcome rows match no impression and are left out",
        "duplicate_records": "impression records repeat a request_id (the first is kept)",
        "duplicate_outcomes": "outcome rows repeat a (request_id, item_id) (the first is kept)",
        "records_without_layer": f"records do not carry layer {report['layer']!r} (left out)",
        "variant_label_mismatches": "outcome rows name another variant than their impression",
    }
    out += [f"{j[key]} {text}" for key, text in notes.items() if j[key]]
    if report["users_in_several_variants"]:
        out.append(
            f"{report['users_in_several_variants']} users appear in more than one variant "
            "(did the salt or the split change during the test?)"
        )
    return out


def _pct(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value * 100:+.2f}%"


def _num(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.4g}"


def _metrics(report: dict[str, Any]) -> list[str]:
    return list(next(iter(report["variants"].values()))["metrics"])


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown, one section after another."""
    found = warnings(report)
    lines = [
        *_header(report),
        *(["## Warnings", "", *(f"- {w}" for w in found), ""] if found else []),
        *_sample_ratio(report["srm"]),
        *_variants(report["variants"]),
        *_metric_table(report),
        *_lift_table(report),
        *_join(report),
    ]
    return "\n".join(lines)


def _header(report: dict[str, Any]) -> list[str]:
    src = report["sources"]
    return [
        f"# A/B report: layer `{report['layer']}`, control `{report['control']}`",
        "",
        f"Impressions: `{src['impressions']}`; outcomes: `{src['outcomes']}`; "
        f"split: {report['srm']['split']}"
        + (f" (`{src['experiments']}`)" if src["experiments"] else "")
        + ".",
        "",
    ]


def _sample_ratio(srm: dict[str, Any]) -> list[str]:
    total = max(sum(srm["users"].values()), 1)
    verdict = "**mismatch**" if srm["flagged"] else "ok"
    return [
        "## Sample ratio",
        "",
        "| variant | users | observed share | expected share |",
        "| --- | ---: | ---: | ---: |",
        *(
            f"| {arm} | {users} | {users / total:.4f} | {srm['expected_share'][arm]:.4f} |"
            for arm, users in srm["users"].items()
        ),
        "",
        f"Chi-square {srm['chi2']:.3g}, p = {srm['p_value']:.3g}: {verdict}.",
        "",
    ]


def _variants(variants: dict[str, Any]) -> list[str]:
    return [
        "## Variants",
        "",
        "| variant | users | requests | impressions | clicks |",
        "| --- | ---: | ---: | ---: | ---: |",
        *(
            f"| {arm} | {d['users']} | {d['requests']:.0f} | {d['impressions']:.0f} | "
            f"{d['clicks']:.0f} |"
            for arm, d in variants.items()
        ),
        "",
    ]


def _metric_table(report: dict[str, Any]) -> list[str]:
    variants = report["variants"]
    lines = [
        "## Metrics (95% CI)",
        "",
        "| metric | " + " | ".join(variants) + " |",
        "| --- |" + " ---: |" * len(variants),
    ]
    for metric in _metrics(report):
        cells = []
        for doc in variants.values():
            m = doc["metrics"][metric]
            cells.append(f"{_num(m['value'])} [{_num(m['ci'][0])}, {_num(m['ci'][1])}]")
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return lines


def _lift_table(report: dict[str, Any]) -> list[str]:
    if not report["lift"]:
        return []
    arms = list(report["lift"])
    lines = [
        "",
        f"## Relative lift vs `{report['control']}` (95% CI, p-value)",
        "",
        "| metric | " + " | ".join(arms) + " |",
        "| --- |" + " ---: |" * len(arms),
    ]
    for metric in _metrics(report):
        cells = []
        for arm in arms:
            e = report["lift"][arm][metric]
            cells.append(
                f"{_pct(e['value'])} [{_pct(e['ci'][0])}, {_pct(e['ci'][1])}] "
                f"p={_num(e['p_value'])}"
            )
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return lines


def _join(report: dict[str, Any]) -> list[str]:
    return [
        "",
        "## Join on (request_id, item_id)",
        "",
        *(f"- {key.replace('_', ' ')}: {value}" for key, value in report["join"].items()),
        "",
        f"Method: {report['method']}.",
        "",
    ]


def plot_lift(report: dict[str, Any], path: Path) -> Path:
    """Relative lift per metric with 95% CI bars, one colour per treatment."""
    metrics = _metrics(report)
    fig, ax = plt.subplots(figsize=(7.5, 0.6 * len(metrics) + 1.6))
    arms = list(report["lift"])
    for k, arm in enumerate(arms):
        offset = (k - (len(arms) - 1) / 2) * 0.25
        values = [report["lift"][arm][m]["value"] * 100 for m in metrics]
        low = [
            v - report["lift"][arm][m]["ci"][0] * 100 for v, m in zip(values, metrics, strict=True)
        ]
        high = [
            report["lift"][arm][m]["ci"][1] * 100 - v for v, m in zip(values, metrics, strict=True)
        ]
        ys = [i + offset for i in range(len(metrics))]
        ax.errorbar(values, ys, xerr=[low, high], fmt="o", capsize=4, label=arm)
    if not arms:
        ax.text(0.5, 0.5, "no treatment variant", ha="center", transform=ax.transAxes)
    ax.axvline(0.0, color="grey", lw=1)
    ax.set_yticks(range(len(metrics)), metrics)
    ax.invert_yaxis()
    ax.set_xlabel(f"relative lift vs {report['control']} (%), 95% CI")
    ax.set_title(f"A/B layer {report['layer']}" + ("  [SRM!]" if report["srm"]["flagged"] else ""))
    if arms:
        ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _atomic(path: Path, content: bytes) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(content)
    os.replace(tmp, path)
    return path


def write_report(report: dict[str, Any], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    report = {**report, "warnings": warnings(report)}
    return {
        # orjson writes NaN and infinity as null: undefined values, not numbers.
        "json": _atomic(out / "report.json", orjson.dumps(report, option=orjson.OPT_INDENT_2)),
        "markdown": _atomic(out / "report.md", markdown(report).encode()),
        "png": plot_lift(report, out / "lift.png"),
    }
