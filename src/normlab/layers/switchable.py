"""Switchable Normalization (Luo et al. 2019): a learned mix of instance, layer and batch statistics."""

from __future__ import annotations

import torch
from torch import nn

from normlab.layers.batch_norm import BatchNorm, batch_statistics
from normlab.layers.batch_variants import check_virtual_batch_size, track_virtual_batches, virtual_batches


class SwitchableNorm(BatchNorm):
    """Normalizes by a softmax-weighted mix of IN, LN and BN statistics, one mix for the means and
    one for the variances::

        mean = sum_k softmax(mean_weight)_k * mean_k      var = sum_k softmax(var_weight)_k * var_k
        y    = (x - mean) / sqrt(var + eps) * weight + bias          k in (IN, LN, BN)

    IN: per sample and channel over H, W; LN: per sample over C, H, W; BN: per channel over N, H, W
    (over virtual batches of ``virtual_batch_size`` samples if set, as ghost BN); all biased
    variances, so a one-hot mix is exactly ``nn.InstanceNorm2d``, ``nn.GroupNorm(1, C)`` or
    ``nn.BatchNorm2d``. BN's statistics have BN's moving averages (``normlab.batch_norm``), which
    evaluation uses in their place; IN's and LN's always come from the input. The mixing weights
    start equal (the paper's init: ones).

    FC layers (``spatial=False``) mix LN and BN only: IN's statistics over one value per sample and
    channel are the value itself (x - mean = 0).
    """

    def __init__(
        self,
        num_features: int,
        spatial: bool,
        momentum: float | None = 0.1,
        eps: float = 1e-5,
        virtual_batch_size: int | None = None,
    ) -> None:
        check_virtual_batch_size("switchable", virtual_batch_size)
        super().__init__(num_features, spatial, momentum, eps)
        self.virtual_batch_size = virtual_batch_size
        statistics = 3 if spatial else 2  # (IN,) LN, BN
        self.mean_weight = nn.Parameter(torch.ones(statistics))
        self.var_weight = nn.Parameter(torch.ones(statistics))

    def _batch_statistics(
        self, x: torch.Tensor, dims: tuple[int, ...], shape: tuple[int, ...]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """BN's mean and variance, per sample (each that of its virtual batch) or the moving ones."""
        if not self.training:
            return self.running_mean.view(shape), self.running_var.view(shape)
        means, variances, stats = [], [], []
        for part in virtual_batches(x, self.virtual_batch_size):  # (groups, batch, C, ...), at most two
            mean, var = batch_statistics(part, tuple(d + 1 for d in dims))
            per_sample = (*part.shape[:2], *mean.shape[2:])
            means.append(mean.expand(per_sample).flatten(0, 1))
            variances.append(var.expand(per_sample).flatten(0, 1))
            stats.append((mean.detach(), var.detach(), part[0].numel() // self.num_features))
        track_virtual_batches(self, stats)
        return torch.cat(means), torch.cat(variances)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims, shape = self._layout(x)
        per_sample = [batch_statistics(x, (2, 3))] if self.spatial else []  # IN
        per_sample.append(batch_statistics(x, tuple(range(1, x.dim()))))  # LN
        means, variances = zip(*per_sample, self._batch_statistics(x, dims, shape), strict=True)
        mean_mix, var_mix = torch.softmax(self.mean_weight, 0), torch.softmax(self.var_weight, 0)
        mean = sum(w * m for w, m in zip(mean_mix, means, strict=True))
        var = sum(w * v for w, v in zip(var_mix, variances, strict=True))
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight.view(shape) + self.bias.view(shape)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, virtual_batch_size={self.virtual_batch_size}"
