"""EvoNorm-B0 and EvoNorm-S0 (Liu et al. 2020): normalization-activation layers found by search.

Both replace norm *and* activation (``includes_activation``: the model drops its sigmoid). On an
FC layer (``spatial=False``) they see the (N, C) input as (N, C, 1, 1): B0's instance variance is
then 0 (its denominator's right side is v * x + sqrt(eps)), S0's group statistics are over the
group's C / G features of each sample, as group norm's are.
"""

from __future__ import annotations

import torch
from torch import nn

from normlab.layers.batch_norm import batch_statistics, step_momentum
from normlab.layers.batch_variants import check_virtual_batch_size, virtual_batch_averages, virtual_batches


def _as_maps(x: torch.Tensor, spatial: bool) -> torch.Tensor:
    expected_dim = 4 if spatial else 2
    if x.dim() != expected_dim:
        raise ValueError(f"expected {expected_dim}-D input (spatial={spatial}), got {x.dim()}-D")
    return x if spatial else x[:, :, None, None]


class EvoNormB0(nn.Module):
    """EvoNorm-B0: a batch variance on the left, an instance-level term on the right::

        y = x / max(sqrt(var_B(x) + eps), v * x + sqrt(var_HW(x) + eps)) * weight + bias

    ``var_B`` is the biased variance over N, H, W per channel (over virtual batches of
    ``virtual_batch_size`` samples if set, as ghost BN); evaluation uses its moving average
    instead, kept as BN keeps it (torch's momentum rule, the unbiased variance; ``momentum=None``
    a cumulative average). ``var_HW`` is per sample and channel. B0 never subtracts a mean.
    """

    includes_activation = True

    def __init__(
        self,
        num_features: int,
        spatial: bool,
        momentum: float | None = 0.1,
        eps: float = 1e-5,
        virtual_batch_size: int | None = None,
    ) -> None:
        check_virtual_batch_size("evonorm_b0", virtual_batch_size)
        super().__init__()
        self.num_features, self.spatial = num_features, spatial
        self.momentum, self.eps, self.virtual_batch_size = momentum, eps, virtual_batch_size
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.v = nn.Parameter(torch.ones(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def _batch_std(self, x: torch.Tensor) -> torch.Tensor:
        """sqrt(var_B + eps) broadcast against ``x``; in training, also one moving-average step."""
        if not self.training:
            return torch.sqrt(self.running_var.view(1, -1, 1, 1) + self.eps)
        stds, stats = [], []
        for part in virtual_batches(x, self.virtual_batch_size):  # (groups, batch, C, H, W), at most two
            mean, var = batch_statistics(part, (1, 3, 4))
            stds.append(torch.sqrt(var + self.eps).expand_as(part).reshape(-1, *x.shape[1:]))
            stats.append((mean.detach(), var.detach(), part[0].numel() // self.num_features))
        _, unbiased = virtual_batch_averages(stats, self.num_features)
        with torch.no_grad():
            self.num_batches_tracked += 1
            self.running_var.lerp_(unbiased, step_momentum(self.momentum, self.num_batches_tracked))
        return torch.cat(stds) if len(stds) > 1 else stds[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = _as_maps(x, self.spatial)
        _, instance_var = batch_statistics(maps, (2, 3))
        right = maps * self.v.view(1, -1, 1, 1) + torch.sqrt(instance_var + self.eps)
        y = maps / torch.maximum(self._batch_std(maps), right)
        y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y if self.spatial else y.flatten(1)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, spatial={self.spatial}, momentum={self.momentum}, eps={self.eps}, "
            f"virtual_batch_size={self.virtual_batch_size}"
        )


class EvoNormS0(nn.Module):
    """EvoNorm-S0: a swish-like numerator over a group standard deviation, per sample::

        y = x * sigmoid(v * x) / sqrt(var_G(x) + eps) * weight + bias

    ``var_G`` is the biased variance over each of ``groups`` groups of channels (and H, W) of one
    sample, as group norm's: no batch statistics, nothing to keep for evaluation.
    """

    includes_activation = True

    def __init__(self, num_features: int, spatial: bool, groups: int, eps: float = 1e-5) -> None:
        if groups < 1 or num_features % groups:
            raise ValueError(f"evonorm_s0 needs groups dividing {num_features} channels; got {groups}")
        super().__init__()
        self.num_features, self.spatial, self.groups, self.eps = num_features, spatial, groups, eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.v = nn.Parameter(torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = _as_maps(x, self.spatial)
        grouped = maps.reshape(len(maps), self.groups, -1)
        _, var = batch_statistics(grouped, (2,))
        std = torch.sqrt(var + self.eps).expand_as(grouped).reshape(maps.shape)
        y = maps * torch.sigmoid(maps * self.v.view(1, -1, 1, 1)) / std
        y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y if self.spatial else y.flatten(1)

    def extra_repr(self) -> str:
        return f"{self.num_features}, spatial={self.spatial}, groups={self.groups}, eps={self.eps}"
