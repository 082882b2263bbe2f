"""Verdicts across budgets (normlab.report.ladder) from synthetic per-seed values: robust,
budget-dependent, within a point only by equivalence, undecided with a small noisy sample, not
measurable at chance, settled or not, lr-dependent."""

import numpy as np
import pandas as pd

from normlab.report import ladder

BUDGETS = (2, 4, 8)
METRIC = "budget/val/acc"


def _history(cells: dict[str, dict[int, list[float]]]) -> pd.DataFrame:
    """setup -> budget -> per-seed values, as ``page.curves`` gives the budget metrics."""
    rows = [
        (setup, f"{setup}-{seed}", METRIC, budget, value, seed)
        for setup, by_budget in cells.items()
        for budget, per_seed in by_budget.items()
        for seed, value in enumerate(per_seed)
    ]
    return ladder.with_rungs(
        pd.DataFrame(rows, columns=["setup", "run_id", "metric", "epoch", "value", "seed"])
    )


def _noise(n: int, sd: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, sd, n)


def _cells(base: dict[int, float], effects: dict[int, float], n: int = 6, sd: float = 0.003):
    """A baseline and a setup whose per-seed values share each seed's noise (paired) plus a little
    of their own."""
    shared = {b: _noise(n, sd, b) for b in base}
    return {
        "base": {b: list(base[b] + shared[b]) for b in base},
        "setup": {b: list(base[b] + effects[b] + shared[b] + _noise(n, sd / 3, 100 + b)) for b in base},
    }


def _across(cells) -> ladder.Across:
    history = _history(cells)
    per_budget = [
        ladder.at_budget({s: ladder.values(history, s, METRIC, b) for s in cells}, "base", str(b))["setup"]
        for b in ladder.budgets(history)
    ]
    return ladder.across(per_budget)


BASE = {2: 0.85, 4: 0.87, 8: 0.88}


def test_an_effect_that_holds_and_barely_moves_is_robust() -> None:
    result = _across(_cells(BASE, {2: 0.030, 4: 0.028, 8: 0.027}))
    assert (result.kind, result.verdict) == ("robust", "better"), result.statement
    assert result.assumption == ""  # the change shrank: 0.2 then 0.1 points


def test_an_effect_that_shrinks_toward_its_threshold_is_budget_dependent() -> None:
    """Better by 5, 3, then 1.5 points: significant at 4 and 8 epochs, but 1.5 minus the last
    change (1.5) is no longer a point."""
    result = _across(_cells(BASE, {2: 0.05, 4: 0.03, 8: 0.015}))
    assert (result.kind, result.verdict) == ("budget-dependent", "better"), result.statement
    worse_then_better = _across(_cells(BASE, {2: -0.03, 4: -0.02, 8: 0.02}))
    assert worse_then_better.kind == "budget-dependent" and "worse" in worse_then_better.statement


def test_flat_needs_the_equivalence_test_and_a_small_noisy_sample_stays_undecided() -> None:
    flat = _across(_cells(BASE, {2: 0.001, 4: 0.0, 8: 0.0005}))
    assert (flat.kind, flat.verdict) == ("robust", "within a point"), flat.statement
    rng = np.random.default_rng(7)
    noisy = {
        setup: {b: list(BASE[b] + rng.normal(0, 0.02, 3)) for b in BUDGETS} for setup in ("base", "setup")
    }
    result = _across(noisy)
    assert result.kind == "undecided" or result.verdict == "undecided", result.statement


def test_growing_changes_are_flagged() -> None:
    result = _across(_cells(BASE, {2: 0.030, 4: 0.031, 8: 0.036}))
    assert "changes do not shrink" in result.assumption


def test_a_cell_at_chance_is_not_measurable() -> None:
    cells = _cells(BASE, {2: 0.0, 4: 0.0, 8: 0.0})
    cells["setup"] = {b: [0.1] * 6 for b in BUDGETS}
    result = _across(cells)
    assert result.kind == "not measurable" and "setup at chance" in result.statement


def test_a_cell_that_moved_two_points_between_budgets_is_not_settled() -> None:
    moved = _history(_cells(BASE, {2: 0.0, 4: 0.0, 8: 0.02}))
    assert ladder.settled(moved, "setup").settled is False
    assert ladder.settled(moved, "setup").change > 0.015
    still = _history(
        {"setup": {4: [0.88, 0.881, 0.879, 0.882, 0.88, 0.878], 8: [0.881, 0.881, 0.88, 0.882, 0.881, 0.879]}}
    )
    assert ladder.settled(still, "setup").settled is True
    few = _history({"setup": {4: [0.88, 0.87], 8: [0.882, 0.868]}})
    assert ladder.settled(few, "setup").settled is False  # n = 2: the equivalence cannot be shown


def test_a_verdict_that_changes_at_a_better_lr_is_lr_dependent() -> None:
    assert ladder.lr_dependent("better", 0.86, {0.5: ("better", 0.85), 2.0: ("within a point", 0.88)})
    assert ladder.lr_dependent("better", 0.86, {0.5: ("within a point", 0.80)}) == ""  # a worse lr
    # a check grid's 2 seeds that cannot decide change no verdict
    assert ladder.lr_dependent("reproduced", 0.86, {2.0: ("not measurable: too few seeds", 0.88)}) == ""


def test_a_finding_whose_verdict_changes_at_a_better_lr_is_reported_lr_dependent(monkeypatch) -> None:
    """The main grid's cells at their smallest budget against the check grid's at half and twice
    the lr: a finding that flips where the cells train better is lr-dependent, one that flips only
    where they train worse is not."""
    from normlab.report import findings

    def rows(setups: dict[str, tuple[float, list[float]]], budgets: tuple[int, ...]):
        summary = pd.DataFrame([{"setup": s, "lr_factor": f, "n": len(v)} for s, (f, v) in setups.items()])
        history = _history({s: {b: v for b in budgets} for s, (_, v) in setups.items()})
        return summary, history

    def verdict_by_mean(summary: pd.DataFrame):  # a finding: "holds" while the cells' mean is in (0.8, 0.85)
        holds = 0.8 < summary["val/acc mean"].mean() < 0.85
        return findings.Finding("FX", "claim", "evidence", "holds" if holds else "does not hold")

    monkeypatch.setattr(findings, "SUMMARY_CHECKS", (verdict_by_mean,))
    main, main_history = rows({"a": (1.0, [0.80, 0.81]), "b": (1.0, [0.82, 0.83])}, (2, 4))
    better, better_history = rows({"a x2": (2.0, [0.88, 0.89]), "b x2": (2.0, [0.86, 0.87])}, (1,))
    worse, worse_history = rows({"a x0.5": (0.5, [0.90, 0.91])}, (1,))
    worse_history = worse_history.assign(value=worse_history["value"] - 0.2)  # trains worse, flips too
    history = pd.concat([main_history, better_history.assign(run_id="c" + better_history["run_id"]),
                         worse_history.assign(run_id="w" + worse_history["run_id"])])  # fmt: skip
    checked = pd.concat([better, worse])
    (result,) = findings.lr_dependence(main, checked, history)
    assert result.verdicts == {1.0: "holds", 2.0: "does not hold", 0.5: "does not hold"}
    assert "lr-dependent" in result.dependent and "at 2x the lr" in result.dependent
    (unchanged,) = findings.lr_dependence(main, worse, history)
    assert unchanged.dependent == ""
