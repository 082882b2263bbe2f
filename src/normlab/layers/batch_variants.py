"""Batch norm variants for small batches, from scratch on top of ``normlab.batch_norm.BatchNorm``:
Batch Renormalization (Ioffe 2017) and Ghost Batch Norm (Hoffer et al. 2017).

Both keep BN's moving statistics, buffers and evaluation path, and both reduce to BN exactly where
their papers say so (``r_max=1, d_max=0``; a virtual batch at least as large as the batch), which
the numerics tests check against ``nn.BatchNorm`` in float64.
"""

from __future__ import annotations

import torch

from normlab.layers.batch_norm import BatchNorm, NormalizeBatch, batch_statistics


def virtual_batches(x: torch.Tensor, size: int | None) -> list[torch.Tensor]:
    """``x`` as at most two (groups, virtual batch, C, ...) views: the whole virtual batches of
    ``size`` samples, then an uneven tail as one more group; ``size`` None (or >= the batch): one
    group. Statistics over dims + 1 of such a view are per virtual batch, with no Python loop."""
    if size is None or len(x) <= size:
        return [x.unsqueeze(0)]
    whole = len(x) // size * size
    tail = [x[whole:].unsqueeze(0)] if whole < len(x) else []
    return [x[:whole].reshape(-1, size, *x.shape[1:]), *tail]


def check_virtual_batch_size(kind: str, size: int | None) -> None:
    """A virtual batch holds at least one sample; None takes the statistics over the whole batch."""
    if size is not None and size < 1:
        raise ValueError(f"{kind} needs virtual_batch_size >= 1 or null; got {size}")


VirtualStats = list[
    tuple[torch.Tensor, torch.Tensor, int]
]  # (mean, biased variance, values per statistic) per view


@torch.no_grad()
def virtual_batch_averages(stats: VirtualStats, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The average over virtual batches of their means and of their unbiased variances."""
    means = torch.cat([mean.reshape(-1, channels) for mean, _, _ in stats])
    unbiased = torch.cat([var.reshape(-1, channels) * (n / max(n - 1, 1)) for _, var, n in stats])
    return means.mean(0), unbiased.mean(0)


@torch.no_grad()
def track_virtual_batches(layer: BatchNorm, stats: VirtualStats) -> None:
    """One moving-average step towards the virtual batches' average statistics."""
    layer.track_unbiased(*virtual_batch_averages(stats, layer.num_features))


class BatchRenorm(BatchNorm):
    """Batch Renormalization: training normalizes with the batch statistics, then corrects towards
    the moving ones, so training and evaluation see (nearly) the same function::

        r = clip(sigma_B / sigma, 1/r_max, r_max)      d = clip((mu_B - mu) / sigma, -d_max, d_max)
        y = weight * ((x - mu_B) / sigma_B * r + d) + bias

    where ``sigma_B = sqrt(var_B + eps)`` (biased batch variance, as BN), ``mu`` and
    ``sigma = sqrt(running_var + eps)`` are the moving statistics, and ``r``, ``d`` are constants for
    the gradient (the paper's stop_gradient). The moving statistics follow BN's rule (torch's
    momentum convention, unbiased running variance), so ``r_max=1, d_max=0`` is exactly BN.

    The paper's schedule: the limits stay at (1, 0), i.e. plain BN, for the first ``hold_steps``
    training batches, while the moving averages settle, then relax linearly to (r_max, d_max) over
    the next ``warmup_steps`` (the paper: hold 5k steps, d_max reached at 25k, r_max at 40k).

    ``virtual_batch_size`` takes the batch statistics (and r, d) over chunks of that many samples,
    as ghost BN does, so the statistics batch can be studied apart from the SGD batch.
    """

    def __init__(
        self,
        num_features: int,
        spatial: bool,
        momentum: float | None = 0.1,
        eps: float = 1e-5,
        r_max: float = 3.0,
        d_max: float = 5.0,
        hold_steps: int = 0,
        warmup_steps: int = 0,
        virtual_batch_size: int | None = None,
    ) -> None:
        check_virtual_batch_size("batch_renorm", virtual_batch_size)
        if r_max < 1 or d_max < 0 or hold_steps < 0 or warmup_steps < 0:
            raise ValueError(
                f"batch_renorm needs r_max >= 1, d_max >= 0, hold_steps >= 0 and warmup_steps >= 0; "
                f"got r_max={r_max}, d_max={d_max}, hold_steps={hold_steps}, warmup_steps={warmup_steps}"
            )
        super().__init__(num_features, spatial, momentum, eps)
        self.r_max, self.d_max = r_max, d_max
        self.hold_steps, self.warmup_steps = hold_steps, warmup_steps
        self.virtual_batch_size = virtual_batch_size

    def limits(self) -> tuple[float, float]:
        """(r_max, d_max) for the current training batch: (1, 0) while held, then the linear ramp."""
        relaxing = float(self.num_batches_tracked) - self.hold_steps
        if relaxing < 0:
            return 1.0, 0.0
        progress = min(1.0, relaxing / self.warmup_steps) if self.warmup_steps else 1.0
        return 1.0 + (self.r_max - 1.0) * progress, self.d_max * progress

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims, shape = self._layout(x)
        if not self.training:
            return super().forward(x)
        grouped_dims, grouped_shape = tuple(d + 1 for d in dims), (1, *shape)
        r_max, d_max = self.limits()
        with torch.no_grad():
            running_mean = self.running_mean.view(grouped_shape)
            running_std = torch.sqrt(self.running_var.view(grouped_shape) + self.eps)
        outputs, stats = [], []
        for part in virtual_batches(x, self.virtual_batch_size):  # at most two
            mean, var = batch_statistics(part, grouped_dims)
            std = torch.sqrt(var + self.eps)
            with torch.no_grad():
                r = (std / running_std).clamp(1.0 / r_max, r_max)
                d = ((mean - running_mean) / running_std).clamp(-d_max, d_max)
            x_hat = (part - mean) / std * r + d
            y = x_hat * self.weight.view(grouped_shape) + self.bias.view(grouped_shape)
            outputs.append(y.reshape(-1, *x.shape[1:]))
            stats.append((mean.detach(), var.detach(), part[0].numel() // self.num_features))
        track_virtual_batches(self, stats)
        return torch.cat(outputs) if len(outputs) > 1 else outputs[0]

    def extra_repr(self) -> str:
        limits = f"r_max={self.r_max}, d_max={self.d_max}, hold_steps={self.hold_steps}"
        limits += f", warmup_steps={self.warmup_steps}, virtual_batch_size={self.virtual_batch_size}"
        return f"{super().extra_repr()}, {limits}"


class GhostBatchNorm(BatchNorm):
    """Ghost Batch Norm: a training batch is cut into chunks of ``virtual_batch_size`` samples (the
    last may be smaller), each normalized by its own statistics as BN would a batch of that size.

    The moving statistics take one step per training batch, towards the average of the chunks'
    means and of their unbiased variances, so ``momentum`` means what it means for BN. A virtual
    batch at least as large as the batch is exactly BN. Evaluation is BN's (moving statistics).
    """

    def __init__(
        self,
        num_features: int,
        spatial: bool,
        momentum: float | None = 0.1,
        eps: float = 1e-5,
        virtual_batch_size: int = 32,
    ) -> None:
        if virtual_batch_size < 1:
            raise ValueError(f"ghost needs virtual_batch_size >= 1; got {virtual_batch_size}")
        super().__init__(num_features, spatial, momentum, eps)
        self.virtual_batch_size = virtual_batch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims, shape = self._layout(x)
        size = self.virtual_batch_size
        if not self.training or x.shape[0] <= size:
            return super().forward(x)
        # (groups, virtual batch, C, ...) views normalized at once: a Python loop over the chunks
        # would pay per-call overhead once per chunk (make bench times ghost BN against native).
        grouped_dims, grouped_shape = tuple(d + 1 for d in dims), (1, *shape)
        outputs, stats = [], []
        for part in virtual_batches(x, size):  # at most two
            y, mean, var = NormalizeBatch.apply(
                part, self.weight, self.bias, grouped_dims, grouped_shape, self.eps
            )
            outputs.append(y.reshape(-1, *x.shape[1:]))
            stats.append((mean, var, part[0].numel() // self.num_features))
        track_virtual_batches(self, stats)  # one step per batch, as BN's momentum means
        return torch.cat(outputs) if len(outputs) > 1 else outputs[0]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, virtual_batch_size={self.virtual_batch_size}"
