"""The statistical tests behind the findings: contrasts of means with Satterthwaite's t, paired t,
the F test for a ratio of spreads, Holm's correction, and the prediction interval of a new draw.

All work from per-setup summaries (mean, sd, n over independent seeds), except the paired t, which
needs the per-seed values. Accuracies are proportions of 10k test images; their seed-to-seed sd is
what the tests use (the binomial noise of one run is inside it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05


@dataclass(frozen=True)
class Term:
    """One cell's mean test accuracy in a contrast: ``sign`` * mean, with its sd over ``n`` seeds."""

    sign: float
    mean: float
    sd: float
    n: int


@dataclass(frozen=True)
class Contrast:
    estimate: float  # sum of sign * mean
    se: float  # its standard error
    df: float  # Welch-Satterthwaite degrees of freedom
    p: float  # one-sided: P(T >= t) under H0 "estimate <= margin"; nan when not testable

    def describe(self) -> str:
        shown = "p n/a (n < 2)" if math.isnan(self.p) else f"p = {self.p:.2g}"
        return f"{self.estimate:+.3f} (se {self.se:.3f}, {shown})"


def contrast(terms: list[Term], margin: float = 0.0) -> Contrast:
    """One-sided t test of H0: sum(sign * mean) <= margin against H1: > margin, for independent cells.

    The variance is sum(sd^2 / n) and the degrees of freedom Welch-Satterthwaite's; with two terms
    this is exactly Welch's t test (scipy's ``ttest_ind_from_stats(equal_var=False)``), with more it
    tests a difference of differences (a drop in one norm against a drop in another)."""
    estimate = sum(t.sign * t.mean for t in terms)
    if any(t.n < 2 or math.isnan(t.sd) for t in terms):
        return Contrast(estimate, math.nan, math.nan, math.nan)
    parts = [t.sd**2 / t.n for t in terms]
    variance = sum(parts)
    if variance == 0:  # identical values in every seed: any difference beyond the margin is certain
        return Contrast(estimate, 0.0, math.inf, 0.0 if estimate > margin else 1.0)
    df = variance**2 / sum(part**2 / (t.n - 1) for part, t in zip(parts, terms, strict=True))
    se = math.sqrt(variance)
    return Contrast(estimate, se, df, float(stats.t.sf((estimate - margin) / se, df)))


def welch_two_sided(a: Term, b: Term) -> Contrast:
    """Welch's t test of mean a = mean b (two-sided p), from the summaries alone: scipy's p, with
    the estimate, standard error and Welch-Satterthwaite df of ``contrast``. Identical values in
    every seed (no spread) give an exact answer: p = 1 for equal means, else 0."""
    difference = contrast([Term(1, a.mean, a.sd, a.n), Term(-1, b.mean, b.sd, b.n)])
    if math.isnan(difference.p):
        return difference
    if difference.se == 0:
        return Contrast(difference.estimate, 0.0, math.inf, 1.0 if difference.estimate == 0 else 0.0)
    welch = stats.ttest_ind_from_stats(a.mean, a.sd, a.n, b.mean, b.sd, b.n, equal_var=False)
    return Contrast(difference.estimate, difference.se, difference.df, float(welch.pvalue))


def paired_two_sided(a: list[float], b: list[float]) -> Contrast:
    """Paired t test (two-sided) of per-seed values that share seed, init and data order."""
    differences = np.asarray(a) - np.asarray(b)
    n = len(differences)
    if n < 2:
        return Contrast(float(differences.mean()) if n else math.nan, math.nan, math.nan, math.nan)
    se = float(differences.std(ddof=1)) / math.sqrt(n)
    exact = 1.0 if differences.mean() == 0 else 0.0  # the same difference in every seed
    p = exact if se == 0 else float(stats.ttest_rel(a, b).pvalue)
    return Contrast(float(differences.mean()), se, n - 1, p)


def spread_ratio(sd_a: float, sd_b: float, n: int) -> tuple[float, float]:
    """(sd_b / sd_a, one-sided p of the F test that b's variance is smaller than a's), n seeds each.

    The F test assumes independent samples; here both sds come from the same runs, whose two
    evaluations are positively correlated, which makes it conservative."""
    if n < 2 or math.isnan(sd_a) or math.isnan(sd_b) or sd_a == 0:
        return math.nan, math.nan
    if sd_b == 0:
        return 0.0, 0.0
    statistic = sd_a**2 / sd_b**2
    return sd_b / sd_a, float(stats.f.sf(statistic, n - 1, n - 1))


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error over the list); nan stays nan."""
    indexed = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    adjusted = [math.nan] * len(pvalues)
    running, m = 0.0, len(indexed)
    for rank, (p, i) in enumerate(indexed):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def prediction_interval(mean: float, sd: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Where one new independent draw falls with probability ``level``: mean ± t(n-1) sd sqrt(1 + 1/n)."""
    if n < 2 or math.isnan(sd):
        return math.nan, math.nan
    half = stats.t.ppf(0.5 + level / 2, n - 1) * sd * math.sqrt(1 + 1 / n)
    return mean - half, mean + half


def beyond(result: Contrast, shift: float) -> float:
    """One-sided p that the effect lies beyond ``shift`` on its own side (|effect| > shift), from
    the contrast's estimate, se and df (Welch's or paired)."""
    if math.isnan(result.se):
        return math.nan
    if result.se == 0:
        return 0.0 if abs(result.estimate) > shift else 1.0
    return float(stats.t.sf((abs(result.estimate) - shift) / result.se, result.df))


def equivalent(result: Contrast, margin: float) -> float:
    """TOST: the larger of the two one-sided p-values that the effect lies inside ±``margin``
    (p < 0.05: the 90% CI of the effect is inside the margin)."""
    if math.isnan(result.se):
        return math.nan
    if result.se == 0:
        return 0.0 if abs(result.estimate) < margin else 1.0
    upper = stats.t.cdf((result.estimate - margin) / result.se, result.df)
    lower = stats.t.sf((result.estimate + margin) / result.se, result.df)
    return float(max(upper, lower))
