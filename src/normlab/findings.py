"""Verdicts on the claims users come to check, computed from a study's summary and curves.

Each check returns None when the study lacks the cells it needs, else a Finding whose verdict is
"reproduced", "not reproduced" or "not measurable" (with the reason), always with the numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

BN_NORMS = ("scratch", "native")
CHANCE = 0.1
NEAR_CHANCE = CHANCE + 0.1  # "learns nothing": below this on 10 balanced classes
LEARNED = 0.5  # a run "trains" at a learning rate when its mean test accuracy exceeds this
MARGIN = 0.01  # one accuracy point


@dataclass(frozen=True)
class Finding:
    name: str
    claim: str
    evidence: str
    verdict: str


def _fmt(mean: float, sd: float, n: int) -> str:
    return f"{mean:.3f}" + ("" if math.isnan(sd) else f" ± {sd:.3f}") + f" (n={n})"


def converges_faster(summary: pd.DataFrame, history: pd.DataFrame) -> Finding | None:
    """F1: epoch-1 test accuracy of BN vs no norm, at the same batch size and learning rate."""
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
    parts, faster = [], []
    for norm in [n for n in BN_NORMS if n in per_norm.index]:
        bn = per_norm.loc[norm]
        se = math.sqrt(
            ((bn["std"] ** 2) / bn["count"] if bn["count"] > 1 else 0)
            + ((none["std"] ** 2) / none["count"] if none["count"] > 1 else 0)
        )
        faster.append(bn["mean"] - none["mean"] > max(2 * se, MARGIN))
        parts.append(f"{norm} {_fmt(bn['mean'], bn['std'], int(bn['count']))}")
    evidence = (
        f"epoch-1 test accuracy at batch {batch:g}, lr {lr:g}: {', '.join(parts)} vs none "
        f"{_fmt(none['mean'], none['std'], int(none['count']))}"
    )
    verdict = "reproduced" if all(faster) else "not reproduced"
    return Finding("F1", "BN converges faster", evidence, verdict)


def _val(summary: pd.DataFrame, norm: str, batch: float) -> float:
    cell = summary[(summary["norm"] == norm) & (summary["batch_size"] == batch)]
    return float(cell["val/acc mean"].iloc[0]) if len(cell) else math.nan


def batch_size_matters_more_with_bn(summary: pd.DataFrame) -> Finding | None:
    """F2: drop in test accuracy from each norm's best batch size to batch 2 and 4, BN vs none."""
    norms = set(summary["norm"])
    if summary["batch_size"].nunique() < 4 or "none" not in norms or not norms & set(BN_NORMS):
        return None
    best = summary.groupby("norm")["val/acc mean"].max()
    drops = {
        norm: {b: best[norm] - _val(summary, norm, b) for b in (2, 4)}
        for norm in ["none", *[n for n in BN_NORMS if n in norms]]
    }
    evidence = "; ".join(
        f"{norm}: best {best[norm]:.3f}, drop to batch 2 {d[2]:+.3f}, to batch 4 {d[4]:+.3f}"
        for norm, d in drops.items()
    )
    if best["none"] < NEAR_CHANCE:
        return Finding(
            "F2",
            "batch size matters more with BN",
            evidence + f" — the no-norm baseline never left chance "
            f"(best {best['none']:.3f}) in this budget, so there is no drop to compare with",
            "not measurable",
        )
    more = all(drops[norm][b] > drops["none"][b] + MARGIN for norm in drops if norm != "none" for b in (2, 4))
    return Finding(
        "F2", "batch size matters more with BN", evidence, "reproduced" if more else "not reproduced"
    )


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
    """F4: at lr 1.0, moving-statistics test accuracy varies across seeds; PreciseBN narrows it."""
    cells = summary[
        summary["norm"].isin(BN_NORMS)
        & ((summary["effective_lr"] - 1.0).abs() < 1e-9)
        & (summary["n"] >= 2)
        & summary["val/acc_precise sd"].notna()
    ]
    if cells.empty:
        return None
    ema, precise = cells["val/acc sd"].mean(), cells["val/acc_precise sd"].mean()
    ratio = precise / ema if ema > 0 else math.nan
    evidence = (
        f"over {len(cells)} BN cells at lr 1.0: mean sd over seeds {ema:.4f} with moving statistics, "
        f"{precise:.4f} with PreciseBN (ratio {ratio:.2f})"
    )
    if ema < MARGIN:
        return Finding(
            "F4",
            "moving-statistics accuracy varies across seeds; PreciseBN narrows it",
            evidence + "; the spread itself is under one point",
            "not reproduced",
        )
    verdict = "reproduced" if ratio < 1 else "not reproduced"
    return Finding(
        "F4", "moving-statistics accuracy varies across seeds; PreciseBN narrows it", evidence, verdict
    )


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


def _within(summary: pd.DataFrame, norm: str) -> tuple[bool, str]:
    """Whether ``norm`` stays within one point of its best mean test accuracy at every batch size
    from its best one down to 2, and the numbers that say so."""
    cells = summary[(summary["norm"] == norm) & (summary["batch_size"] >= 2)].dropna(subset=["val/acc mean"])
    best = cells.loc[cells["val/acc mean"].idxmax()]
    below = cells[cells["batch_size"] <= best["batch_size"]]
    worst = below.loc[below["val/acc mean"].idxmin()]
    at_two = cells.loc[cells["batch_size"] == 2, "val/acc mean"]
    ok = best["val/acc mean"] - worst["val/acc mean"] <= MARGIN
    if best["batch_size"] == 2:  # nothing below its best: accuracy still rises as batches shrink
        return ok, f"{norm}: best {best['val/acc mean']:.3f} at batch 2 itself"
    shown_at_two = f"{at_two.iloc[0]:.3f}" if len(at_two) else "–"
    text = (
        f"{norm}: best {best['val/acc mean']:.3f} at batch {best['batch_size']:g}, "
        f"{shown_at_two} at batch 2, lowest on the way down "
        f"{worst['val/acc mean']:.3f} at batch {worst['batch_size']:g}"
    )
    return ok, text


NO_BATCH_STATISTICS = ("group", "layer")


def small_batches_within_a_point(summary: pd.DataFrame) -> Finding | None:
    """F6 (the GN paper): which norms stay within one point of their best test accuracy at every
    batch size from their best one down to 2; GN and LN should, BN should not."""
    if summary["batch_size"].nunique() < 4 or 2 not in set(summary["batch_size"]):
        return None
    norms = [n for n in summary["norm"].unique() if n != "none"]
    if not set(norms) & set(NO_BATCH_STATISTICS) or not set(norms) & set(BN_NORMS):
        return None
    results = {norm: _within(summary, norm) for norm in norms}
    kept = [norm for norm, (ok, _) in results.items() if ok]
    evidence = "; ".join(text for _, text in results.values())
    evidence += f" — within one point down to batch 2: {', '.join(kept) or 'none of them'}"
    expected = all(results[n][0] for n in NO_BATCH_STATISTICS if n in results) and not any(
        results[n][0] for n in BN_NORMS if n in results
    )
    claim = "group and layer norm stay within 1 point of their best accuracy down to batch 2; BN does not"
    return Finding("F6", claim, evidence, "reproduced" if expected else "not reproduced")


def _against(summary: pd.DataFrame, base: pd.Series, metric: str, counted: bool) -> tuple[str, str]:
    """Evidence and answer for one metric: each setup's mean, its difference from the baseline
    and whether that exceeds two standard errors (Welch) and one point."""
    parts, answers = [], []
    for row in summary.to_dict("records"):
        mean, sd, n = row[f"{metric} mean"], row[f"{metric} sd"], row["n"]
        shown = f"{row['setup']} {_fmt(mean, sd, n)}"
        shown += f", {row['parameters']:,.0f} parameters" if counted else ""
        if math.isnan(mean):  # no BN layer, so no PreciseBN figure
            continue
        if row["setup"] == base["setup"] or n == 0:
            parts.append(shown + (" (baseline)" if row["setup"] == base["setup"] else ""))
            continue
        diff = mean - base[f"{metric} mean"]
        pairs = ((sd, n), (base[f"{metric} sd"], base["n"]))
        se = math.sqrt(sum((s**2) / k for s, k in pairs if k > 1))
        beyond = abs(diff) > max(2 * se, MARGIN)
        parts.append(f"{shown}: {diff:+.3f} ± {2 * se:.3f} (2 se)")
        judged = (
            f"{'better' if diff > 0 else 'worse'} by {abs(diff):.3f}"
            if beyond
            else "no difference beyond noise"
        )
        answers.append(f"{row['setup']} {judged}")
    return "; ".join(parts), "; ".join(answers)


def against_baseline(summary: pd.DataFrame, question: str | None, baseline: str | None) -> Finding | None:
    """F7: each setup against the study's baseline setup, in mean test accuracy with the moving
    statistics (``val/acc``) and, for the setups with BN, with PreciseBN statistics, whose
    seed-to-seed spread is smaller (F4). A difference counts beyond two standard errors and one point."""
    if not question or not baseline or baseline not in set(summary["setup"]):
        return None
    base = summary[summary["setup"] == baseline].iloc[0]
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


def evaluate(
    summary: pd.DataFrame, history: pd.DataFrame, question: str | None = None, baseline: str | None = None
) -> list[Finding]:
    """Every check whose cells the study has; ``question`` and ``baseline`` come from the study's
    ``report`` config."""
    checks = [
        converges_faster(summary, history),
        batch_size_matters_more_with_bn(summary),
        batch_one_learns_nothing(summary),
        precise_bn_narrows_spread(summary),
        bn_allows_higher_lr(summary),
        small_batches_within_a_point(summary),
        against_baseline(summary, question, baseline),
    ]
    return [finding for finding in checks if finding is not None]
