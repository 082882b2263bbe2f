"""Batch normalization written from scratch: d2l's algorithm with d2l's bugs fixed, a closed-form
backward, and d2l's exercises (mean-only, variance-only, fixed gamma and beta) as options."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable


class NormalizeBatch(torch.autograd.Function):
    """Training-mode BN: y = (x - mean) / sqrt(var + eps) * weight + bias over ``dims``, with its gradient.

    ``shape`` broadcasts the per-channel ``weight`` and ``bias`` against ``x``: (1, C, 1, 1) for a
    (N, C, H, W) batch, or (1, 1, C, 1, 1) for ghost BN's (groups, virtual batch, C, H, W) view,
    where the statistics (over ``dims`` = (1, 3, 4)) are per group and per channel.

    Forward is d2l's formula (two passes: mean, then the mean of squared deviations; faster on CPU
    than ``torch.var`` over (N, H, W)). Backward is the BN paper's closed form (Ioffe & Szegedy
    2015, section 3), in per-channel sums over ``dims``::

        dx = weight / sqrt(var + eps) * (dy - mean(dy) - x_hat * mean(dy * x_hat))

    Autograd's chain through mean and var allocates a dozen full-size temporaries; this one, four
    (``make bench`` reports the scratch layer's step time against native BN's).
    Also returns the batch mean and biased variance (kept dims) for the running statistics.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        dims: tuple[int, ...],
        shape: tuple[int, ...],
        eps: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean = x.mean(dim=dims, keepdim=True)
        centered = x - mean
        var = (centered * centered).mean(dim=dims, keepdim=True)
        invstd = torch.rsqrt(var + eps)
        x_hat = centered.mul_(invstd)
        ctx.save_for_backward(x_hat, invstd, weight)
        ctx.dims, ctx.shape = dims, shape
        ctx.mark_non_differentiable(mean, var)
        return (x_hat * weight.view(shape)).add_(bias.view(shape)), mean, var

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, dy: torch.Tensor, _mean: torch.Tensor, _var: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None, None, None]:
        x_hat, invstd, weight = ctx.saved_tensors
        values_per_statistic = x_hat.numel() // invstd.numel()
        sum_dy = dy.sum(dim=ctx.dims, keepdim=True)
        sum_dy_xhat = (dy * x_hat).sum(dim=ctx.dims, keepdim=True)
        scale = weight.view(ctx.shape) * invstd
        dx = (dy * scale).sub_(scale * (sum_dy / values_per_statistic))
        dx.addcmul_(x_hat, scale * (sum_dy_xhat / values_per_statistic), value=-1.0)
        # Per-channel affine gradients: also summed over ghost BN's groups.
        channels = weight.numel()
        dweight = sum_dy_xhat.reshape(-1, channels).sum(dim=0)
        dbias = sum_dy.reshape(-1, channels).sum(dim=0)
        return dx, dweight, dbias, None, None, None


def step_momentum(momentum: float | None, batches_tracked: torch.Tensor) -> float:
    """This step's weight of the new batch in a moving average (torch's rule): ``momentum``, or
    1 / batches tracked (this one included) for a cumulative average (``momentum=None``)."""
    return 1.0 / float(batches_tracked) if momentum is None else momentum


def batch_statistics(x: torch.Tensor, dims: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and biased variance over ``dims`` (kept, for broadcasting), differentiable by autograd."""
    mean = x.mean(dim=dims, keepdim=True)
    return mean, (x - mean).pow(2).mean(dim=dims, keepdim=True)


class BatchNorm(nn.Module):
    """Batch normalization written from scratch (d2l's algorithm, with d2l's bugs fixed).

    Training: normalize with the batch mean and the *biased* batch variance, computed over N for
    (N, C) inputs and over N, H, W per channel for (N, C, H, W) inputs, then scale and shift.
    Evaluation: normalize with the moving averages instead.

    Moving averages follow torch's convention, with ``m = momentum``::

        running = (1 - m) * running + m * batch

    d2l writes ``moving = 0.9 * moving + 0.1 * batch`` and calls 0.9 the momentum: the same rule,
    so d2l's ``momentum=0.9`` is ``momentum=0.1`` here. ``momentum=None`` gives a cumulative
    average (``m = 1 / num_batches_tracked``). Like torch, the running variance stores the
    *unbiased* batch variance. Mode follows ``self.training`` (d2l reads grad mode instead), and
    state lives in parameters and buffers named as torch names them, so state dicts interchange
    with ``nn.BatchNorm1d/2d``.

    Unlike ``nn.BatchNorm1d``, a training batch with one value per channel does not raise: the
    output is then ``bias`` (x - mean is 0), which is exactly why BN learns nothing at batch
    size 1 in FC layers. Its unbiased variance is undefined; the biased one (0) is stored.

    d2l's exercises as options: ``center=False`` divides by the standard deviation without
    subtracting the mean (variance-only), ``scale=False`` only subtracts the mean (mean-only),
    ``affine=False`` fixes gamma and beta at 1 and 0 (as torch's ``affine=False``).
    """

    def __init__(
        self,
        num_features: int,
        spatial: bool,
        momentum: float | None = 0.1,
        eps: float = 1e-5,
        center: bool = True,
        scale: bool = True,
        affine: bool = True,
    ) -> None:
        super().__init__()
        self.num_features = num_features
        self.spatial = spatial
        self.momentum = momentum
        self.eps = eps
        self.center, self.scale, self.affine = center, scale, affine
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:  # gamma, beta fixed at 1, 0; not saved, as torch's affine=False layers have none
            self.register_buffer("weight", torch.ones(num_features), persistent=False)
            self.register_buffer("bias", torch.zeros(num_features), persistent=False)
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def _layout(self, x: torch.Tensor) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The dims statistics are taken over, and the shape per-channel vectors broadcast in."""
        expected_dim = 4 if self.spatial else 2
        if x.dim() != expected_dim:
            raise ValueError(
                f"{type(self).__name__}(spatial={self.spatial}) expects {expected_dim}-D input, "
                f"got {x.dim()}-D"
            )
        return ((0, 2, 3), (1, -1, 1, 1)) if self.spatial else ((0,), (1, -1))

    def _normalize(self, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        """Subtract ``mean`` (if ``center``), divide by ``sqrt(var + eps)`` (if ``scale``), then
        scale and shift."""
        x_hat = x - mean if self.center else x
        x_hat = x_hat * torch.rsqrt(var + self.eps) if self.scale else x_hat
        shape = mean.shape
        return x_hat * self.weight.view(shape) + self.bias.view(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims, shape = self._layout(x)
        if not self.training:
            return self._normalize(x, self.running_mean.view(shape), self.running_var.view(shape))
        if self.center and self.scale:
            y, mean, var = NormalizeBatch.apply(x, self.weight, self.bias, dims, shape, self.eps)
        else:  # mean-only or variance-only (d2l's exercise): autograd's gradient is fast enough here
            mean, var = batch_statistics(x, dims)
            y = self._normalize(x, mean, var)
        self._track(mean.view(-1), var.view(-1), values_per_channel=x.numel() // self.num_features)
        return y

    @torch.no_grad()
    def reset_running_stats(self) -> None:
        self.running_mean.zero_()
        self.running_var.fill_(1.0)
        self.num_batches_tracked.zero_()

    @torch.no_grad()
    def _track(self, mean: torch.Tensor, var: torch.Tensor, values_per_channel: int) -> None:
        """Moving averages from a batch's mean and *biased* variance over ``values_per_channel``."""
        bessel = values_per_channel / max(values_per_channel - 1, 1)
        self.track_unbiased(mean, var * bessel)

    @torch.no_grad()
    def track_unbiased(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        self.num_batches_tracked += 1
        m = step_momentum(self.momentum, self.num_batches_tracked)
        self.running_mean.lerp_(mean.detach(), m)
        self.running_var.lerp_(unbiased_var.detach(), m)

    def extra_repr(self) -> str:
        options = "".join(
            f", {name}=False" for name in ("center", "scale", "affine") if not getattr(self, name)
        )
        return (
            f"{self.num_features}, spatial={self.spatial}, momentum={self.momentum}, eps={self.eps}{options}"
        )
