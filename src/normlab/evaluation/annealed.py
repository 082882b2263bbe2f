"""A trained net's results in every eval mode at once: what a budget of the ladder records."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from normlab.evaluation.precise_bn import AfterTraining, Batches, bn_layers


@torch.no_grad()
def eval_mode(net: nn.Module, batches: Batches) -> dict[str, float]:
    """``val/loss`` and ``val/acc`` in eval mode (moving statistics), summed as the training
    module's validation sums them (each batch's mean loss times its size, in float64)."""
    net.eval()
    loss_sum = torch.zeros((), dtype=torch.float64)
    correct = total = 0
    for images, labels in batches:
        logits = net(images)
        loss_sum = loss_sum.to(logits.device).add_(F.cross_entropy(logits, labels), alpha=labels.numel())
        correct += int((logits.argmax(dim=1) == labels).sum())
        total += labels.numel()
    return {"val/loss": float(loss_sum) / total, "val/acc": correct / total}


def every_mode(net: nn.Module, val_batches: Batches, after_training: AfterTraining) -> dict[str, float]:
    """Eval mode, and for a net with running statistics PreciseBN and batch statistics too."""
    metrics = eval_mode(net, val_batches)
    if bn_layers(net):
        metrics.update(after_training.evaluate(net))
    return metrics
