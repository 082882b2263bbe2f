"""Verdicts on the claims users come to check, computed from a study's summary and curves.

Each check returns None when the study lacks the cells it needs, else a Finding whose verdict is
"reproduced", "not reproduced" or "not measurable" (with the reason), always with the numbers and
p-values. Differences are judged by t tests (``normlab.report.statistics``: Welch, or paired where setups
share seeds, init and data order), Holm-corrected over each finding's comparisons, at level 0.05;
a finding that needs a setup whose last epoch still moved (``converged`` False in the summary, from
``normlab.convergence``) says "not measurable: not converged at ..." instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import pandas as pd

from normlab.layers.registry import NORMS, WHOLE_BATCH_BN
from normlab.report import ladder
from normlab.report.convergence import AT_CHANCE
from normlab.report.statistics import (
    ALPHA,
    Contrast,
    Term,
    contrast,
    holm,
    paired_two_sided,
    spread_ratio,
    welch_two_sided,
)

BN_NORMS = WHOLE_BATCH_BN
NEAR_CHANCE = AT_CHANCE  # "learns nothing": below this on 10 balanced classes (the gate skips such cells)
LEARNED = 0.5  # a run "trains" at a learning rate when its mean test accuracy exceeds this
MARGIN = 0.01  # one accuracy point


@dataclass(frozen=True)
class Finding:
    name: str
    claim: str
    evidence: str
    verdict: str
    table: str = ""  # the evidence as a markdown table, where judged over a ladder of budgets


def _fmt(mean: float, sd: float, n: int) -> str:
    return f"{mean:.3f}" + ("" if math.isnan(sd) else f" ± {sd:.3f}") + f" (n={n})"


def _term(row: dict, metric: str = "val/acc", sign: float = 1.0) -> Term:
    return Term(sign, row[f"{metric} mean"], row[f"{metric} sd"], int(row["n"]))


def _p(adjusted: float) -> str:
    return "p n/a" if math.isnan(adjusted) else f"Holm p = {adjusted:.2g}"


def unconverged(rows: Iterable[dict]) -> list[str]:
    """The setups among ``rows`` whose last epoch still moved (the summary's ``converged`` False)."""
    return list(dict.fromkeys(row["setup"] for row in rows if row.get("converged") is False))


def _not_converged(name: str, claim: str, evidence: str, setups: list[str]) -> Finding:
    shown = ", ".join(setups[:6]) + (f" and {len(setups) - 6} more" if len(setups) > 6 else "")
    return Finding(name, claim, evidence, f"not measurable: not converged at {shown}")


def converges_faster(summary: pd.DataFrame, history: pd.DataFrame) -> Finding | None:
    """F1: epoch-1 test accuracy of BN vs no norm, at the same batch size and learning rate: BN is
    faster where it is more than one point ahead beyond noise (one-sided Welch t, Holm over the BN
    kinds). Not measurable where the no-norm baseline never leaves chance: it is not slower then,
    it does not learn."""
    if history.empty:
        return None
    epoch1 = history[(history["metric"] == "val/acc") & (history["epoch"] == 1)]
    cells = epoch1.merge(summary[["setup", "norm", "batch_size", "lr"]], on="setup")
    shared = [
        key
        for key, group in cells.groupby(["batch_size", "lr"])
        if "none" in set(group["norm"]) and set(group["norm"]) & set(BN_NORMS)
    ]
    if not shared:
        return None
    batch, lr = min(shared, key=lambda key: (abs(math.log(key[1])), -key[0]))  # lr nearest 1, largest batch
    group = cells[(cells["batch_size"] == batch) & (cells["lr"] == lr)]
    per_norm = group.groupby("norm")["value"].agg(["mean", "std", "count"])
    none = per_norm.loc["none"]
    norms = [n for n in BN_NORMS if n in per_norm.index]
    tests = [
        contrast(
            [
                Term(1, per_norm.loc[n, "mean"], per_norm.loc[n, "std"], int(per_norm.loc[n, "count"])),
                Term(-1, none["mean"], none["std"], int(none["count"])),
            ],
            margin=MARGIN,
        )
        for n in norms
    ]
    adjusted = holm([t.p for t in tests])
    parts = [
        f"{n} {_fmt(per_norm.loc[n, 'mean'], per_norm.loc[n, 'std'], int(per_norm.loc[n, 'count']))}, "
        f"ahead by {t.estimate:+.3f} ({_p(p)})"
        for n, t, p in zip(norms, tests, adjusted, strict=True)
    ]
    evidence = (
        f"epoch-1 test accuracy at batch {batch:g}, lr {lr:g}: {'; '.join(parts)} vs none "
        f"{_fmt(none['mean'], none['std'], int(none['count']))}"
    )
    claim = "BN converges faster"
    final_none = summary[
        (summary["norm"] == "none") & (summary["batch_size"] == batch) & (summary["lr"] == lr)
    ]
    best_none = float(final_none["val/acc mean"].max())
    if best_none < NEAR_CHANCE:
        reason = (
            f"not measurable: the no-norm baseline never left chance (final test accuracy {best_none:.3f})"
        )
        return Finding("F1", claim, evidence, reason)
    faster = all(p < ALPHA for p in adjusted)
    return Finding("F1", claim, evidence, "reproduced" if faster else "not reproduced")


def _best(summary: pd.DataFrame, norm: str) -> dict:
    """The norm's batch size (>= 2) with the highest mean test accuracy."""
    cells = summary[(summary["norm"] == norm) & (summary["batch_size"] >= 2)].dropna(subset=["val/acc mean"])
    return cells.loc[cells["val/acc mean"].idxmax()].to_dict()


def _at(summary: pd.DataFrame, norm: str, batch: float) -> dict | None:
    cell = summary[(summary["norm"] == norm) & (summary["batch_size"] == batch)].dropna(
        subset=["val/acc mean"]
    )
    return cell.iloc[0].to_dict() if len(cell) else None


def batch_size_matters_more_with_bn(summary: pd.DataFrame) -> Finding | None:
    """F2: BN loses more than one point more than no norm between its best batch size and batch 2:
    a one-sided t test of the difference of the two drops (Welch-Satterthwaite over the four cells),
    Holm over the BN kinds. The best cell is picked by its mean, which biases both drops up alike."""
    norms = set(summary["norm"])
    bn_norms = [n for n in BN_NORMS if n in norms]
    if summary["batch_size"].nunique() < 4 or "none" not in norms or not bn_norms:
        return None
    if any(_at(summary, norm, 2.0) is None for norm in ["none", *bn_norms]):
        return None
    claim = "batch size matters more with BN"
    cells = {norm: (_best(summary, norm), _at(summary, norm, 2.0)) for norm in ["none", *bn_norms]}
    evidence = "; ".join(
        f"{norm}: best {best['val/acc mean']:.3f} at batch {best['batch_size']:g}, "
        f"{two['val/acc mean']:.3f} at batch 2 (drop {best['val/acc mean'] - two['val/acc mean']:+.3f})"
        for norm, (best, two) in cells.items()
    )
    best_none = cells["none"][0]["val/acc mean"]
    if best_none < NEAR_CHANCE:
        return Finding(
            "F2",
            claim,
            evidence + f" — the no-norm baseline never left chance (best {best_none:.3f}), "
            "so there is no drop to compare with",
            "not measurable",
        )
    stuck = unconverged(row for pair in cells.values() for row in pair)
    if stuck:
        return _not_converged("F2", claim, evidence, stuck)
    none_best, none_two = cells["none"]
    tests = [
        contrast(
            [_term(best), _term(two, sign=-1), _term(none_best, sign=-1), _term(none_two)], margin=MARGIN
        )
        for best, two in (cells[n] for n in bn_norms)
    ]
    adjusted = holm([t.p for t in tests])
    evidence += " — BN's drop minus none's: " + "; ".join(
        f"{n} {t.estimate:+.3f} ({_p(p)})" for n, t, p in zip(bn_norms, tests, adjusted, strict=True)
    )
    more = all(p < ALPHA for p in adjusted)
    return Finding("F2", claim, evidence, "reproduced" if more else "not reproduced")


def batch_one_learns_nothing(summary: pd.DataFrame) -> Finding | None:
    """F3: BN at batch size 1 (FC layers see one value per channel) stays near chance."""
    cells = summary[(summary["batch_size"] == 1) & summary["norm"].isin(BN_NORMS)]
    if cells.empty:
        return None
    parts, near_chance = [], []
    for row in cells.to_dict("records"):
        if row["n"] == 0:
            parts.append(f"{row['norm']}: no finished run ({row['failure'] or 'failed'})")
            continue
        modes = {m: row[f"{m} mean"] for m in ("val/acc", "val/acc_precise", "val/acc_batchstats")}
        shown = {m: v for m, v in modes.items() if not math.isnan(v)}
        near_chance.append(all(v < NEAR_CHANCE for v in shown.values()))
        parts.append(f"{row['norm']}: " + ", ".join(f"{m} {v:.3f}" for m, v in shown.items()))
    evidence = "; ".join(parts)
    if not near_chance:
        return Finding("F3", "batch size 1 with BN in FC layers learns nothing", evidence, "not measurable")
    verdict = "reproduced" if all(near_chance) else "not reproduced"
    return Finding(
        "F3", f"batch size 1 with BN in FC layers learns nothing (< {NEAR_CHANCE:.2f})", evidence, verdict
    )


def precise_bn_narrows_spread(summary: pd.DataFrame) -> Finding | None:
    """F4: at lr 1.0, moving-statistics test accuracy varies across seeds; PreciseBN narrows it.
    Per BN cell, a one-sided F test of the two variances over the same seeds, Holm over the cells;
    reproduced where PreciseBN's spread is smaller beyond noise in most of the cells."""
    cells = summary[
        summary["norm"].isin(BN_NORMS)
        & ((summary["effective_lr"] - 1.0).abs() < 1e-9)
        & (summary["n"] >= 2)
        & summary["val/acc_precise sd"].notna()
    ]
    if cells.empty:
        return None
    claim = "moving-statistics accuracy varies across seeds; PreciseBN narrows it"
    rows = cells.to_dict("records")
    tests = [spread_ratio(row["val/acc sd"], row["val/acc_precise sd"], int(row["n"])) for row in rows]
    adjusted = holm([p for _, p in tests])
    narrower = [row["setup"] for row, p in zip(rows, adjusted, strict=True) if p < ALPHA]
    ema, precise = cells["val/acc sd"].mean(), cells["val/acc_precise sd"].mean()
    evidence = (
        f"over {len(cells)} BN cells at lr 1.0: mean sd over seeds {ema:.4f} with moving statistics, "
        f"{precise:.4f} with PreciseBN; per cell, PreciseBN's sd over the moving statistics' "
        "(one-sided F test): "
        + ", ".join(
            f"{row['setup']} {r:.2f} ({_p(p)})" for row, (r, _), p in zip(rows, tests, adjusted, strict=True)
        )
        + f" — narrower beyond noise in {len(narrower)} of {len(rows)}"
    )
    if ema < MARGIN:
        return Finding("F4", claim, evidence + "; the spread itself is under one point", "not reproduced")
    verdict = "reproduced" if len(narrower) > len(rows) / 2 else "not reproduced"
    return Finding("F4", claim, evidence, verdict)


def bn_allows_higher_lr(summary: pd.DataFrame) -> Finding | None:
    """F5 (d2l's exercise): the highest lr at which each norm still trains (mean test acc > 0.5)."""
    if summary["lr"].nunique() < 3 or "none" not in set(summary["norm"]):
        return None
    highest = {}
    for norm, group in summary.groupby("norm"):
        trained = group[group["val/acc mean"] > LEARNED]
        highest[norm] = float(trained["lr"].max()) if len(trained) else math.nan
    evidence = ", ".join(f"{norm}: {'none' if math.isnan(v) else f'{v:g}'}" for norm, v in highest.items())
    bn = [v for n, v in highest.items() if n in BN_NORMS]
    if not bn:
        return None
    claim = f"BN trains at higher learning rates (highest lr with test acc > {LEARNED})"
    none = highest["none"]
    if math.isnan(none):
        reason = " — without norm no learning rate trained in this budget, so there is no range to compare"
        return Finding("F5", claim, evidence + reason, "not measurable")
    verdict = "reproduced" if all(not math.isnan(v) and v > none for v in bn) else "not reproduced"
    return Finding("F5", claim, evidence, verdict)


GN_FLAT = ("group", "layer")  # F6: the GN paper's claim is about these two (and BN)


def family(norm: str) -> str:
    """What F6 groups a norm kind with (ghost BN is BN over its virtual batches); unknown: itself."""
    return NORMS[norm].family if norm in NORMS else norm


def by_grid(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per (setup, grid it serves), with its norm ``family``: a setup two grids share
    ("; "-separated ``grid``) counts in both; a study without grids is one grid named ""."""
    grids = summary["grid"].fillna("").str.split("; ") if "grid" in summary else [[""]] * len(summary)
    table = summary.assign(grid=grids, family=summary["norm"].map(family))
    return table.explode("grid")


def _where(row: dict) -> str:
    statistics = row.get("statistics_batch", row["batch_size"])
    if statistics != row["batch_size"]:
        return f"statistics batch {statistics:g} (SGD {row['batch_size']:g})"
    return f"batch {row['batch_size']:g}"


def _diverged(row: dict) -> int:
    return int(row.get("diverged", 0) or 0)


@dataclass(frozen=True)
class Drop:
    """A cell's drop from its curve's best: the fall test (more than one point below, beyond noise;
    Holm-adjusted over all curves' drops) and the equivalence test (less than one point below,
    beyond noise; raw: a curve's flatness combines them)."""

    row: dict
    fall: Contrast
    p_fall: float
    p_within: float


@dataclass(frozen=True)
class Curve:
    """One norm family's accuracy over the statistics batch within one grid. It *falls* where a
    cell is more than one point below the best beyond noise, or where a seed diverged (that seed
    did not stay within a point, whatever the others' mean); it is *flat* only where every cell is
    shown within a point of the best (one-sided t, H1: drop < 1 point, for every cell: an
    intersection-union test, whose p is the largest of its cells', Holm-adjusted over the curves as
    ``p_flat``); else it is undecided: the seeds cannot tell a fall from noise."""

    grid: str
    family: str
    rows: list[dict]
    best: dict
    drops: list[Drop]
    p_flat: float = math.nan

    @property
    def falls(self) -> list[dict]:
        beyond_noise = [d.row for d in self.drops if d.p_fall < ALPHA]
        return beyond_noise + [row for row in self.rows if _diverged(row) and row not in beyond_noise]

    @property
    def state(self) -> str:
        if self.falls:
            return "falls"
        return "flat" if self.p_flat < ALPHA else "undecided"

    def describe(self) -> str:
        where = f" [{self.grid}]" if self.grid else ""
        text = f"{self.family}{where}: best {self.best['val/acc mean']:.3f} at {_where(self.best)}"
        if self.drops:
            worst = max(self.drops, key=lambda drop: drop.fall.estimate)
            text += f", largest fall {worst.fall.estimate:+.3f} at {_where(worst.row)} ({_p(worst.p_fall)})"
        for row in self.rows:
            if _diverged(row):
                seeds = max(int(row["n"]) + int(row.get("failed", 0) or 0), _diverged(row))
                text += f", diverged in {_diverged(row)} of {seeds} seeds at {_where(row)}"
        if self.state == "falls":
            return text + f" → falls at {', '.join(_where(r) for r in self.falls)}"
        if self.state == "flat":
            return text + f" → flat (every cell within a point of the best: {_p(self.p_flat)})"
        return text + f" → undecided (within a point not shown: {_p(self.p_flat)})"


def statistics_batch_curves(summary: pd.DataFrame, families: Iterable[str] | None = None) -> list[Curve]:
    """Every (grid, family) curve over statistics batches >= 2 with at least two cells (of
    ``families`` if given; "none" never), both tests Holm-corrected over all the curves' drops.
    Cells whose every seed diverged have no mean; they stay in their curve as falls."""
    table = by_grid(summary)
    if "statistics_batch" not in table:
        table["statistics_batch"] = table["batch_size"]
    table = table[(table["statistics_batch"] >= 2) & (table["norm"] != "none")]
    diverged = table["diverged"].fillna(0) > 0 if "diverged" in table else False
    table = table[((table["n"] > 0) & table["val/acc mean"].notna()) | diverged]
    if families is not None:
        table = table[table["family"].isin(list(families))]
    found = []
    for (grid, name), group in table.groupby(["grid", "family"]):
        rows = group.to_dict("records")
        measured = [row for row in rows if row["n"] > 0 and not math.isnan(row["val/acc mean"])]
        if len(rows) < 2 or not measured:
            continue
        best = max(measured, key=lambda row: row["val/acc mean"])
        others = [row for row in measured if row is not best]
        falls = [contrast([_term(best), _term(row, sign=-1)], margin=MARGIN) for row in others]
        within = [contrast([_term(row), _term(best, sign=-1)], margin=-MARGIN) for row in others]
        found.append((str(grid), str(name), rows, best, list(zip(others, falls, within, strict=True))))
    p_fall = iter(holm([fall.p for *_, tests in found for _, fall, _ in tests]))
    p_flat = iter(holm([max((within.p for *_, within in tests), default=0.0) for *_, tests in found]))
    return [
        Curve(
            grid,
            name,
            rows,
            best,
            [Drop(row, fall, next(p_fall), within.p) for row, fall, within in tests],
            next(p_flat),
        )
        for grid, name, rows, best, tests in found
    ]


def small_batches_within_a_point(summary: pd.DataFrame) -> Finding | None:
    """F6 (the GN paper): group and layer norm stay within one point of their best accuracy down
    to a statistics batch of 2; BN does not. Judged over each norm's whole curve (statistics batch
    >= 2) within each grid of the study (``Curve``: falls, flat only where shown within a point,
    else undecided; Holm over the finding's comparisons). Undecided curves make it not measurable."""
    curves = statistics_batch_curves(summary, (*GN_FLAT, "BN"))
    have = {curve.family for curve in curves}
    stats = {row["statistics_batch"] for curve in curves for row in curve.rows}
    if not have & set(GN_FLAT) or "BN" not in have or 2 not in stats:
        return None
    claim = "group and layer norm stay within 1 point of their best accuracy down to batch 2; BN does not"
    evidence = "; ".join(curve.describe() for curve in curves)
    stuck = unconverged(row for curve in curves for row in curve.rows)
    if stuck:
        return _not_converged("F6", claim, evidence, stuck)
    undecided = [f"{c.family} [{c.grid}]" if c.grid else c.family for c in curves if c.state == "undecided"]
    if undecided:
        return Finding(
            "F6", claim, evidence, f"not measurable: too few seeds to decide {', '.join(undecided)}"
        )
    expected = all(c.state == "flat" for c in curves if c.family in GN_FLAT) and all(
        c.state == "falls" for c in curves if c.family == "BN"
    )
    return Finding("F6", claim, evidence, "reproduced" if expected else "not reproduced")


F8_CLAIM = "Which norms stay within 1 point of their best accuracy down to statistics batch 2?"
F8_HEADINGS = {
    "flat": "stay within a point",
    "falls": "fall",
    "undecided": "undecided (too few seeds)",
    "unconverged": "not measurable",
}


def _curve_answers(summary: pd.DataFrame) -> dict[str, tuple[str, Curve]] | None:
    """F8's answer per curve (its label -> a key of ``F8_HEADINGS`` and the curve), or None where
    the study has no curve down to statistics batch 2."""
    curves = statistics_batch_curves(summary)
    stats = {row["statistics_batch"] for curve in curves for row in curve.rows}
    if not curves or 2 not in stats:
        return None
    answers = {}
    for curve in curves:
        label = curve.family + (f" [{curve.grid}]" if curve.grid else "")
        stuck = unconverged(curve.rows)
        unmeasured = stuck and not any(_diverged(row) for row in curve.rows)  # a diverged seed is final
        answers[label] = ("unconverged" if unmeasured else curve.state, curve)
    return answers


def which_stay_within_a_point(summary: pd.DataFrame) -> Finding | None:
    """F8, the statistics-batch study's question for every norm it trains: which stay within one
    point of their best accuracy down to a statistics batch of 2 (F6's test, per grid, Holm over
    all curves): flat, falls, or undecided when the seeds cannot tell a fall from noise. A curve
    with an unconverged cell is "not measurable" on its own (unless a seed diverged: that is
    final); the others still answer."""
    answers = _curve_answers(summary)
    if answers is None:
        return None
    grouped: dict[str, list[str]] = {key: [] for key in F8_HEADINGS}
    for label, (key, curve) in answers.items():
        if key == "unconverged":
            stuck = unconverged(curve.rows)
            label += f" (not converged: {', '.join(stuck[:3]) + (' ...' if len(stuck) > 3 else '')})"
        grouped[key].append(label)
    verdict = "; ".join(f"{F8_HEADINGS[key]}: {', '.join(names)}" for key, names in grouped.items() if names)
    return Finding("F8", F8_CLAIM, "; ".join(curve.describe() for _, curve in answers.values()), verdict)


def curves_over_budgets(at: dict[str, pd.DataFrame]) -> Finding | None:
    """F8 at every budget (``at``: its label -> the summary there, smallest first), curve by curve:
    a norm's answer holds across budgets where it is the same at the two largest (and decided: flat
    or falls), else the curve is budget-dependent; a table gives each curve's answer and largest
    fall at each budget. (No extrapolation to the next doubling, as for ``over_budgets``.)"""
    found = {budget: _curve_answers(summary) for budget, summary in at.items()}
    judged = {budget: answers for budget, answers in found.items() if answers is not None}
    if len(judged) < 2:  # curves down to batch 2 at one budget only: judged there
        return which_stay_within_a_point(at[next(iter(judged))]) if judged else None
    budgets = list(judged)
    labels = list(dict.fromkeys(label for answers in judged.values() for label in answers))

    def cell(budget: str, label: str) -> str:
        if label not in judged[budget]:
            return "–"
        key, curve = judged[budget][label]
        worst = max((drop.fall.estimate for drop in curve.drops), default=math.nan)
        return f"{F8_HEADINGS[key]} (largest fall {worst * 100:+.1f} pt)"

    outcomes = ("holds", "budget-dependent", "undecided", "not measurable")
    grouped: dict[str, list[str]] = {key: [] for key in outcomes}
    header = "| norm [grid] | " + " | ".join(budgets) + " | across budgets |"
    rows = [header, "|---" * (len(budgets) + 2) + "|"]
    for label in labels:
        last, before = (judged[b][label][0] if label in judged[b] else None for b in budgets[-2:])
        if last in ("flat", "falls") and before == last:
            across = f"{F8_HEADINGS[last]} at {budgets[-2]} and {budgets[-1]}"
            grouped["holds"].append(f"{label} {F8_HEADINGS[last]}")
        else:
            undecided = {last, before} <= {"flat", "falls", "undecided"} and "undecided" in {last, before}
            missing = last in (None, "unconverged") or before in (None, "unconverged")
            across = "not measurable" if missing else "undecided" if undecided else "budget-dependent"
            grouped[across].append(label)
        rows.append(f"| {label} | " + " | ".join(cell(b, label) for b in budgets) + f" | {across} |")
    verdict = f"at {budgets[-2]} and {budgets[-1]}: " + (", ".join(grouped.pop("holds")) or "no curve holds")
    verdict += "".join(f"; {key}: {', '.join(names)}" for key, names in grouped.items() if names)
    evidence = "judged at every budget; the largest: " + "; ".join(
        curve.describe() for _, curve in judged[budgets[-1]].values()
    )
    return Finding("F8", F8_CLAIM, evidence, verdict, "\n".join(rows))


def _difference(row: dict, base: dict, metric: str) -> tuple[Contrast, str]:
    """Setup minus baseline: a paired t test where both ran the same seeds at the same batch (same
    init and data orders), else Welch's."""
    values, base_values = row.get(f"{metric} values"), base.get(f"{metric} values")
    paired = (
        isinstance(values, tuple)
        and isinstance(base_values, tuple)
        and row.get("seeds") == base.get("seeds")
        and row["batch_size"] == base["batch_size"]
        and len(values) == len(base_values)
    )
    if paired:
        return paired_two_sided(list(values), list(base_values)), "paired t"
    return welch_two_sided(_term(row, metric), _term(base, metric)), "Welch t"


def _against(summary: pd.DataFrame, base: dict, metric: str, counted: bool) -> tuple[str, str]:
    """Evidence and answer for one metric: each setup's mean, its difference from the baseline,
    the test's Holm-adjusted p; a difference counts at p < 0.05 and at least one point."""
    rows = [r for r in summary.to_dict("records") if not math.isnan(r[f"{metric} mean"])]
    compared = [r for r in rows if r["setup"] != base["setup"] and r["n"] > 0]
    tests = [_difference(r, base, metric) for r in compared]
    adjusted = dict(zip([r["setup"] for r in compared], holm([c.p for c, _ in tests]), strict=True))
    parts, answers = [], []
    for row in rows:
        shown = f"{row['setup']} {_fmt(row[f'{metric} mean'], row[f'{metric} sd'], row['n'])}"
        shown += f", {row['parameters']:,.0f} parameters" if counted else ""
        if row["setup"] not in adjusted:
            parts.append(shown + (" (baseline)" if row["setup"] == base["setup"] else ""))
            continue
        result, test = tests[compared.index(row)]
        p = adjusted[row["setup"]]
        parts.append(f"{shown}: {result.estimate:+.3f} ({test}, {_p(p)})")
        if unconverged([row, base]):
            judged = f"not measurable (not converged: {', '.join(unconverged([row, base]))})"
        elif p < ALPHA and abs(result.estimate) >= MARGIN:
            judged = f"{'better' if result.estimate > 0 else 'worse'} by {abs(result.estimate):.3f}"
        else:
            judged = "no difference beyond noise"
        answers.append(f"{row['setup']} {judged}")
    return "; ".join(parts), "; ".join(answers)


def _ladder_table(
    history: pd.DataFrame, setups: list[str], baseline: str, metric: str
) -> tuple[str, list[str]]:
    """F7 over the ladder for one metric: the evidence table and one verdict per setup."""
    budgets = ladder.budgets(history, metric)
    cells = {b: {s: ladder.values(history, s, metric, b) for s in setups} for b in budgets}
    judged = {b: ladder.at_budget(cells[b], baseline, ladder.label(history, b)) for b in budgets}
    epochs = " / ".join(ladder.label(history, b) for b in budgets)
    head = [
        "setup (n)",
        f"mean at {epochs}",
        f"− {baseline} at each",
        "test",
        "Holm p (differ / within a point) at the largest",
        "verdict at each budget",
        "across budgets",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    verdicts = []
    for setup in setups:
        means = []
        for b in budgets:
            finite = [v for v in cells[b][setup].values() if math.isfinite(v)]
            means.append(f"{sum(finite) / len(finite):.3f}" if finite else "–")
        n = len(cells[budgets[-1]][setup])
        if setup == baseline:
            lines.append(f"| {setup} ({n}) | {' / '.join(means)} | (baseline) | | | | |")
            continue
        steps = [judged[b][setup] for b in budgets]
        last = steps[-1]
        result = ladder.across(steps)
        differences = " / ".join(f"{100 * a.contrast.estimate:+.1f} pt" for a in steps)
        at_each = " / ".join(a.verdict for a in steps)
        across = f"**{result.kind}**" + (f" ({result.assumption})" if result.assumption else "")
        p = f"{last.p:.2g} / {last.p_within:.2g}"
        row = [f"{setup} ({n})", " / ".join(means), differences, last.test, p, at_each, across]
        lines.append("| " + " | ".join(row) + " |")
        verdicts.append(f"{setup}: {result.statement}")
    return "\n".join(lines), verdicts


def against_baseline_over_budgets(
    summary: pd.DataFrame, history: pd.DataFrame, question: str, baseline: str
) -> Finding:
    """F7 over a ladder of budgets (``normlab.report.ladder``): each setup against the baseline at
    every budget, with the moving statistics and, where the setups have BN, PreciseBN's."""
    setups = list(summary["setup"])
    metrics = [m for m in ladder.BUDGET_METRICS if not history[history["metric"] == m].empty]
    tables, verdicts = [], []
    for metric in metrics:
        # the setups that have the metric at all (no PreciseBN without BN), the baseline first among them
        have = set(history.loc[history["metric"] == metric, "setup"])
        if baseline not in have:
            continue
        table, verdict = _ladder_table(history, [s for s in setups if s in have], baseline, metric)
        tables.append(f"`{metric}`:\n\n{table}")
        verdicts.append(f"{ladder.BUDGET_METRICS[metric]}: " + "; ".join(verdict))
    evidence = "paired t where setups share seeds, else Welch; Holm over the setups at each budget"
    return Finding(
        "F7", question, evidence, f"against {baseline}, " + " | ".join(verdicts), "\n\n".join(tables)
    )


def against_baseline(
    summary: pd.DataFrame, question: str | None, baseline: str | None, history: pd.DataFrame | None = None
) -> Finding | None:
    """F7: each setup against the study's baseline setup, in mean test accuracy with the moving
    statistics (``val/acc``) and, for the setups with BN, with PreciseBN statistics, whose
    seed-to-seed spread is smaller (F4). Holm over the setups of each metric. Over a ladder of
    budgets where the runs have one (``against_baseline_over_budgets``)."""
    if not question or not baseline or baseline not in set(summary["setup"]):
        return None
    if history is not None and len(ladder.budgets(history)) >= 2:
        return against_baseline_over_budgets(summary, history, question, baseline)
    base = summary[summary["setup"] == baseline].iloc[0].to_dict()
    counted = summary["parameters"].notna().all() and summary["parameters"].nunique() > 1
    precise = summary.loc[summary["setup"] != baseline, "val/acc_precise mean"].notna().any()
    metrics = ["val/acc"] + (
        ["val/acc_precise"] if precise and not math.isnan(base["val/acc_precise mean"]) else []
    )
    evidence, verdicts = [], []
    for metric in metrics:
        parts, answer = _against(summary, base, metric, counted and metric == "val/acc")
        evidence.append(f"{metric}: {parts}")
        verdicts.append(f"{metric}: {answer}")
    return Finding("F7", question, " | ".join(evidence), f"against {baseline}, " + " | ".join(verdicts))


SUMMARY_CHECKS = (
    batch_size_matters_more_with_bn,
    batch_one_learns_nothing,
    precise_bn_narrows_spread,
    bn_allows_higher_lr,
    small_batches_within_a_point,
    which_stay_within_a_point,
)


def over_budgets(
    check: Callable[[pd.DataFrame], Finding | None], at: dict[int, pd.DataFrame]
) -> Finding | None:
    """A finding judged on a summary, judged at every budget (``at``: its label -> the summary
    there, smallest first):
    it holds across budgets where its verdict is the same at the two largest, else it is
    budget-dependent; the evidence is a table of its verdict and numbers at each budget. (Unlike
    F7's verdict, no extrapolation to the next doubling: these verdicts have no single effect.)"""
    found = {budget: check(summary) for budget, summary in at.items()}
    judged = {budget: finding for budget, finding in found.items() if finding is not None}
    if not judged:
        return None
    budgets = list(judged)
    last = judged[budgets[-1]]
    rows = ["| budget | verdict | evidence |", "|---|---|---|"]
    rows += [f"| {b} | {judged[b].verdict} | {judged[b].evidence.replace('|', '/')} |" for b in budgets]
    if len(budgets) >= 2 and judged[budgets[-2]].verdict == last.verdict:
        verdict = f"{last.verdict} at {budgets[-2]} and {budgets[-1]} (holds across budgets)"
    else:
        verdict = "budget-dependent: " + "; ".join(f"{judged[b].verdict} at {b}" for b in budgets)
    return Finding(last.name, last.claim, "judged at every budget", verdict, "\n".join(rows))


@dataclass(frozen=True)
class LrCheck:
    """One finding at the smallest budget at the scaled lr and at the check grid's other lrs."""

    name: str
    verdicts: dict[float, str]  # lr factor (1.0: the scaled lr) -> the finding's verdict there
    means: dict[float, float]  # lr factor -> the mean test accuracy of the cells compared
    dependent: str  # why the verdict is lr-dependent, or ""


def lr_dependence(main: pd.DataFrame, checked: pd.DataFrame, history: pd.DataFrame) -> list[LrCheck]:
    """Is the lr the finding? Each summary finding at the smallest budget of the main grid (its
    scaled lr) and of the check grid's cells at other lrs (``lr_factor``, one budget: the same
    size): lr-dependent where its verdict changes at an lr whose cells reach a higher mean test
    accuracy (``ladder.lr_dependent``)."""
    rungs = ladder.budgets(history)
    if checked.empty or not rungs:
        return []
    at = {1.0: ladder.summary_at(main, history, rungs[0])}
    for factor, cells in checked.groupby("lr_factor"):
        at[float(factor)] = ladder.summary_at(cells, history, 1)
    results = []
    for check in SUMMARY_CHECKS:
        found = {factor: check(summary) for factor, summary in at.items()}
        if found[1.0] is None:
            continue
        verdicts = {f: finding.verdict for f, finding in found.items() if finding is not None}
        means = {f: float(at[f]["val/acc mean"].mean()) for f in verdicts}
        others = {f: (verdicts[f], means[f]) for f in verdicts if f != 1.0}
        dependent = ladder.lr_dependent(verdicts[1.0], means[1.0], others)
        results.append(LrCheck(found[1.0].name, verdicts, means, dependent))
    return results


def evaluate(
    summary: pd.DataFrame, history: pd.DataFrame, question: str | None = None, baseline: str | None = None
) -> list[Finding]:
    """Every check whose cells the study has; ``question`` and ``baseline`` come from the study's
    ``report`` config. Where the runs have a ladder of budgets, each check at every budget."""
    budgets = ladder.budgets(history)
    if len(budgets) >= 2:
        at = {ladder.label(history, rung): ladder.summary_at(summary, history, rung) for rung in budgets}
        checks = [
            converges_faster(summary, history),
            *(over_budgets(check, at) for check in SUMMARY_CHECKS if check is not which_stay_within_a_point),
            curves_over_budgets(at),
            against_baseline(summary, question, baseline, history),
        ]
        return [finding for finding in checks if finding is not None]
    checks = [
        converges_faster(summary, history),
        batch_size_matters_more_with_bn(summary),
        batch_one_learns_nothing(summary),
        precise_bn_narrows_spread(summary),
        bn_allows_higher_lr(summary),
        small_batches_within_a_point(summary),
        which_stay_within_a_point(summary),
        against_baseline(summary, question, baseline, history),
    ]
    return [finding for finding in checks if finding is not None]
