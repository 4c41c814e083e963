"""Statistics of an online A/B test: ratio metrics with delta-method confidence intervals clustered
by user, relative lift, and the sample-ratio-mismatch (SRM) chi-square test. numpy + math only.

Users are the randomised unit, so one user's impressions are correlated and an impression-level
binomial interval would be too narrow. Every metric is a ratio of per-user sums, R = Σy / Σx
(CTR = clicks / impressions, ...), and its variance over n users is, by the delta method
(Deng, Knoblich & Lu 2018, "Applying the Delta Method in Metric Analytics"):

    Var(R) ≈ (s_yy − 2 R s_xy + R² s_xx) / (n x̄²)

The relative lift of treatment over control, L = R_t / R_c − 1 (independent arms), has
Var(L) ≈ (Var R_t + (R_t / R_c)² Var R_c) / R_c². Intervals are normal: ±1.96 se.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054  # two-sided 95% normal quantile
# SRM is flagged below this p-value: strict, because the check runs on every report and a real
# mismatch (a broken split or logging) gives p-values far smaller.
SRM_ALPHA = 1e-3


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its standard error, 95% interval and (for lifts) a p-value vs 0."""

    value: float
    se: float

    @property
    def ci(self) -> tuple[float, float]:
        return self.value - Z95 * self.se, self.value + Z95 * self.se

    @property
    def p_value(self) -> float:
        """Two-sided normal p-value of value == 0."""
        if not self.se > 0:
            return float("nan")
        return math.erfc(abs(self.value / self.se) / math.sqrt(2.0))


def ratio(y: np.ndarray, x: np.ndarray) -> Estimate:
    """Σy / Σx over per-user sums y, x with its delta-method standard error."""
    y, x = np.asarray(y, dtype=np.float64), np.asarray(x, dtype=np.float64)
    n = len(x)
    if n == 0 or x.sum() == 0:
        return Estimate(float("nan"), float("nan"))
    r = y.sum() / x.sum()
    if n < 2:
        return Estimate(float(r), float("nan"))
    cov = np.cov(np.stack([y, x]))  # ddof=1: [[s_yy, s_xy], [s_xy, s_xx]]
    var = (cov[0, 0] - 2 * r * cov[0, 1] + r * r * cov[1, 1]) / (n * x.mean() ** 2)
    return Estimate(float(r), float(math.sqrt(max(var, 0.0))))


def relative_lift(treatment: Estimate, control: Estimate) -> Estimate:
    """R_t / R_c − 1 with its delta-method standard error (arms independent)."""
    if not control.value:  # 0 or NaN: no relative change is defined
        return Estimate(float("nan"), float("nan"))
    q = treatment.value / control.value
    se = math.sqrt(treatment.se**2 + q * q * control.se**2) / abs(control.value)
    return Estimate(q - 1.0, se)


def chi2_sf(x: float, dof: int) -> float:
    """P(X > x) for X ~ chi-square(dof): the regularised upper incomplete gamma Q(dof/2, x/2).

    Series for the lower function below a + 1, Lentz's continued fraction above (Numerical
    Recipes 6.2); both converge in well under the 500 iterations allowed.
    """
    if dof < 1:
        raise ValueError(f"dof must be >= 1, got {dof}")
    a, x = dof / 2.0, x / 2.0
    if x <= 0:
        return 1.0
    if math.isinf(x):
        return 0.0
    log_front = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1:
        term = total = 1.0 / a
        for k in range(1, 500):
            term *= x / (a + k)
            total += term
            if term < total * 1e-16:
                break
        return max(0.0, 1.0 - total * math.exp(log_front))
    tiny = 1e-300
    b = x + 1.0 - a
    c, d = 1.0 / tiny, 1.0 / b
    h = d
    for i in range(1, 500):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        h *= d * c
        if abs(d * c - 1.0) < 1e-16:
            break
    return min(1.0, math.exp(log_front) * h)


def srm_test(observed: Sequence[int], shares: Sequence[float]) -> tuple[float, float]:
    """Pearson chi-square statistic and p-value of counts against expected shares (renormalised).

    An arm with an expected share of 0 that has users makes the split impossible: p = 0.
    """
    counts = np.asarray(observed, dtype=np.float64)
    p = np.asarray(shares, dtype=np.float64)
    if len(counts) < 2 or counts.sum() == 0:
        return 0.0, 1.0
    expected = counts.sum() * p / p.sum()
    if ((expected == 0) & (counts > 0)).any():
        return float("inf"), 0.0
    keep = expected > 0
    stat = float((((counts - expected) ** 2)[keep] / expected[keep]).sum())
    return stat, chi2_sf(stat, int(keep.sum()) - 1)
