"""Results at several budgets from one run: the trunk forks a decaying branch at each smaller budget.

Under ``lr_schedule=wsd`` the trunk trains at constant lr after its warm-up. When it has taken
``budget.fork_step`` steps of a smaller budget, a branch copies the net, the optimizer state and
the normalization buffers (they are the net's), runs that budget's decay on the batches the trunk
would see next, is evaluated in every eval mode and dropped; the trunk goes on untouched. The
largest budget is the trunk's own end (its decay, then the same evaluation). So a branch at budget
b is, step for step, a run whose largest budget is b (tests/training/test_branches.py).

Resume: a budget whose results the run already holds is not branched again; one interrupted
mid-branch has none, and the resumed trunk, replaying from its last epoch, forks it anew.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from normlab.config.budgets import Budget, LrSchedule
from normlab.config.console import say
from normlab.data.batches import Batch
from normlab.tracking.names import (
    BUDGET_PREFIX,
    BUDGET_SAMPLES,
    BUDGET_STEPS,
    BUDGET_VAL_ACC,
    VAL_ACC_BATCHSTATS,
    VAL_ACC_PRECISE,
)
from normlab.training.lifecycle import CellRun
from normlab.training.module import OptimizerFactory, sgd_step


def budget_metrics(budget: Budget, evaluated: dict[str, float]) -> dict[str, float]:
    """A budget's results under their ``budget/`` names, with its size."""
    return {
        **{BUDGET_PREFIX + key: value for key, value in evaluated.items()},
        BUDGET_STEPS: budget.steps,
        BUDGET_SAMPLES: budget.samples,
    }


def has_budget(run: CellRun, budget: Budget) -> bool:
    """Whether the run already holds the budget's results (budgets are logged smallest first)."""
    return run.recorder.recorded.get(BUDGET_VAL_ACC, -1) >= budget.epochs


def record_budget(run: CellRun, budget: Budget, evaluated: dict[str, float]) -> None:
    """The budget's results into the run at step = its epochs, and one line for the console."""
    run.log_epoch(budget_metrics(budget, evaluated), budget.epochs)
    shown = ", ".join(f"{key} {value:.4f}" for key, value in evaluated.items() if "acc" in key)
    say(f"[{run.name}] budget {budget.epochs} epochs ({budget.steps} steps): {shown}")


def record_end(
    run: CellRun, budgets: Sequence[Budget], shape: str, evaluated: dict[str, float]
) -> dict[str, float]:
    """The trunk's end, evaluated in every mode: PreciseBN's and batch statistics' accuracy at its
    last epoch and, under wsd, the largest budget's results; the metrics it adds to the final ones."""
    after = {key: evaluated[key] for key in (VAL_ACC_PRECISE, VAL_ACC_BATCHSTATS) if key in evaluated}
    run.log_epoch(after, budgets[-1].epochs)
    if shape == "wsd":  # constant and cosine runs have no budgets: they record what they always did
        record_budget(run, budgets[-1], evaluated)
    return after


class Forks:
    """Called after every SGD step of the trunk with the number of steps taken: at a smaller
    budget's decay start, ``branch(budget)`` unless ``done(budget)``."""

    def __init__(
        self, budgets: Sequence[Budget], done: Callable[[Budget], bool], branch: Callable[[Budget], None]
    ) -> None:
        self.at = {budget.fork_step: budget for budget in budgets}
        self.done = done
        self.branch = branch

    def __call__(self, steps: int) -> None:
        budget = self.at.get(steps)
        if budget is not None and not self.done(budget):
            self.branch(budget)


def decay(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Batch],
    schedule: LrSchedule,
    first_step: int,
) -> None:
    """Train ``net`` on ``batches`` from step ``first_step``, each step at the schedule's lr (as
    the trunk's LambdaLR sets it: the group's initial lr times the factor)."""
    net.train()
    for step, (images, labels) in enumerate(batches, start=first_step):
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * schedule.factor(step)
        sgd_step(torch.nn.functional.cross_entropy(net(images), labels), optimizer)


def solo_branch(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    make_optimizer: OptimizerFactory,
    budget: Budget,
    schedule: LrSchedule,
    batches: Iterable[Batch],
) -> nn.Module:
    """A copy of the trunk's ``net`` and ``optimizer`` (its state: momentum buffers) after the
    decay of ``budget`` on ``batches`` (those of its remaining steps)."""
    branch = copy.deepcopy(net)
    branch_optimizer = make_optimizer(branch.parameters())
    branch_optimizer.load_state_dict(optimizer.state_dict())
    decay(branch, branch_optimizer, batches, schedule.for_budget(budget.steps), budget.fork_step)
    return branch
