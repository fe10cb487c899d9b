"""Paired comparisons: the difference, its confidence interval, its test, and its power.

A comparison of two conditions pairs their runs by replicate (collect.RunRecord.replicate:
the same tickets, θ_0, head and target batches), so the unit of analysis is the
per-replicate difference d = a - b. With n pairs, mean d̄ and sample standard
deviation s (ddof=1):

  95% CI     d̄ ± t(0.975, n-1) · s / √n
  p          the two-sided paired t-test (scipy.stats.ttest_rel)
  MDE        the smallest true mean difference that a two-sided paired t-test at
             α = 0.05 detects with 80% power when the differences have standard
             deviation s: δ = λ · s / √n, where λ solves power(λ) = 0.8 for the
             noncentral t distribution with n-1 degrees of freedom and
             noncentrality λ (its power integrated over the chi-square of the
             variance, which stays accurate at 1 degree of freedom).

The MDE is computed from the observed s, so it is itself an estimate; it says
what a study of this size and noise could have seen, not what the effect is.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
from scipy import integrate, optimize, stats

ALPHA = 0.05
POWER = 0.8


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """a - b over the replicates both have."""

    n: int
    mean: float  # NaN when n = 0
    sd: float    # NaN when n < 2
    ci: tuple    # (low, high) of the 95% interval; NaN when n < 2
    t: float
    p: float     # NaN when n < 2 or the differences are constant
    mde: float   # the effect detectable at 80% power; NaN when n < 2
    pairs: tuple  # the replicates used, sorted


def paired_difference(a_by_key, b_by_key, alpha=ALPHA, power=POWER):
    """The PairedDifference of {replicate: value} `a` minus `b`."""
    keys = tuple(sorted(set(a_by_key) & set(b_by_key)))
    d = np.array([a_by_key[k] - b_by_key[k] for k in keys], np.float64)
    n = len(d)
    nan = math.nan
    if n == 0:
        return PairedDifference(0, nan, nan, (nan, nan), nan, nan, nan, keys)
    mean = float(d.mean())
    if n < 2:
        return PairedDifference(1, mean, nan, (nan, nan), nan, nan, nan, keys)
    sd = float(d.std(ddof=1))
    half = stats.t.ppf(1 - alpha / 2, n - 1) * sd / math.sqrt(n)
    with warnings.catch_warnings():  # constant differences: scipy warns, gives NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_1samp(d, 0.0)
    return PairedDifference(n, mean, sd, (mean - half, mean + half), float(result.statistic),
                            float(result.pvalue), minimum_detectable_effect(sd, n, alpha, power),
                            keys)


def _power(noncentrality, df, critical):
    """P(|T| > critical) for T noncentral t(df, noncentrality)."""
    def integrand(v):
        scale = critical * math.sqrt(v / df)
        return (stats.norm.cdf(-scale - noncentrality)
                + stats.norm.sf(scale - noncentrality)) * stats.chi2.pdf(v, df)

    return integrate.quad(integrand, 0, np.inf, limit=200)[0]


def minimum_detectable_effect(sd, n, alpha=ALPHA, power=POWER):
    """The mean difference a two-sided paired t-test of n pairs with differences of
    standard deviation `sd` detects with probability `power` at level `alpha`."""
    if n < 2 or not math.isfinite(sd):
        return math.nan
    df = n - 1
    critical = stats.t.ppf(1 - alpha / 2, df)
    high = 1.0
    while _power(high, df, critical) < power:
        high *= 2
    noncentrality = optimize.brentq(lambda x: _power(x, df, critical) - power, 0.0, high,
                                    xtol=1e-10)
    return noncentrality * sd / math.sqrt(n)
