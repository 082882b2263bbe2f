"""A fused group's branch at a smaller budget (``normlab.training.branches`` for one cell): the
K cells' weights and buffers copied, the budget's decay run on each cell's next batches, the
copy returned for each cell's evaluation. Plain SGD (``FusedSGD``) has no state to copy."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch

from normlab.config.budgets import Budget, LrSchedule
from normlab.data.batches import IndexBatches
from normlab.fused.model import FusedLeNet, FusedSGD
from normlab.fused.module import FusedClassifier, cell_losses, fused_step


def fused_branch(module: FusedClassifier, budget: Budget, batches: Sequence[IndexBatches]) -> FusedLeNet:
    """The group's model after ``budget``'s decay from the trunk's state at its fork, each cell
    on its own next batches (``batches``: the cells' SGD batches), diverged cells still masked."""
    model = copy.deepcopy(module.model)
    sgd = FusedSGD(model, module.live_lrs())
    schedule: LrSchedule = module.schedule.for_budget(budget.steps)
    count = budget.steps - budget.fork_step
    model.train()
    for step, cells in enumerate(
        zip(*(b.steps(budget.fork_step, count) for b in batches), strict=True), start=budget.fork_step
    ):
        images = torch.stack([images for images, _ in cells])
        labels = torch.stack([labels for _, labels in cells])
        fused_step(cell_losses(model(images), labels), module.alive, sgd, schedule.factor(step))
    return model
