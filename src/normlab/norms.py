"""Normalization layers by name: one registry, one constructor, and the from-scratch batch norm.

Every kind is built as ``build_norm(kind, num_features, spatial, momentum, eps, **options)`` so
that models can swap them freely (the channel count comes first, as in timm and torchvision).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

NormFactory = Callable[[int, bool], nn.Module]


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
    """

    def __init__(
        self,
        num_features: int,
        spatial: bool,
        momentum: float | None = 0.1,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.num_features = num_features
        self.spatial = spatial
        self.momentum = momentum
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected_dim = 4 if self.spatial else 2
        if x.dim() != expected_dim:
            raise ValueError(
                f"BatchNorm(spatial={self.spatial}) expects {expected_dim}-D input, got {x.dim()}-D"
            )
        shape = (1, -1, 1, 1) if self.spatial else (1, -1)
        if self.training:
            dims = (0, 2, 3) if self.spatial else (0,)
            mean = x.mean(dim=dims)
            var = x.var(dim=dims, unbiased=False)
            self._update_running_stats(mean, var, values_per_channel=x.numel() // self.num_features)
        else:
            mean, var = self.running_mean, self.running_var
        x_hat = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        return x_hat * self.weight.view(shape) + self.bias.view(shape)

    @torch.no_grad()
    def reset_running_stats(self) -> None:
        self.running_mean.zero_()
        self.running_var.fill_(1.0)
        self.num_batches_tracked.zero_()

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, values_per_channel: int) -> None:
        self.num_batches_tracked += 1
        m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        bessel = values_per_channel / max(values_per_channel - 1, 1)
        self.running_mean.lerp_(mean.detach(), m)
        self.running_var.lerp_(var.detach() * bessel, m)

    def extra_repr(self) -> str:
        return f"{self.num_features}, spatial={self.spatial}, momentum={self.momentum}, eps={self.eps}"


def _identity(num_features: int, spatial: bool, momentum: float | None, eps: float) -> nn.Module:
    return nn.Identity()


def _native(num_features: int, spatial: bool, momentum: float | None, eps: float) -> nn.Module:
    layer = nn.BatchNorm2d if spatial else nn.BatchNorm1d
    return layer(num_features, eps=eps, momentum=momentum)


NORMS: dict[str, Callable[..., nn.Module]] = {
    "none": _identity,
    "scratch": BatchNorm,
    "native": _native,
}


def _check_kind(kind: str) -> None:
    if kind not in NORMS:
        raise ValueError(f"unknown norm kind {kind!r}; known kinds: {', '.join(sorted(NORMS))}")


def build_norm(
    kind: str,
    num_features: int,
    spatial: bool,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
    **options: object,
) -> nn.Module:
    """Build the normalization layer ``kind`` for ``num_features`` channels.

    ``spatial=True`` for (N, C, H, W) inputs, ``False`` for (N, C). ``momentum`` follows torch's
    rule ``running = (1 - momentum) * running + momentum * batch`` (``None``: cumulative average).
    """
    _check_kind(kind)
    return NORMS[kind](num_features, spatial, momentum=momentum, eps=eps, **options)


def norm_factory(
    kind: str, momentum: float | None = 0.1, eps: float = 1e-5, **options: object
) -> NormFactory:
    """A ``(num_features, spatial) -> nn.Module`` constructor for models; checks ``kind`` now."""
    _check_kind(kind)
    return partial(build_norm, kind, momentum=momentum, eps=eps, **options)
