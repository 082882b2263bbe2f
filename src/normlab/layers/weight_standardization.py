"""Weight Standardization (Qiao et al. 2019): convolutions with standardized weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class StandardizedConv2d(nn.Conv2d):
    """A convolution whose weights are standardized per output channel at every forward::

        W_hat = (W - mean(W)) / sqrt(var(W) + eps)      over each filter's (in, kh, kw) weights

    with the biased variance; gradients flow through the standardization. Usually paired with
    group norm: it smooths the loss landscape without batch statistics. (The paper's code adds a
    small constant to the unbiased std instead; timm's ``StdConv2d``, our reference, is the above.)
    """

    def __init__(self, *args: object, eps: float = 1e-6, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.eps = eps

    def standardized_weight(self) -> torch.Tensor:
        flat = self.weight.flatten(1)
        mean = flat.mean(dim=1, keepdim=True)
        var = (flat - mean).pow(2).mean(dim=1, keepdim=True)
        return ((flat - mean) * torch.rsqrt(var + self.eps)).view_as(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(
            x, self.standardized_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups
        )
