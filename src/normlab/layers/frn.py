"""Filter Response Normalization with its Thresholded Linear Unit (Singh & Krishnan 2020)."""

from __future__ import annotations

import torch
from torch import nn


class FilterResponseNorm(nn.Module):
    """FRN + TLU, a normalization-activation layer: per sample and channel, no batch statistics::

        nu2 = mean over H, W of x^2
        y   = max(weight * x / sqrt(nu2 + eps) + bias, tau)

    It replaces norm *and* activation (``includes_activation``: the model drops its sigmoid).

    On an FC layer (``spatial=False``, one value per sample and channel) nu2 is x^2 itself and
    x / sqrt(x^2 + eps) is sign(x) for |x| >> sqrt(eps): its gradient vanishes. The paper's remedy
    is a learned eps, which FC layers therefore always use: eps + |learned|, ``learned`` starting
    at ``learned_eps_start``. ``learned_eps=True`` gives conv layers one too.
    """

    includes_activation = True

    def __init__(
        self,
        num_features: int,
        spatial: bool,
        eps: float = 1e-6,
        learned_eps: bool = False,
        learned_eps_start: float = 1e-4,
    ) -> None:
        if eps < 0 or learned_eps_start < 0:
            raise ValueError(f"frn needs eps >= 0 and learned_eps_start >= 0; got {eps}, {learned_eps_start}")
        super().__init__()
        self.num_features, self.spatial, self.eps = num_features, spatial, eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.tau = nn.Parameter(torch.zeros(num_features))
        learned = learned_eps or not spatial
        self.learned_eps = nn.Parameter(torch.tensor(learned_eps_start)) if learned else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1, 1, 1) if self.spatial else (1, -1)
        nu2 = x.square().mean(dim=(2, 3), keepdim=True) if self.spatial else x.square()
        eps = self.eps if self.learned_eps is None else self.eps + self.learned_eps.abs()
        y = x * torch.rsqrt(nu2 + eps) * self.weight.view(shape) + self.bias.view(shape)
        return torch.maximum(y, self.tau.view(shape))

    def extra_repr(self) -> str:
        learned = ", learned eps" if self.learned_eps is not None else ""
        return f"{self.num_features}, spatial={self.spatial}, eps={self.eps}{learned}"
