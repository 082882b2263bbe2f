"""Verdict logic on synthetic summaries: each finding must be able to say yes, no, or cannot tell."""

import math

import pandas as pd

from normlab import findings

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
        }
        row.update(cell)
        for mode in MODES:
            row.setdefault(f"{mode} mean", math.nan)
            row.setdefault(f"{mode} sd", math.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def _history(summary: pd.DataFrame, epoch1: dict[str, list[float]]) -> pd.DataFrame:
    rows = [
        (setup, f"{setup}-{i}", "val/acc", 1, value)
        for setup, values in epoch1.items()
        for i, value in enumerate(values)
    ]
    return pd.DataFrame(rows, columns=["setup", "run_id", "metric", "epoch", "value"])


def test_f1_converges_faster_both_ways() -> None:
    summary = _summary([{"norm": "none"}, {"norm": "native"}])
    fast = _history(
        summary, {"none-bs256-lr1.0": [0.10, 0.11, 0.10], "native-bs256-lr1.0": [0.70, 0.72, 0.69]}
    )
    finding = findings.converges_faster(summary, fast)
    assert finding.verdict == "reproduced" and "native 0.703" in finding.evidence
    same = _history(
        summary, {"none-bs256-lr1.0": [0.70, 0.60, 0.65], "native-bs256-lr1.0": [0.66, 0.64, 0.68]}
    )
    assert findings.converges_faster(summary, same).verdict == "not reproduced"


def _batch_cells(none_acc: dict[int, float], bn_acc: dict[int, float]) -> pd.DataFrame:
    cells = [{"norm": "none", "batch_size": float(b), "val/acc mean": a} for b, a in none_acc.items()]
    cells += [{"norm": "native", "batch_size": float(b), "val/acc mean": a} for b, a in bn_acc.items()]
    return _summary(cells)


def test_f2_batch_size_sensitivity_three_ways() -> None:
    sizes = (2, 4, 32, 256)
    summary = _batch_cells(
        dict(zip(sizes, (0.80, 0.81, 0.82, 0.82), strict=True)),
        dict(zip(sizes, (0.60, 0.75, 0.86, 0.87), strict=True)),
    )
    assert findings.batch_size_matters_more_with_bn(summary).verdict == "reproduced"
    summary = _batch_cells(
        dict(zip(sizes, (0.70, 0.75, 0.82, 0.82), strict=True)),
        dict(zip(sizes, (0.85, 0.86, 0.86, 0.87), strict=True)),
    )
    assert findings.batch_size_matters_more_with_bn(summary).verdict == "not reproduced"
    summary = _batch_cells(
        dict(zip(sizes, (0.10, 0.10, 0.10, 0.10), strict=True)),
        dict(zip(sizes, (0.60, 0.75, 0.86, 0.87), strict=True)),
    )
    finding = findings.batch_size_matters_more_with_bn(summary)
    assert finding.verdict == "not measurable" and "never left chance" in finding.evidence


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


def test_f4_precise_bn_spread() -> None:
    def cells(ema_sd: float, precise_sd: float) -> pd.DataFrame:
        return _summary(
            [
                {
                    "norm": "native",
                    "val/acc mean": 0.8,
                    "val/acc sd": ema_sd,
                    "val/acc_precise mean": 0.82,
                    "val/acc_precise sd": precise_sd,
                }
            ]
        )

    assert findings.precise_bn_narrows_spread(cells(0.04, 0.01)).verdict == "reproduced"
    assert findings.precise_bn_narrows_spread(cells(0.04, 0.05)).verdict == "not reproduced"
    assert findings.precise_bn_narrows_spread(cells(0.004, 0.001)).verdict == "not reproduced"


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
    assert (
        findings.evaluate(summary, pd.DataFrame(columns=["setup", "run_id", "metric", "epoch", "value"]))
        == []
    )


def _by_batch(accuracies: dict[str, dict[int, float]]) -> pd.DataFrame:
    return _summary(
        [
            {"norm": norm, "batch_size": float(batch), "val/acc mean": acc}
            for norm, per_batch in accuracies.items()
            for batch, acc in per_batch.items()
        ]
    )


def test_f6_names_the_norms_within_a_point_down_to_batch_2() -> None:
    flat = {2: 0.800, 4: 0.805, 8: 0.806, 16: 0.804, 256: 0.60}  # large batches undertrained: ignored
    falling = {2: 0.60, 4: 0.75, 8: 0.80, 16: 0.81, 256: 0.70}
    summary = _by_batch({"group": flat, "layer": flat, "scratch": falling, "native": falling})
    finding = findings.small_batches_within_a_point(summary)
    assert finding.verdict == "reproduced"
    assert "within one point down to batch 2: group, layer" in finding.evidence
    assert "scratch: best 0.810 at batch 16, 0.600 at batch 2" in finding.evidence
    dip = {**flat, 4: 0.79}  # 1.6 points below the best on the way down
    summary = _by_batch({"group": dip, "layer": flat, "scratch": falling})
    finding = findings.small_batches_within_a_point(summary)
    assert finding.verdict == "not reproduced" and "batch 2: layer" in finding.evidence
    rising = {2: 0.71, 4: 0.70, 8: 0.69, 256: 0.15}  # best at batch 2: within by construction, and said so
    finding = findings.small_batches_within_a_point(_by_batch({"group": rising, "scratch": falling}))
    assert "group: best 0.710 at batch 2 itself" in finding.evidence and finding.verdict == "reproduced"
    assert findings.small_batches_within_a_point(_by_batch({"scratch": falling, "none": flat})) is None


def test_f7_calls_a_difference_only_beyond_noise() -> None:
    summary = _summary(
        [
            {"norm": "scratch", "setup": "before", "val/acc mean": 0.85, "val/acc sd": 0.005, "n": 5},
            {"norm": "scratch", "setup": "after", "val/acc mean": 0.83, "val/acc sd": 0.005, "n": 5},
            {"norm": "scratch", "setup": "noisy", "val/acc mean": 0.80, "val/acc sd": 0.08, "n": 5},
        ]
    ).assign(parameters=[100, 90, 100])
    finding = findings.against_baseline(summary, "Before or after?", "before")
    assert finding.claim == "Before or after?"
    assert (
        finding.verdict == "against before, val/acc: after worse by 0.020; noisy no difference beyond noise"
    )
    assert "val/acc: before 0.850 ± 0.005 (n=5), 100 parameters (baseline)" in finding.evidence
    assert "after 0.830 ± 0.005 (n=5), 90 parameters: -0.020 ± 0.006 (2 se)" in finding.evidence
    # With PreciseBN numbers for every setup, the verdict is given for them too.
    precise = summary.assign(**{"val/acc_precise mean": [0.85, 0.85, 0.87], "val/acc_precise sd": 0.005})
    verdict = findings.against_baseline(precise, "Before or after?", "before").verdict
    assert verdict.endswith("| val/acc_precise: after no difference beyond noise; noisy better by 0.020")
    # A setup without BN has no PreciseBN figure: left out of that verdict only.
    precise.loc[precise["setup"] == "noisy", "val/acc_precise mean"] = math.nan
    verdict = findings.against_baseline(precise, "Before or after?", "before").verdict
    assert verdict.endswith("| val/acc_precise: after no difference beyond noise")
    assert "noisy no difference beyond noise |" in verdict
    assert findings.against_baseline(summary, "Before or after?", "missing") is None
    assert findings.against_baseline(summary, None, "before") is None
