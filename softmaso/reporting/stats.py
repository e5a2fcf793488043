"""Comparing two sets of runs: the statistics every gain in a table carries.

For runs ``a`` (a setting) against runs ``b`` (its baseline), accuracies in points:

- ``gain``: mean(a) - mean(b);
- ``ci``: the 95% Welch t interval of the gain, gain -+ t(0.975, df) * se, with
  se = sqrt(s_a^2/n_a + s_b^2/n_b) (sample variances, ddof=1) and df by Welch-Satterthwaite;
- ``p``: Welch's two-sided t-test (scipy.stats.ttest_ind, equal_var=False);
- ``p_holm``: p adjusted by Holm's step-down method over the comparisons of one table
  (family-wise error 5% when read against 0.05);
- ``detectable``: the smallest true gain that this n and this spread would detect with 80%
  power at two-sided alpha = 0.05, from the noncentral t distribution with the same se and df.
  A gain below it that "is not significant" is not evidence of no effect.

All need at least two runs a side; with fewer every statistic but ``gain`` is None.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

ALPHA = 0.05  # two-sided test level and 1 - the interval's coverage
POWER = 0.80  # the power at which the detectable effect is stated


@dataclass(frozen=True)
class Comparison:
    """One gain and its uncertainty, in accuracy points; see the module docstring."""

    gain: float
    ci_low: float | None = None
    ci_high: float | None = None
    p: float | None = None
    detectable: float | None = None
    p_holm: float | None = None


def compare(a: Sequence[float], b: Sequence[float]) -> Comparison | None:
    """The comparison of runs `a` with baseline runs `b`; None when a side is empty."""
    if not a or not b:
        return None
    gain = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2:
        return Comparison(gain)
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0.0:  # identical runs on both sides: nothing to estimate a spread from
        return Comparison(gain, gain, gain, None if gain == 0 else 0.0, 0.0)
    from scipy import stats

    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    t_crit = float(stats.t.ppf(1 - ALPHA / 2, df))
    p = float(2 * stats.t.sf(abs(gain) / se, df))
    return Comparison(
        gain, gain - t_crit * se, gain + t_crit * se, p, detectable_effect(se, df, t_crit)
    )


def detectable_effect(se: float, df: float, t_crit: float | None = None) -> float:
    """The true gain a two-sided level-ALPHA t-test with this se and df detects with
    probability POWER: the delta where P(|T| > t_crit) = POWER, T ~ noncentral t(df, delta/se)."""
    from scipy import optimize, stats

    if t_crit is None:
        t_crit = float(stats.t.ppf(1 - ALPHA / 2, df))

    def power_gap(nc: float) -> float:
        lower = float(stats.nct.cdf(-t_crit, df, nc))  # tiny for nc > 0, and NaN in scipy far out
        power = float(stats.nct.sf(t_crit, df, nc)) + (0.0 if math.isnan(lower) else lower)
        return power - POWER

    high = t_crit + 1.0  # the power there is above one half; widen until it passes POWER
    while power_gap(high) < 0:
        high *= 2
    return optimize.brentq(power_gap, 0.0, high) * se


def holm(ps: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of the p-values that are not None (None stays None):
    the i-th smallest of m becomes max over j <= i of min(1, (m - j + 1) p_(j))."""
    known = sorted((p, i) for i, p in enumerate(ps) if p is not None)
    out: list[float | None] = [None] * len(ps)
    running = 0.0
    for rank, (p, i) in enumerate(known):
        running = max(running, min(1.0, (len(known) - rank) * p))
        out[i] = running
    return out


def welch_p(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided p-value of Welch's t-test; None when a side has fewer than 2 runs."""
    c = compare(a, b)
    return None if c is None else c.p
