"""Two more ways to evaluate a BN network, beside eval mode with its moving averages.

- PreciseBN (Wu & Johnson 2021; fvcore ``precise_bn.py``): recompute every BN layer's population
  statistics as a plain average over a fixed number of training batches, then evaluate.
- Batch statistics: normalize each test batch by its own statistics (train-mode BN), with test
  batches as large as the training batches, as the net saw them while it learned.

Both work on a copy of the model: its own statistics stay untouched.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable

import pytorch_lightning as pl
import torch
from torch import nn

from normlab.norms import BatchNorm

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
BN_LAYERS = (nn.modules.batchnorm._BatchNorm, BatchNorm)


def bn_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, BN_LAYERS)]


@torch.no_grad()
def precise_bn(model: nn.Module, batches: Batches, num_batches: int) -> nn.Module:
    """A copy of ``model`` whose BN statistics are the average over ``num_batches`` training batches.

    ``momentum=None`` makes each layer keep a cumulative (equal-weight) average of the batch means
    and unbiased variances it sees, which is fvcore's estimate; the layers see the inputs that the
    train-mode network upstream produces.
    """
    precise = copy.deepcopy(model)
    for layer in bn_layers(precise):
        layer.reset_running_stats()
        layer.momentum = None
    precise.train()
    for images, _ in itertools.islice(batches, num_batches):
        precise(images)
    return precise.eval()


@torch.no_grad()
def accuracy(model: nn.Module, batches: Batches, batch_statistics: bool = False) -> float:
    """Accuracy over ``batches``; with ``batch_statistics``, BN uses each batch's own statistics
    (on a copy, so no running statistic of ``model`` moves)."""
    if batch_statistics:
        model = copy.deepcopy(model).train()
    else:
        model.eval()
    correct = total = 0
    for images, labels in batches:
        correct += (model(images).argmax(dim=1) == labels).sum().item()
        total += labels.numel()
    return correct / total


class EvalModes(pl.Callback):
    """After training, logs ``val/acc_precise`` and ``val/acc_batchstats`` for networks with BN."""

    def __init__(self, train_batches: Batches, test_batches: Batches, precise_batches: int) -> None:
        self.train_batches = train_batches
        self.test_batches = test_batches
        self.precise_batches = precise_batches

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        net = pl_module.net  # the plain nn.Module: copying it does not copy the trainer
        if not bn_layers(net) or trainer.current_epoch == 0:
            return
        precise = precise_bn(net, self.train_batches, self.precise_batches)
        metrics = {
            "val/acc_precise": accuracy(precise, self.test_batches),
            "val/acc_batchstats": accuracy(net, self.test_batches, batch_statistics=True),
        }
        for logger in trainer.loggers:
            logger.log_metrics({**metrics, "epoch": trainer.current_epoch - 1})
        trainer.callback_metrics.update({key: torch.tensor(value) for key, value in metrics.items()})
