"""A cell's lr schedule and its ladder of budgets, in SGD steps.

Every schedule a branch could distort is in absolute steps (the warm-up here; batch renorm's hold
and ramp in its layer), so a branch forked at step s of a long run sees exactly what a run whose
largest budget is its own would see.

- ``constant``: the configured lr after the warm-up.
- ``cosine``: after the warm-up a half cosine down to 0 at the last step (Loshchilov & Hutter 2017).
- ``wsd``: warm-up, stable, decay (Hägele et al. 2024, arXiv 2405.18392): constant after the
  warm-up, then over the last ``cooldown`` share of the budget the 1-sqrt decay
  ``1 - sqrt((t - t0) / (T - t0))`` toward 0. One run gives annealed results at several budgets:
  at each smaller budget's decay start the run forks a branch that decays on the batches the run
  would see next (``normlab.training.branches``), and goes on at constant lr to the largest budget,
  which its own decay ends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from normlab.config.rules import ConfigError

SHAPES = ("constant", "cosine", "wsd")


@dataclass(frozen=True)
class Budget:
    """One rung of the ladder: ``epochs`` of ``steps`` SGD steps in all; its decay starts after
    ``fork_step`` steps (where the trunk forks its branch)."""

    epochs: int
    steps: int
    fork_step: int
    samples: int


@dataclass(frozen=True)
class LrSchedule:
    """The factor on the configured lr at each step (from 0) of a budget of ``total_steps``."""

    shape: str
    warmup_steps: int
    total_steps: int
    cooldown: float = 0.2  # wsd: the decay's share of the budget

    @property
    def decay_start(self) -> int:
        """The first step of the decay (wsd), or of the cosine after the warm-up."""
        if self.shape == "wsd":
            return self.total_steps - max(1, round(self.cooldown * self.total_steps))
        return self.warmup_steps

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.shape == "constant":
            return 1.0
        start = self.decay_start
        progress = min(1.0, (step - start) / max(self.total_steps - start, 1))
        if self.shape == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 if step < start else 1.0 - math.sqrt(progress)

    def for_budget(self, total_steps: int) -> LrSchedule:
        return LrSchedule(self.shape, self.warmup_steps, total_steps, self.cooldown)


def ladder_epochs(fractions: tuple[float, ...], epochs: int) -> list[int]:
    """Each fraction of ``epochs`` as a whole number of epochs, smallest first (ConfigError
    naming the fraction that is not one)."""
    budgets = []
    for fraction in sorted(set(fractions)):
        exact = Fraction(fraction).limit_denominator(1000) * epochs
        if exact.denominator != 1 or exact < 1:
            raise ConfigError(f"budget.ladder fraction {fraction} of {epochs} epochs is not a whole epoch")
        budgets.append(int(exact))
    return budgets


def whole_epochs(fractions: tuple[float, ...], epochs: int) -> int:
    """The smallest number of epochs >= ``epochs`` at which every fraction is a whole epoch."""
    unit = math.lcm(*(Fraction(f).limit_denominator(1000).denominator for f in fractions))
    return -(-epochs // unit) * unit


def ladder(
    schedule: LrSchedule, budget_epochs: tuple[int, ...], steps_per_epoch: int, samples_per_epoch: int
) -> list[Budget]:
    """The ladder's budgets in steps, each with the step its decay (and branch) starts at."""
    return [
        Budget(
            epochs,
            epochs * steps_per_epoch,
            schedule.for_budget(epochs * steps_per_epoch).decay_start,
            epochs * samples_per_epoch,
        )
        for epochs in budget_epochs
    ]
