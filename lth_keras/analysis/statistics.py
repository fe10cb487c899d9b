"""Comparisons with the ticket search as the unit: the difference, its interval, its test,
its power, how its variance splits, and Holm's adjustment.

A replicate is (tickets seed, transfer seed) (collect.RunRecord.replicate). The ticket
search (the tickets seed) fixes θ_0, the masks and θ_k; transfer seeds within one search
only re-draw the head and the target's batches, so they are not independent replicates
(docs/protocol.md "Replicates and statistics"). A comparison of a and b therefore:

  1. pairs the runs of a and b by replicate: d_st = a_st - b_st;
  2. averages the d_st of each search s over its transfer seeds: d̄_s;
  3. takes the n searches' d̄_s as the sample (df = n - 1):
       95% CI   mean ± t(0.975, n-1) · sd / √n
       p        the two-sided one-sample t-test of the d̄_s against 0
       MDE      the smallest true mean difference this test detects with 80% power at
                α = 0.05 given the observed sd (noncentral t, see minimum_detectable_effect);
                below MIN_SEARCHES_FOR_MDE searches the sd has too few degrees of freedom
                to say, and the MDE is NaN ("not estimable").

How the variance of the d_st splits (variance_components, a one-way random-effects ANOVA
with the searches as groups, unbalanced allowed):
  MSB = Σ_s m_s (d̄_s - d̄)² / (n - 1),   MSW = Σ_s Σ_t (d_st - d̄_s)² / (N - n)
  m₀  = (N - Σ_s m_s² / N) / (n - 1)                        (the mean group size)
  σ²_between = max(0, (MSB - MSW) / m₀),   σ²_within = MSW
  ICC(1) = max(0, (MSB - MSW) / (MSB + (m₀ - 1) · MSW))
  design effect = 1 + (m₀ - 1) · ICC
so the variance of the study's mean is (σ²_between + σ²_within / m) / n with m transfer
seeds per search: more searches shrink both terms, more transfer seeds only the second
(lth_keras/planning.py plans n and m from it).

A family of tests is adjusted with Holm's step-down method (holm).
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
from scipy import integrate, optimize, stats

ALPHA = 0.05
POWER = 0.8
MIN_SEARCHES_FOR_MDE = 5  # below this the observed sd is too uncertain to size a test by


@dataclasses.dataclass(frozen=True)
class VarianceComponents:
    """The one-way random-effects ANOVA of replicate values grouped by search (module
    docstring). NaN where the data cannot say: within needs a search with two replicates,
    between and the ICC also two searches."""

    searches: int
    replicates: int
    m0: float
    between: float
    within: float
    icc: float
    design_effect: float


def variance_components(groups):
    """VarianceComponents of {search: [values of its replicates]}."""
    groups = [np.asarray(v, np.float64) for v in groups.values() if len(v)]
    a = len(groups)
    sizes = np.array([len(g) for g in groups], np.float64)
    total = float(sizes.sum())
    nan = math.nan
    if a == 0:
        return VarianceComponents(0, 0, nan, nan, nan, nan, nan)
    within = nan
    if total > a:
        within = float(sum(((g - g.mean()) ** 2).sum() for g in groups) / (total - a))
    if a < 2:
        return VarianceComponents(a, int(total), nan, nan, within, nan, nan)
    grand = float(np.concatenate(groups).mean())
    msb = float(sum(len(g) * (g.mean() - grand) ** 2 for g in groups) / (a - 1))
    m0 = float((total - (sizes ** 2).sum() / total) / (a - 1))
    if math.isnan(within):
        return VarianceComponents(a, int(total), m0, nan, nan, nan, nan)
    between = max(0.0, (msb - within) / m0)
    denominator = msb + (m0 - 1) * within
    icc = max(0.0, (msb - within) / denominator) if denominator > 0 else 0.0
    return VarianceComponents(a, int(total), m0, between, within, icc, 1 + (m0 - 1) * icc)


@dataclasses.dataclass(frozen=True)
class SearchDifference:
    """a - b with the ticket search as the unit (module docstring)."""

    n: int              # searches with at least one pair
    mean: float         # mean over searches of the per-search mean difference; NaN if n = 0
    sd: float           # sd (ddof=1) of the per-search means; NaN when n < 2
    ci: tuple           # (low, high), 95%; NaN when n < 2 or the search means are all equal
    t: float
    p: float            # NaN when n < 2 or the per-search means are all equal
    mde: float          # detectable at 80% power; NaN below MIN_SEARCHES_FOR_MDE searches
    pairs: tuple        # the (search, transfer seed) replicates used, sorted
    search_means: dict  # {search: mean difference over its transfer seeds}
    components: VarianceComponents  # of the pair differences, grouped by search

    @property
    def transfer_seeds(self):
        """Transfer seeds per search: "2", or "1-2" where searches differ; "—" where each
        search gave one value made of its own seeds (no replicate of its own)."""
        if self.pairs and all(k[1] is None for k in self.pairs):
            return "—"
        counts = sorted({sum(k[0] == s for k in self.pairs) for s in self.search_means})
        if not counts:
            return ""
        return str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"

    @property
    def mde_estimable(self):
        return self.n >= MIN_SEARCHES_FOR_MDE


def _replicate(key):
    """(search, transfer seed) of a replicate key; a plain key is one value per search (a
    mean over its transfer seeds, say), with no transfer seed: (search, None)."""
    return tuple(key) if isinstance(key, tuple) else (key, None)


def search_difference(a_by_replicate, b_by_replicate, alpha=ALPHA, power=POWER):
    """The SearchDifference of {replicate: value} `a` minus `b` over the replicates both
    have; a replicate is (tickets seed, transfer seed), or a plain search key."""
    keys = sorted(set(a_by_replicate) & set(b_by_replicate), key=_replicate)
    by_search = {}
    for key in keys:
        by_search.setdefault(_replicate(key)[0], []).append(
            float(a_by_replicate[key]) - float(b_by_replicate[key]))
    return _over_searches(by_search, tuple(_replicate(k) for k in keys), alpha, power)


def _over_searches(by_search, pairs, alpha, power):
    means = {s: float(np.mean(v)) for s, v in sorted(by_search.items())}
    components = variance_components(by_search)
    d = np.array(list(means.values()), np.float64)
    n, nan = len(d), math.nan
    if n == 0:
        return SearchDifference(0, nan, nan, (nan, nan), nan, nan, nan, pairs, means,
                                components)
    mean = float(d.mean())
    if n < 2:
        return SearchDifference(1, mean, nan, (nan, nan), nan, nan, nan, pairs, means,
                                components)
    sd = float(d.std(ddof=1))
    if sd <= 1e-12 * max(1.0, abs(mean)):
        # Equal search means: no spread to test against (scipy would give t = inf, p = 0).
        return SearchDifference(n, mean, 0.0, (nan, nan), nan, nan, nan, pairs, means,
                                components)
    half = stats.t.ppf(1 - alpha / 2, n - 1) * sd / math.sqrt(n)
    with warnings.catch_warnings():  # constant means: scipy warns, gives NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_1samp(d, 0.0)
    mde = minimum_detectable_effect(sd, n, alpha, power) if n >= MIN_SEARCHES_FOR_MDE else nan
    return SearchDifference(n, mean, sd, (mean - half, mean + half), float(result.statistic),
                            float(result.pvalue), mde, pairs, means, components)


def search_means(by_replicate):
    """{search: mean over its transfer seeds} of {replicate: value}."""
    by_search = {}
    for key, value in by_replicate.items():
        by_search.setdefault(_replicate(key)[0], []).append(float(value))
    return {s: float(np.mean(v)) for s, v in sorted(by_search.items())}


def holm(pvalues):
    """Holm's step-down adjustment of a family of p-values (a list). The family is every
    contrast in it, those that could not be tested (NaN: one search, no spread) included:
    they were named, and leaving them out would make the others' adjustment milder. The
    i-th smallest finite p of a family of k becomes max over j <= i of min(1, (k - j + 1) ·
    p_(j)); NaN entries stay NaN."""
    finite = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    k = len(pvalues)
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(finite):
        running = max(running, min(1.0, (k - rank) * p))
        adjusted[i] = running
    return adjusted


def power_of_test(effect, sd_of_mean, df, alpha=ALPHA):
    """The power of the two-sided one-sample t-test with `df` degrees of freedom at level
    `alpha` when the true mean is `effect` and its estimate has standard deviation
    `sd_of_mean` (noncentrality effect / sd_of_mean)."""
    critical = stats.t.ppf(1 - alpha / 2, df)
    return _power(effect / sd_of_mean, df, critical)


def _power(noncentrality, df, critical):
    """P(|T| > critical) for T noncentral t(df, noncentrality), integrated over the
    chi-square of the variance (accurate at 1 degree of freedom too)."""
    def integrand(v):
        scale = critical * math.sqrt(v / df)
        return (stats.norm.cdf(-scale - noncentrality)
                + stats.norm.sf(scale - noncentrality)) * stats.chi2.pdf(v, df)

    return integrate.quad(integrand, 0, np.inf, limit=200)[0]


def minimum_detectable_effect(sd, n, alpha=ALPHA, power=POWER):
    """The mean difference a two-sided one-sample t-test of n units with standard deviation
    `sd` detects with probability `power` at level `alpha`."""
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


def detectable_text(difference, scale=100.0):
    """The MDE in points, or "not estimable (n = …)" below MIN_SEARCHES_FOR_MDE searches."""
    return detectable_words(difference.n, difference.mde, scale)


def detectable_words(searches, mde, scale=100.0):
    """detectable_text of `searches` searches whose MDE is `mde` (NaN where none)."""
    if searches < MIN_SEARCHES_FOR_MDE:
        return f"not estimable (n = {searches})"
    if math.isnan(mde):
        return "not estimable (no spread)"
    return f"{scale * mde:.2f}"
