"""Tables and curves of the self-aux regimes experiment (docs/results.md) from each run's metrics.json.

Run after `ranker compare` with configs/aux_regimes_small.yaml and configs/aux_regimes_full.yaml:
    python benchmarks/aux_regimes_report.py docs/img/aux_regimes_curves.png
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

ROOT = Path("out/aux_regimes")
REGIMES = {"small": "(a) 1/4 data, 16 epochs", "full": "(b) full data, 12 epochs"}
METRICS = [("click", "auc"), ("watch_time", "rmse"), ("completion", "rmse")]


def load(regime):
    runs = {}
    for p in sorted((ROOT / regime / "runs").glob("*/metrics.json")):
        _, bal, aux, seed = p.parent.name.split("-")
        runs[(bal, aux, int(seed[1:]))] = json.loads(p.read_text())
    return runs


def ms(xs, fmt):
    return f"{np.mean(xs):{fmt}} ± {np.std(xs, ddof=1) if len(xs) > 1 else 0:{fmt}}"


def verdict(diffs, better_low, sds):
    """Fixed beforehand: an effect only if every seed's paired difference has the same sign and
    the mean difference exceeds the larger seed std of the two arms."""
    d = np.asarray(diffs)
    if len(d) < 2 or not (np.all(d > 0) or np.all(d < 0)) or abs(d.mean()) <= max(sds):
        return "none"
    return "helps" if (d.mean() < 0) == better_low else "hurts"


def main() -> None:
    lines = [
        "| regime | balancer | aux | seeds | click AUC | watch RMSE (s) | completion RMSE | best epoch per seed | valid click AUC, best - last epoch | train - valid click loss, last epoch | s/run per seed |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    dlines = [
        "| regime | balancer | Δ click AUC | Δ watch RMSE (s) | Δ completion RMSE | verdict (click / watch / completion) |",
        "|---|---|---|---|---|---|",
    ]
    curves = {}
    for regime, label in REGIMES.items():
        runs = load(regime)
        for bal in ("ew", "emtl"):
            vals = {}
            for aux in ("none", "bottleneck"):
                seeds = sorted(s for (b, a, s) in runs if b == bal and a == aux)
                if not seeds:
                    continue
                rs = [runs[(bal, aux, s)] for s in seeds]
                vals[aux] = {s: r for s, r in zip(seeds, rs, strict=True)}
                cells = [ms([r["test"][t][m] for r in rs], ".4f") for t, m in METRICS]
                best = ", ".join(str(r["best_epoch"]) for r in rs)
                secs = ", ".join(f"{r['seconds']:.0f}" for r in rs)
                drop = [
                    max(h["valid"]["click"]["auc"] for h in r["history"])
                    - r["history"][-1]["valid"]["click"]["auc"]
                    for r in rs
                ]
                gap = [
                    r["history"][-1]["train_loss"]["click"]
                    - r["history"][-1]["valid"]["click"]["logloss"]
                    for r in rs
                ]
                lines.append(
                    f"| {label} | {bal} | {aux} | {len(rs)} | "
                    + " | ".join(cells)
                    + f" | {best} | {ms(drop, '.4f')} | {ms(gap, '.3f')} | {secs} |"
                )
                curves[(regime, bal, aux)] = (
                    [[h["valid"]["click"]["auc"] for h in r["history"]] for r in rs],
                    [[h["valid"]["watch_time"]["rmse"] for h in r["history"]] for r in rs],
                )
            if len(vals) == 2:
                common = sorted(set(vals["none"]) & set(vals["bottleneck"]))
                cells, verdicts = [], []
                for t, m in METRICS:
                    a = [vals["bottleneck"][s]["test"][t][m] for s in common]
                    b = [vals["none"][s]["test"][t][m] for s in common]
                    d = np.subtract(a, b)
                    sds = [np.std(a, ddof=1), np.std(b, ddof=1)] if len(common) > 1 else [0, 0]
                    cells.append(f"{d.mean():+.4f} ({', '.join(f'{x:+.4f}' for x in d)})")
                    verdicts.append(verdict(d, m == "rmse", sds))
                dlines.append(
                    f"| {label} | {bal} | " + " | ".join(cells) + f" | {' / '.join(verdicts)} |"
                )

    print("\n".join(lines))
    print()
    print("\n".join(dlines))

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    colors = {"ew": "tab:blue", "emtl": "tab:red"}
    for row, regime in enumerate(REGIMES):
        for col, (idx, name) in enumerate([(0, "valid click AUC"), (1, "valid watch RMSE (s)")]):
            ax = axes[row, col]
            for (r, bal, aux), cv in curves.items():
                if r != regime:
                    continue
                arr = np.asarray(cv[idx])
                x = np.arange(1, arr.shape[1] + 1)
                ax.errorbar(
                    x,
                    arr.mean(0),
                    yerr=arr.std(0, ddof=1) if len(arr) > 1 else None,
                    color=colors[bal],
                    ls="-" if aux == "none" else "--",
                    capsize=2,
                    label=f"{bal}, aux {aux}",
                )
            ax.set_title(f"{REGIMES[regime]}: {name}")
            ax.set_xlabel("epoch")
            if idx == 0:
                ax.set_ylim(0.64, None)
            else:
                ax.set_ylim(None, 19.6)
            ax.legend(fontsize=8)
    fig.tight_layout()
    out = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "curves.png")
    fig.savefig(out, dpi=110)
    print("wrote", out)


if __name__ == "__main__":
    main()
