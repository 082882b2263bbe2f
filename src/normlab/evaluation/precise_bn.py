"""Two more ways to evaluate a BN network, beside eval mode with its moving averages.

- PreciseBN (Wu & Johnson 2021; fvcore ``precise_bn.py``): recompute every BN layer's population
  statistics from a fixed number of training *samples* (whatever the batch size), then evaluate.
- Batch statistics: normalize each test batch by its own statistics (train-mode BN), with test
  batches as large as the training batches, as the net saw them while it learned.

Both work on a copy of the model: its own statistics stay untouched.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from normlab.data.batches import Batch

Batches = Iterable[Batch]


def bn_layers(model: nn.Module) -> list[nn.Module]:
    """The layers that keep running statistics, found by torch's buffer names (``running_var``, and
    ``running_mean`` but for EvoNorm-B0), which every kind with ``NormKind.running_statistics``
    registers."""
    return [m for m in model.modules() if isinstance(getattr(m, "running_var", None), torch.Tensor)]


class PopulationMoments:
    """Per-channel count, mean and sum of squared deviations of every value a layer receives,
    merged batch by batch in float64 (Chan et al.'s parallel update): the exact population mean
    and variance of all values seen, not an average of per-batch statistics.

    By the law of total variance the population variance is the mean within-batch variance *plus*
    the variance of the batch means; averaging per-batch variances alone drops the second part,
    which grows as the batches shrink.
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.squares: torch.Tensor | None = None  # sum of squared deviations from the mean

    def add(self, x: torch.Tensor) -> None:
        values = x.detach().double().transpose(0, 1).reshape(x.shape[1], -1)  # (C, N*H*W)
        count = values.shape[1]
        mean = values.mean(dim=1)
        squares = (values - mean[:, None]).pow(2).sum(dim=1)
        if self.mean is None or self.squares is None:
            self.count, self.mean, self.squares = count, mean, squares
            return
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self.squares = self.squares + squares + delta.pow(2) * (self.count * count / total)
        self.count = total

    def variance(self) -> torch.Tensor:
        """The population variance (divided by the count: over ~10^6 values the unbiased one is the same)."""
        assert self.squares is not None, "no batch was seen"
        return self.squares / self.count


@torch.no_grad()
def precise_bn(model: nn.Module, batches: Batches, num_samples: int) -> nn.Module:
    """A copy of ``model`` whose BN statistics are the population mean and variance of each BN
    layer's inputs over the first ``num_samples`` training samples of ``batches`` (whole batches:
    a cut one could leave one sample, which BN cannot normalize; at most one pass).

    The copy runs in train mode, so each layer sees the inputs that the train-mode network
    upstream produces, as fvcore's PreciseBN does.
    """
    precise = copy.deepcopy(model)
    moments = {layer: PopulationMoments() for layer in bn_layers(precise)}
    hooks = [
        layer.register_forward_pre_hook(lambda layer, inputs: moments[layer].add(inputs[0]))
        for layer in moments
    ]
    precise.train()
    seen = 0
    for images, _ in batches:
        if seen >= num_samples:
            break
        precise(images)
        seen += len(images)
    for hook in hooks:
        hook.remove()
    for layer, moment in moments.items():
        if isinstance(getattr(layer, "running_mean", None), torch.Tensor):  # EvoNorm-B0 keeps a variance only
            layer.running_mean.copy_(moment.mean)
        layer.running_var.copy_(moment.variance())
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


def evaluate(
    net: nn.Module,
    train_batches: Batches,
    test_batches: Batches,
    precise_samples: int,
    eval_batches: Batches | None = None,
) -> dict[str, float]:
    """``val/acc_precise`` and ``val/acc_batchstats`` of a trained network with BN.

    ``train_batches`` and ``test_batches`` are as large as the training batches (the statistics of
    PreciseBN's inputs and of batch-statistics evaluation depend on them); ``eval_batches``, the
    test set in batches of any size (default ``test_batches``), serves the PreciseBN copy's
    eval-mode accuracy, which is per sample: at training batch 1 the 10k test images then take 10
    forward passes instead of 10k."""
    precise = precise_bn(net, train_batches, precise_samples)
    return {
        "val/acc_precise": accuracy(precise, test_batches if eval_batches is None else eval_batches),
        "val/acc_batchstats": accuracy(net, test_batches, batch_statistics=True),
    }


@dataclass(frozen=True)
class AfterTraining:
    """A cell's evaluations after training, over its own batches (``evaluate``'s arguments)."""

    train_batches: Batches
    test_batches: Batches
    precise_samples: int
    eval_batches: Batches | None = None

    def evaluate(self, net: nn.Module) -> dict[str, float]:
        return evaluate(net, self.train_batches, self.test_batches, self.precise_samples, self.eval_batches)
