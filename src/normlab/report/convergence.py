"""The convergence gate: did a setup's last epoch still change its result?

A setup (its seeds' mean curves) has converged when its last epoch raised the mean test accuracy by
less than ``max_gain`` and changed the mean training loss by less than ``max_loss_change`` of its
value; thresholds come from the study's ``report.converged``. A finding that needs an unconverged
setup says "not measurable" instead of a verdict: its number would still move with more budget.
A setup whose final mean test accuracy is below ``AT_CHANCE`` never left chance: the gate does not
apply (its epoch-to-epoch moves are noise around 0.1), and the findings treat it as learning nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from normlab.data.fashion_mnist import CHANCE

GATE_METRICS = ("val/acc", "train/loss")
AT_CHANCE = 2 * CHANCE  # twice chance: a cell below it learned nothing worth gating


@dataclass(frozen=True)
class Gate:
    max_gain: float = 0.005  # half a point of test accuracy in the last epoch
    max_loss_change: float = 0.02  # 2% of the training loss


def check(history: pd.DataFrame, setup: str, gate: Gate) -> tuple[bool | None, str]:
    """(converged, why) for one setup from its runs' per-epoch history; None when it has no second
    epoch to compare with."""
    curves = {}
    for metric in GATE_METRICS:
        rows = history[(history["setup"] == setup) & (history["metric"] == metric)]
        curves[metric] = rows.groupby("epoch")["value"].mean().sort_index()
    if any(len(curve) < 2 for curve in curves.values()):
        return None, "fewer than 2 epochs"
    accuracy, loss = curves["val/acc"], curves["train/loss"]
    if accuracy.iloc[-1] < AT_CHANCE:
        return None, f"at chance (test acc {accuracy.iloc[-1]:.3f})"
    gain = float(accuracy.iloc[-1] - accuracy.iloc[-2])
    change = float(abs(loss.iloc[-1] - loss.iloc[-2]) / max(abs(loss.iloc[-2]), 1e-12))
    converged = gain < gate.max_gain and change < gate.max_loss_change
    why = f"last epoch: test acc {100 * gain:+.1f} pt, train loss {100 * change:.1f}% change"
    return converged, why


def gate_all(history: pd.DataFrame, setups: list[str], gate: Gate) -> pd.DataFrame:
    """``converged`` (True/False/None) and ``convergence`` (the numbers) for each setup."""
    rows = [(setup, *check(history, setup, gate)) for setup in setups]
    return pd.DataFrame(rows, columns=["setup", "converged", "convergence"])
