"""Verdict logic on synthetic summaries: each finding must be able to say yes, no, or cannot tell,
and an unconverged cell must turn a verdict into "not measurable"."""

import math

import pandas as pd
import pytest
from scipy import stats

from normlab.report import convergence, findings
from normlab.report import statistics as stats_tests
from normlab.report.statistics import Term

MODES = ("val/acc", "val/acc_precise", "val/acc_batchstats")


def _summary(cells: list[dict]) -> pd.DataFrame:
    rows = []
    for cell in cells:
        row = {
            "setup": f"{cell['norm']}-bs{cell.get('batch_size', 256)}-lr{cell.get('lr', 1.0)}",
            "batch_size": 256.0,
            "momentum": 0.1,
            "lr": 1.0,
            "effective_lr": 1.0,
            "n": 3,
            "failure": "",
            "converged": True,
        }
        row.update(cell)
        for mode in MODES:
            row.setdefault(f"{mode} mean", math.nan)
            row.setdefault(f"{mode} sd", 0.01 if mode == "val/acc" else math.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def _history(epoch1: dict[str, list[float]]) -> pd.DataFrame:
    rows = [
        (setup, f"{setup}-{i}", "val/acc", 1, value)
        for setup, values in epoch1.items()
        for i, value in enumerate(values)
    ]
    return pd.DataFrame(rows, columns=["setup", "run_id", "metric", "epoch", "value"])


# --- the tests themselves -------------------------------------------------------------------


def test_contrast_of_two_is_welchs_t_test() -> None:
    ours = stats_tests.contrast([Term(1, 0.85, 0.01, 5), Term(-1, 0.83, 0.02, 3)])
    scipy = stats.ttest_ind_from_stats(0.85, 0.01, 5, 0.83, 0.02, 3, equal_var=False, alternative="greater")
    assert ours.p == pytest.approx(scipy.pvalue) and ours.estimate == pytest.approx(0.02)
    two_sided = stats_tests.welch_two_sided(Term(1, 0.85, 0.01, 5), Term(1, 0.83, 0.02, 3))
    assert two_sided.p == pytest.approx(2 * scipy.pvalue)
    exact = Term(1, 0.85, 0.0, 3)
    assert stats_tests.welch_two_sided(exact, exact).p == 1.0  # no spread: equal means are equal
    assert stats_tests.welch_two_sided(exact, Term(1, 0.84, 0.0, 3)).p == 0.0
    assert math.isnan(stats_tests.contrast([Term(1, 0.8, math.nan, 1), Term(-1, 0.7, 0.01, 3)]).p)


def test_holm_and_the_prediction_interval() -> None:
    assert stats_tests.holm([0.01, 0.04, 0.03, math.nan]) == pytest.approx(
        [0.03, 0.06, 0.06, math.nan], nan_ok=True
    )
    low, high = stats_tests.prediction_interval(0.80, 0.02, 5)
    half = stats.t.ppf(0.975, 4) * 0.02 * math.sqrt(1.2)  # 2.78 sd, not 2
    assert (low, high) == pytest.approx((0.80 - half, 0.80 + half))


def test_paired_t_uses_the_per_seed_differences() -> None:
    base, setup = [0.80, 0.85, 0.75, 0.82], [0.810, 0.861, 0.759, 0.830]  # about +0.01 in every seed
    paired = stats_tests.paired_two_sided(setup, base)
    welch = stats_tests.welch_two_sided(
        Term(1, sum(setup) / 4, stats.tstd(setup), 4), Term(1, sum(base) / 4, stats.tstd(base), 4)
    )
    assert paired.p < 0.05 < welch.p  # the seeds' common swing cancels in the pairs


def test_f1_converges_faster_three_ways() -> None:
    summary = _summary([{"norm": "none", "val/acc mean": 0.8}, {"norm": "native", "val/acc mean": 0.85}])
    fast = _history({"none-bs256-lr1.0": [0.10, 0.11, 0.10], "native-bs256-lr1.0": [0.70, 0.72, 0.69]})
    finding = findings.converges_faster(summary, fast)
    assert (
        finding.verdict == "reproduced"
        and "native 0.703" in finding.evidence
        and "Holm p" in finding.evidence
    )
    same = _history({"none-bs256-lr1.0": [0.70, 0.60, 0.65], "native-bs256-lr1.0": [0.66, 0.64, 0.68]})
    assert findings.converges_faster(summary, same).verdict == "not reproduced"
    never = summary.assign(**{"val/acc mean": [0.10, 0.85]})  # the baseline never left chance
    finding = findings.converges_faster(never, fast)
    assert finding.verdict.startswith("not measurable: the no-norm baseline never left chance")


def _batch_cells(none_acc: dict[int, float], bn_acc: dict[int, float], sd: float = 0.01) -> pd.DataFrame:
    cells = [{"norm": "none", "batch_size": float(b), "val/acc mean": a} for b, a in none_acc.items()]
    cells += [{"norm": "native", "batch_size": float(b), "val/acc mean": a} for b, a in bn_acc.items()]
    return _summary(cells).assign(**{"val/acc sd": sd})


SIZES = (2, 4, 32, 256)


def test_f2_batch_size_sensitivity_four_ways() -> None:
    falling = dict(zip(SIZES, (0.60, 0.75, 0.86, 0.87), strict=True))
    summary = _batch_cells(dict(zip(SIZES, (0.80, 0.81, 0.82, 0.82), strict=True)), falling)
    finding = findings.batch_size_matters_more_with_bn(summary)
    assert finding.verdict == "reproduced" and "native +0.250" in finding.evidence
    summary = _batch_cells(
        dict(zip(SIZES, (0.70, 0.75, 0.82, 0.82), strict=True)),
        dict(zip(SIZES, (0.85, 0.86, 0.86, 0.87), strict=True)),
    )
    assert findings.batch_size_matters_more_with_bn(summary).verdict == "not reproduced"
    noisy = _batch_cells(dict(zip(SIZES, (0.80, 0.81, 0.82, 0.82), strict=True)), falling, sd=0.15)
    assert findings.batch_size_matters_more_with_bn(noisy).verdict == "not reproduced"  # not beyond noise
    summary = _batch_cells(dict(zip(SIZES, (0.10, 0.10, 0.10, 0.10), strict=True)), falling)
    finding = findings.batch_size_matters_more_with_bn(summary)
    assert finding.verdict == "not measurable" and "never left chance" in finding.evidence


def test_an_unconverged_cell_makes_f2_not_measurable() -> None:
    summary = _batch_cells(
        dict(zip(SIZES, (0.80, 0.81, 0.82, 0.82), strict=True)),
        dict(zip(SIZES, (0.60, 0.75, 0.86, 0.87), strict=True)),
    )
    summary.loc[(summary["norm"] == "native") & (summary["batch_size"] == 2), "converged"] = False
    finding = findings.batch_size_matters_more_with_bn(summary)
    assert finding.verdict == "not measurable: not converged at native-bs2.0-lr1.0"


def test_f3_batch_one() -> None:
    def cells(scratch_acc: float) -> pd.DataFrame:
        return _summary(
            [
                {
                    "norm": "native",
                    "batch_size": 1.0,
                    "n": 0,
                    "failure": "ValueError: Expected more than 1 value",
                },
                {
                    "norm": "scratch",
                    "batch_size": 1.0,
                    "val/acc mean": scratch_acc,
                    "val/acc_batchstats mean": 0.1,
                },
            ]
        )

    finding = findings.batch_one_learns_nothing(cells(0.11))
    assert finding.verdict == "reproduced" and "Expected more than 1 value" in finding.evidence
    assert findings.batch_one_learns_nothing(cells(0.55)).verdict == "not reproduced"


def _spread_cells(pairs: list[tuple[float, float]], n: int = 5) -> pd.DataFrame:
    return _summary(
        [
            {
                "norm": "native",
                "setup": f"cell{i}",
                "n": n,
                "val/acc mean": 0.8,
                "val/acc sd": ema_sd,
                "val/acc_precise mean": 0.82,
                "val/acc_precise sd": precise_sd,
            }
            for i, (ema_sd, precise_sd) in enumerate(pairs)
        ]
    )


def test_f4_precise_bn_spread_needs_an_f_test_per_cell() -> None:
    assert findings.precise_bn_narrows_spread(_spread_cells([(0.04, 0.005)])).verdict == "reproduced"
    equal = findings.precise_bn_narrows_spread(_spread_cells([(0.04, 0.04), (0.03, 0.03)]))
    assert equal.verdict == "not reproduced" and "narrower beyond noise in 0 of 2" in equal.evidence
    # One cell with a wide moving-statistics spread does not make the claim for the others.
    one = findings.precise_bn_narrows_spread(_spread_cells([(0.20, 0.01), (0.02, 0.02), (0.02, 0.019)]))
    assert one.verdict == "not reproduced" and "narrower beyond noise in 1 of 3" in one.evidence
    assert findings.precise_bn_narrows_spread(_spread_cells([(0.04, 0.01)], n=3)).verdict == "not reproduced"
    assert findings.precise_bn_narrows_spread(_spread_cells([(0.004, 0.001)])).verdict == "not reproduced"


def test_f5_learning_rate_range() -> None:
    lrs = (0.1, 1.0, 10.0)

    def cells(none_acc: tuple, bn_acc: tuple) -> pd.DataFrame:
        rows = [{"norm": "none", "lr": lr, "val/acc mean": a} for lr, a in zip(lrs, none_acc, strict=True)]
        return _summary(
            rows
            + [{"norm": "native", "lr": lr, "val/acc mean": a} for lr, a in zip(lrs, bn_acc, strict=True)]
        )

    assert findings.bn_allows_higher_lr(cells((0.6, 0.7, 0.1), (0.7, 0.8, 0.8))).verdict == "reproduced"
    assert findings.bn_allows_higher_lr(cells((0.6, 0.7, 0.7), (0.7, 0.8, 0.8))).verdict == "not reproduced"
    assert findings.bn_allows_higher_lr(cells((0.1, 0.1, 0.1), (0.7, 0.8, 0.8))).verdict == "not measurable"


def test_missing_cells_give_no_finding() -> None:
    summary = _summary([{"norm": "scratch", "val/acc mean": 0.8}])
    empty = pd.DataFrame(columns=["setup", "run_id", "metric", "epoch", "value"])
    assert findings.evaluate(summary, empty) == []


def _by_batch(accuracies: dict[str, dict[int, float]], sd: float = 0.002, n: int = 5) -> pd.DataFrame:
    return _summary(
        [
            {"norm": norm, "batch_size": float(batch), "val/acc mean": acc, "n": n}
            for norm, per_batch in accuracies.items()
            for batch, acc in per_batch.items()
        ]
    ).assign(**{"val/acc sd": sd})


FLAT = {2: 0.800, 4: 0.805, 8: 0.806, 16: 0.804, 256: 0.801}
FALLING = {2: 0.60, 4: 0.75, 8: 0.80, 16: 0.81, 256: 0.80}


def test_f6_judges_the_whole_curve_with_its_noise() -> None:
    finding = findings.small_batches_within_a_point(
        _by_batch({"group": FLAT, "layer": FLAT, "scratch": FALLING})
    )
    assert finding.verdict == "reproduced"
    assert "group: best 0.806 at batch 8" in finding.evidence and "→ flat" in finding.evidence
    assert "BN: best 0.810 at batch 16, largest fall +0.210 at batch 2" in finding.evidence
    dip = {**FLAT, 4: 0.78}  # 2.6 points below the best, beyond noise at sd 0.005
    finding = findings.small_batches_within_a_point(
        _by_batch({"group": dip, "layer": FLAT, "scratch": FALLING})
    )
    assert finding.verdict == "not reproduced" and "group: best 0.806 at batch 8" in finding.evidence
    # The same dip within seed-to-seed noise of 3 points is no fall, but no flatness either: at n = 5
    # the seeds cannot tell (F6 passed such a curve as flat before: absence of evidence).
    noisy = _by_batch({"group": dip, "layer": FLAT, "scratch": FALLING}, sd=0.03)
    noisy.loc[noisy["norm"] == "scratch", "val/acc sd"] = 0.005
    assert (
        findings.small_batches_within_a_point(noisy).verdict
        == "not measurable: too few seeds to decide group, layer"
    )
    assert (
        "group: best 0.806 at batch 8, largest fall +0.026 at batch 4 (Holm p = 1) → undecided (within a"
        in (findings.small_batches_within_a_point(noisy).evidence)
    )
    assert findings.small_batches_within_a_point(_by_batch({"scratch": FALLING, "none": FLAT})) is None


def test_f6_on_the_old_budget_artifact_curve_is_not_reproduced() -> None:
    """The batch_size page before the redesign: group norm 0.712 at batch 2 and 0.145 at batch 256
    (47 SGD steps), i.e. best at batch 2. 'Within a point from its best down to 2' held by
    construction; over its whole curve it falls 57 points."""
    group = {2: 0.712, 4: 0.705, 8: 0.694, 32: 0.55, 256: 0.145}
    layer = {2: 0.697, 4: 0.690, 8: 0.686, 32: 0.52, 256: 0.101}
    bn = {2: 0.505, 4: 0.70, 8: 0.761, 32: 0.75, 256: 0.616}
    summary = _by_batch({"group": group, "layer": layer, "scratch": bn}, sd=0.02, n=3)
    finding = findings.small_batches_within_a_point(summary)
    assert finding.verdict == "not reproduced"
    assert "group: best 0.712 at batch 2, largest fall +0.567 at batch 256" in finding.evidence


def test_an_unconverged_cell_makes_f6_not_measurable() -> None:
    summary = _by_batch({"group": FLAT, "layer": FLAT, "scratch": FALLING})
    summary.loc[(summary["norm"] == "group") & (summary["batch_size"] == 256), "converged"] = False
    assert findings.small_batches_within_a_point(summary).verdict.startswith(
        "not measurable: not converged at group"
    )


def test_f6_separates_grids_and_statistics_batches() -> None:
    """norm_batch: one SGD batch, the statistics batch varies (ghost BN); a second grid apart."""
    ghost = {"norm": "ghost", "batch_size": 128.0, "grid": "fixed"}
    rows = [
        {**ghost, "statistics_batch": float(b), "val/acc mean": a}
        for b, a in {2: 0.70, 8: 0.80, 32: 0.81}.items()
    ]
    rows += [{"norm": "scratch", "batch_size": 128.0, "statistics_batch": 128.0, "val/acc mean": 0.815}]
    group = {"norm": "group", "val/acc mean": 0.80, "grid": "gn"}
    rows += [{**group, "batch_size": float(8 * n), "statistics_batch": float(8 * n)} for n in (2, 8, 32)]
    rows[3]["grid"] = "fixed"
    summary = _summary([{**row, "n": 5} for row in rows]).assign(**{"val/acc sd": 0.005})
    finding = findings.small_batches_within_a_point(summary)
    assert "BN [fixed]: best 0.815 at batch 128, largest fall +0.115 at statistics batch 2 (SGD 128)" in (
        finding.evidence
    )
    assert "group [gn]" in finding.evidence and finding.verdict == "reproduced"


def test_f8_answers_for_every_norm_each_on_its_own_convergence() -> None:
    """The statistics-batch question for each norm trained: flat, falls, or not measurable when a
    cell of its own curve did not converge (the others still answer)."""
    summary = _by_batch({"scratch": FALLING, "frn": FLAT, "evonorm_b0": FLAT, "switchable": FALLING})
    summary.loc[(summary["norm"] == "evonorm_b0") & (summary["batch_size"] == 4), "converged"] = False
    finding = findings.which_stay_within_a_point(summary)
    assert finding.name == "F8"
    assert finding.verdict.startswith(
        "stay within a point: FRN; fall: BN, switchable; not measurable: EvoNorm-B0"
    )
    assert (
        "FRN: best 0.806 at batch 8" in finding.evidence
        and "switchable: best 0.810 at batch 16" in finding.evidence
    )
    # F6 keeps to its claim's norms
    f6 = findings.small_batches_within_a_point(
        _by_batch({"group": FLAT, "layer": FLAT, "scratch": FALLING, "frn": FALLING})
    )
    assert f6.verdict == "reproduced" and "FRN" not in f6.evidence
    no_batch_2 = _by_batch({"frn": {8: 0.80, 16: 0.80}, "scratch": {8: 0.80, 16: 0.80}})
    assert findings.which_stay_within_a_point(no_batch_2) is None


def test_a_diverged_cell_is_a_fall_not_a_missing_point() -> None:
    """EvoNorm-B0 whose every seed diverged at statistics batch 2 has no mean there; dropping the
    cell would leave a flat curve from 4 up. It falls at 2; a cell with one diverged seed of five
    falls too, whatever its other seeds' mean."""
    summary = _by_batch({"scratch": FALLING, "evonorm_b0": FLAT}).assign(diverged=0, failed=0)
    at_2 = (summary["norm"] == "evonorm_b0") & (summary["batch_size"] == 2)
    summary.loc[at_2, ["n", "val/acc mean", "diverged", "failed"]] = [0, float("nan"), 5, 5]
    finding = findings.which_stay_within_a_point(summary)
    assert "fall: BN, EvoNorm-B0" in finding.verdict
    assert "diverged in 5 of 5 seeds at batch 2 → falls at batch 2" in finding.evidence
    summary.loc[at_2, ["n", "val/acc mean", "diverged", "failed"]] = [4, 0.80, 1, 1]
    assert "diverged in 1 of 5 seeds at batch 2" in findings.which_stay_within_a_point(summary).evidence
    assert "EvoNorm-B0" in findings.which_stay_within_a_point(summary).verdict.split("fall: ")[1]


def test_f8_over_budgets_judges_each_curve_at_the_two_largest() -> None:
    """norm_batch's question at every budget, curve by curve: BN falls at both larger budgets (it
    holds), group norm falls at the middle budget and is flat at the largest (budget-dependent),
    FRN is flat at both but missing at the smallest (it still holds); the table has every budget."""
    dip = {**FLAT, 2: 0.75}
    at = {
        "B/4": _by_batch({"scratch": FALLING, "group": dip}),
        "B/2": _by_batch({"scratch": FALLING, "group": dip, "frn": FLAT}),
        "B": _by_batch({"scratch": FALLING, "group": FLAT, "frn": FLAT}),
    }
    finding = findings.curves_over_budgets(at)
    assert finding.verdict == "at B/2 and B: BN fall, FRN stay within a point; budget-dependent: group"
    assert "| group | fall (largest fall +5.6 pt) | fall (largest fall +5.6 pt) | stay within a point" in (
        finding.table
    )
    assert "| FRN | – | stay within a point" in finding.table
    assert (
        findings.curves_over_budgets({"B": at["B"]}).verdict
        == findings.which_stay_within_a_point(at["B"]).verdict
    )


def _f7_summary() -> pd.DataFrame:
    return _summary(
        [
            {"norm": "scratch", "setup": "before", "val/acc mean": 0.85, "val/acc sd": 0.005, "n": 5},
            {"norm": "scratch", "setup": "after", "val/acc mean": 0.83, "val/acc sd": 0.005, "n": 5},
            {"norm": "scratch", "setup": "noisy", "val/acc mean": 0.80, "val/acc sd": 0.08, "n": 5},
        ]
    ).assign(parameters=[100, 90, 100])


def test_f7_calls_a_difference_only_beyond_noise() -> None:
    summary = _f7_summary()
    finding = findings.against_baseline(summary, "Before or after?", "before")
    assert finding.claim == "Before or after?"
    assert (
        finding.verdict == "against before, val/acc: after worse by 0.020; noisy no difference beyond noise"
    )
    assert "val/acc: before 0.850 ± 0.005 (n=5), 100 parameters (baseline)" in finding.evidence
    assert "after 0.830 ± 0.005 (n=5), 90 parameters: -0.020 (Welch t, Holm p = " in finding.evidence
    # With PreciseBN numbers for every setup, the verdict is given for them too.
    precise = summary.assign(**{"val/acc_precise mean": [0.85, 0.85, 0.87], "val/acc_precise sd": 0.005})
    verdict = findings.against_baseline(precise, "Before or after?", "before").verdict
    assert verdict.endswith("| val/acc_precise: after no difference beyond noise; noisy better by 0.020")
    # A setup without BN has no PreciseBN figure: left out of that verdict only.
    precise.loc[precise["setup"] == "noisy", "val/acc_precise mean"] = math.nan
    verdict = findings.against_baseline(precise, "Before or after?", "before").verdict
    assert verdict.endswith("| val/acc_precise: after no difference beyond noise")
    assert findings.against_baseline(summary, "Before or after?", "missing") is None
    assert findings.against_baseline(summary, None, "before") is None


def test_f7_pairs_setups_that_share_seeds_and_waits_for_convergence() -> None:
    summary = _f7_summary()
    summary["seeds"] = "0,1,2,3"
    summary["val/acc values"] = [(0.80, 0.86, 0.74, 0.82), (0.78, 0.84, 0.72, 0.80), (0.8, 0.8, 0.8, 0.8)]
    finding = findings.against_baseline(summary, "Q?", "before")
    assert "after 0.830 ± 0.005 (n=5), 90 parameters: -0.020 (paired t, Holm p = " in finding.evidence
    summary.loc[summary["setup"] == "after", "converged"] = False
    verdict = findings.against_baseline(summary, "Q?", "before").verdict
    assert "after not measurable (not converged: after)" in verdict


def test_the_convergence_gate_reads_the_last_epoch() -> None:
    def history(accuracy: list[float], loss: list[float]) -> pd.DataFrame:
        rows = [("s", "r", "val/acc", e + 1, a) for e, a in enumerate(accuracy)]
        rows += [("s", "r", "train/loss", e + 1, v) for e, v in enumerate(loss)]
        return pd.DataFrame(rows, columns=["setup", "run_id", "metric", "epoch", "value"])

    gate = convergence.Gate(max_gain=0.005, max_loss_change=0.02)
    assert convergence.check(history([0.5, 0.80, 0.803], [1.0, 0.50, 0.495]), "s", gate)[0] is True
    converged, why = convergence.check(history([0.5, 0.79, 0.80], [1.0, 0.50, 0.495]), "s", gate)
    assert converged is False and why == "last epoch: test acc +1.0 pt, train loss 1.0% change"
    assert convergence.check(history([0.5, 0.80, 0.80], [1.0, 0.50, 0.48]), "s", gate)[0] is False
    assert convergence.check(history([0.5], [1.0]), "s", gate)[0] is None
    assert convergence.check(history([0.10, 0.13], [2.31, 2.30]), "s", gate) == (
        None,
        "at chance (test acc 0.130)",
    )
