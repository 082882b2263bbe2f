"""Verdicts that hold across budgets: each comparison judged at every budget of the ladder
(``budget/*`` metrics, ``normlab.training.branches``), then across them.

At one budget a setup is *better* or *worse* than the baseline (two-sided t, Holm over the setups,
p < 0.05, and at least one point), *within a point* (TOST: the 90% CI of the difference inside ±1
point), or *undecided*. Across budgets a verdict is

- *robust* where it holds at the two largest budgets and would still hold if the next doubling moved
  the effect as much as the last one did: the effect at B, moved by its change from B/2 to B toward
  the threshold, is still on the verdict's side of it beyond noise (shifted one-sided t, or TOST
  with the margin narrowed by that change);
- *budget-dependent* otherwise, with its value at each budget;
- *not measurable* only where a cell it needs is missing, at chance or diverged at those budgets.

The third budget checks the extrapolation's assumption (changes shrink from one doubling to the
next); where they grow the verdict says so. A cell has *settled* where its value moved less than
half a point between the two largest budgets, shown by a paired TOST over seeds (branches share a
seed's init and data order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
from scipy import stats

from normlab.report.convergence import AT_CHANCE
from normlab.report.statistics import (
    ALPHA,
    Contrast,
    Term,
    beyond,
    equivalent,
    holm,
    paired_two_sided,
    welch_two_sided,
)
from normlab.tracking.names import BUDGET_PREFIX, BUDGET_SAMPLES, BUDGET_STEPS, VAL_ACC, VAL_ACC_PRECISE

MARGIN = 0.01  # one accuracy point: the threshold of a difference and of "within a point"
SETTLED_MARGIN = 0.005  # a cell has settled when it moved less than half a point between budgets
BUDGET_METRICS = {BUDGET_PREFIX + VAL_ACC: VAL_ACC, BUDGET_PREFIX + VAL_ACC_PRECISE: VAL_ACC_PRECISE}
SIZES = (BUDGET_STEPS, BUDGET_SAMPLES)
BETTER, WORSE, WITHIN, UNDECIDED, NOT_MEASURABLE = (
    "better",
    "worse",
    "within a point",
    "undecided",
    "not measurable",
)


def with_rungs(history: pd.DataFrame) -> pd.DataFrame:
    """``history`` with a ``rung`` column: for each run's budget results the budget's place in its
    ladder (1 = the smallest), which lines budgets up across cells whose budgets differ in epochs
    (a floor in steps gives large batches more); None for per-epoch metrics."""
    budget_rows = history["metric"].str.startswith(BUDGET_PREFIX)
    ranks = history[budget_rows].groupby("run_id")["epoch"].rank(method="dense")
    return history.assign(rung=ranks.reindex(history.index))


def budgets(history: pd.DataFrame, metric: str = BUDGET_PREFIX + VAL_ACC) -> list[int]:
    """The ladder's rungs, smallest first (empty: the runs have no ladder)."""
    if "rung" not in history:
        return []
    return sorted(int(r) for r in history.loc[history["metric"] == metric, "rung"].dropna().unique())


def label(history: pd.DataFrame, rung: int) -> str:
    """A rung as a reader knows it: its epochs where every cell has the same ("4 epochs"), else
    its fraction of each cell's largest budget and the range of epochs ("B/2: 2-6 epochs")."""
    epochs = sorted(int(e) for e in history.loc[history["rung"] == rung, "epoch"].unique())
    if len(epochs) == 1:
        return f"{epochs[0]} epochs"
    top = max(budgets(history))
    fraction = "B" if rung == top else f"B/{2 ** (top - rung)}"
    return f"{fraction}: {epochs[0]}-{epochs[-1]} epochs"


def values(history: pd.DataFrame, setup: str, metric: str, rung: int) -> dict[int, float]:
    """Per seed, the setup's value of ``metric`` at the ladder's ``rung``."""
    rows = history[(history["setup"] == setup) & (history["metric"] == metric) & (history["rung"] == rung)]
    return {int(seed): float(value) for seed, value in zip(rows["seed"], rows["value"], strict=True)}


@dataclass(frozen=True)
class Settled:
    settled: bool | None  # None: fewer than 2 paired seeds or 2 budgets
    change: float  # mean change between the two largest budgets
    p: float  # TOST p (within ±SETTLED_MARGIN)
    n: int

    def describe(self) -> str:
        if self.settled is None:
            return "–"
        word = "yes" if self.settled else "**no**"
        return f"{word} ({100 * self.change:+.1f} pt, TOST p = {self.p:.2g}, n = {self.n})"


def settled(history: pd.DataFrame, setup: str, metric: str = BUDGET_PREFIX + VAL_ACC) -> Settled:
    """Whether the setup moved less than half a point between the two largest budgets (paired
    TOST over the seeds that have both)."""
    ladder = budgets(history, metric)
    if len(ladder) < 2:
        return Settled(None, math.nan, math.nan, 0)
    small, large = values(history, setup, metric, ladder[-2]), values(history, setup, metric, ladder[-1])
    seeds = sorted(small.keys() & large.keys())
    if len(seeds) < 2:
        return Settled(None, math.nan, math.nan, len(seeds))
    result = paired_two_sided([large[s] for s in seeds], [small[s] for s in seeds])
    p = equivalent(result, SETTLED_MARGIN)
    return Settled(bool(p < ALPHA), result.estimate, p, len(seeds))


@dataclass(frozen=True)
class AtBudget:
    """A setup against the baseline at one budget."""

    budget: str  # its label (``label``)
    mean: float  # the setup's mean
    contrast: Contrast  # setup minus baseline
    test: str  # "paired t" or "Welch t"
    p: float  # Holm-adjusted two-sided p of a difference
    p_within: float  # Holm-adjusted TOST p of "within a point"
    n: int
    verdict: str
    why: str = ""  # where not measurable


def judge(result: Contrast, p: float, p_within: float) -> str:
    if p < ALPHA and abs(result.estimate) >= MARGIN:
        return BETTER if result.estimate > 0 else WORSE
    if p_within < ALPHA:
        return WITHIN
    return UNDECIDED


def _unmeasurable(cells: dict[str, dict[int, float]]) -> str:
    """Why a comparison of these cells (setup -> values per seed) measures nothing, or ''."""
    for setup, per_seed in cells.items():
        finite = [v for v in per_seed.values() if math.isfinite(v)]
        if not per_seed:
            return f"{setup} missing"
        if len(finite) < len(per_seed):
            return f"{setup} diverged in {len(per_seed) - len(finite)} seed(s)"
        if sum(finite) / len(finite) < AT_CHANCE:
            return f"{setup} at chance"
    return ""


def compare(setup: dict[int, float], base: dict[int, float]) -> tuple[Contrast, str]:
    """Setup minus baseline: paired over shared seeds where both have the same ones, else Welch."""
    if setup.keys() == base.keys() and len(setup) >= 2:
        seeds = sorted(setup)
        return paired_two_sided([setup[s] for s in seeds], [base[s] for s in seeds]), "paired t"
    a, b = pd.Series(list(setup.values())), pd.Series(list(base.values()))
    return welch_two_sided(Term(1, a.mean(), a.std(), len(a)), Term(1, b.mean(), b.std(), len(b))), "Welch t"


def at_budget(cells: dict[str, dict[int, float]], baseline: str, budget: str) -> dict[str, AtBudget]:
    """Every setup of ``cells`` (setup -> values per seed at ``budget``) against ``baseline``,
    Holm-corrected over the setups (each test separately)."""
    base = cells[baseline]
    compared = [setup for setup in cells if setup != baseline]
    tested = {setup: compare(cells[setup], base) for setup in compared}
    p_diff = holm([tested[s][0].p for s in compared])
    p_within = holm([equivalent(tested[s][0], MARGIN) for s in compared])
    results = {}
    for setup, p, q in zip(compared, p_diff, p_within, strict=True):
        result, test = tested[setup]
        finite = [v for v in cells[setup].values() if math.isfinite(v)]
        mean = sum(finite) / len(finite) if finite else math.nan
        why = _unmeasurable({setup: cells[setup], baseline: base})
        verdict = NOT_MEASURABLE if why else judge(result, p, q)
        results[setup] = AtBudget(budget, mean, result, test, p, q, len(cells[setup]), verdict, why)
    return results


@dataclass(frozen=True)
class Across:
    kind: str  # "robust", "budget-dependent", "undecided" or "not measurable"
    verdict: str  # the verdict at the largest budget
    statement: str  # one line: what holds where
    assumption: str = ""  # where the changes grew instead of shrinking


def across(ladder: list[AtBudget]) -> Across:
    """The verdict across a setup's budgets (smallest first; at least two)."""
    last, previous = ladder[-1], ladder[-2]
    where = f"{previous.budget} and {last.budget}"
    if NOT_MEASURABLE in (last.verdict, previous.verdict):
        reasons = "; ".join(dict.fromkeys(a.why for a in (previous, last) if a.why))
        return Across("not measurable", NOT_MEASURABLE, f"not measurable at {where}: {reasons}")
    change = last.contrast.estimate - previous.contrast.estimate
    assumption = ""
    if len(ladder) >= 3:
        before = previous.contrast.estimate - ladder[-3].contrast.estimate
        if abs(change) > abs(before):
            moved = f"{previous.budget} to {last.budget} ({100 * change:+.1f} pt)"
            earlier = f"{ladder[-3].budget} to {previous.budget} ({100 * before:+.1f} pt)"
            assumption = f"the effect moved more from {moved} than from {earlier}: changes do not shrink"
    values = ", ".join(f"{100 * a.contrast.estimate:+.1f} pt ({a.verdict}) at {a.budget}" for a in ladder)
    if last.verdict != previous.verdict:
        return Across("budget-dependent", last.verdict, f"budget-dependent: {values}", assumption)
    if last.verdict == UNDECIDED:
        return Across(
            "undecided", UNDECIDED, f"undecided at {where} (too few seeds to tell): {values}", assumption
        )
    if last.verdict == WITHIN:
        narrowed = MARGIN - abs(change)
        p = equivalent(last.contrast, narrowed) if narrowed > 0 else 1.0
    else:
        p = beyond(last.contrast, abs(change)) if abs(last.contrast.estimate) - abs(change) >= MARGIN else 1.0
    effect = f"{100 * last.contrast.estimate:+.1f} pt at {last.budget}"
    effect += f", {100 * change:+.1f} pt since {previous.budget}"
    if p < ALPHA:
        statement = (
            f"robust: {last.verdict} at {where} ({effect}; a next doubling that moved it as much keeps it"
        )
        return Across("robust", last.verdict, f"{statement}, p = {p:.2g})", assumption)
    statement = f"budget-dependent: {last.verdict} at {where}, but a next doubling that moved the effect as"
    statement += f" much could change it ({effect}; p = {p:.2g}): {values}"
    return Across("budget-dependent", last.verdict, statement, assumption)


UNDECIDED_WORDS = ("undecided", "not measurable", "too few seeds")


def decided(verdict: str) -> bool:
    """Whether a verdict says something: a check grid's few seeds may leave it undecided, which is
    no change of verdict."""
    return not any(word in verdict for word in UNDECIDED_WORDS)


def lr_dependent(verdict: str, mean: float, at_other_lrs: dict[float, tuple[str, float]]) -> str:
    """'' where no lr that trains the compared setups better (a higher mean accuracy than
    ``mean``) gives another decided verdict; else why the verdict is *lr-dependent*.
    ``at_other_lrs``: lr factor -> (the verdict there, the compared setups' mean accuracy there)."""
    changed = [
        f"{other} at {factor:g}x the lr (mean accuracy {other_mean:.3f} vs {mean:.3f})"
        for factor, (other, other_mean) in sorted(at_other_lrs.items())
        if other != verdict and other_mean > mean and decided(other)
    ]
    return f"lr-dependent: {'; '.join(changed)}" if changed else ""


def summary_at(summary: pd.DataFrame, history: pd.DataFrame, budget: int) -> pd.DataFrame:
    """The study's summary as it stood at ``budget``: each setup's test accuracies (mean, sd, 95%
    CI, n and per-seed values) from its ``budget/*`` results there, so that any finding judged on
    a summary can be judged at every budget."""
    at = summary.copy()
    for budget_metric, metric in BUDGET_METRICS.items():
        columns: dict[str, list] = {"mean": [], "sd": [], "ci95": [], "values": []}
        for setup in at["setup"]:
            per_seed = values(history, setup, budget_metric, budget)
            series = pd.Series([per_seed[s] for s in sorted(per_seed)], dtype=float)
            n = len(series)
            sd = float(series.std(ddof=1)) if n > 1 else math.nan
            columns["mean"].append(float(series.mean()) if n else math.nan)
            columns["sd"].append(sd)
            columns["ci95"].append(stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n) if n > 1 else math.nan)
            columns["values"].append(tuple(series))
        for column, column_values in columns.items():
            at[f"{metric} {column}"] = column_values
    at["n"] = [len(values(history, s, BUDGET_PREFIX + VAL_ACC, budget)) for s in at["setup"]]
    at["converged"] = None  # the ladder replaces the last-epoch gate
    return at
