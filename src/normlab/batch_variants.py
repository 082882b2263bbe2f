"""Batch norm variants for small batches, from scratch on top of ``normlab.norms.BatchNorm``:
Batch Renormalization (Ioffe 2017) and Ghost Batch Norm (Hoffer et al. 2017).

Both keep BN's moving statistics, buffers and evaluation path, and both reduce to BN exactly where
their papers say so (``r_max=1, d_max=0``; a virtual batch at least as large as the batch), which
the numerics tests check against ``nn.BatchNorm`` in float64.
"""

from __future__ import annotations

import torch

from normlab.batch_norm import BatchNorm, _NormalizeBatch, batch_statistics


class BatchRenorm(BatchNorm):
    """Batch Renormalization: training normalizes with the batch statistics, then corrects towards
    the moving ones, so training and evaluation see (nearly) the same function::

        r = clip(sigma_B / sigma, 1/r_max, r_max)      d = clip((mu_B - mu) / sigma, -d_max, d_max)
        y = weight * ((x - mu_B) / sigma_B * r + d) + bias

    where ``sigma_B = sqrt(var_B + eps)`` (biased batch variance, as BN), ``mu`` and
    ``sigma = sqrt(running_var + eps)`` are the moving statistics, and ``r``, ``d`` are constants for
    the gradient (the paper's stop_gradient). The moving statistics follow BN's rule (torch's
    momentum convention, unbiased running variance), so ``r_max=1, d_max=0`` is exactly BN.

    ``warmup_steps > 0`` ramps the limits linearly from (1, 0), i.e. plain BN, to (r_max, d_max)
    over that many training batches, as the paper relaxes them once the moving averages settle.
    """

    def __init__(
        self,
        num_features: int,
        spatial: bool,
        momentum: float | None = 0.1,
        eps: float = 1e-5,
        r_max: float = 3.0,
        d_max: float = 5.0,
        warmup_steps: int = 0,
    ) -> None:
        if r_max < 1 or d_max < 0 or warmup_steps < 0:
            raise ValueError(
                f"batch_renorm needs r_max >= 1, d_max >= 0 and warmup_steps >= 0; "
                f"got r_max={r_max}, d_max={d_max}, warmup_steps={warmup_steps}"
            )
        super().__init__(num_features, spatial, momentum, eps)
        self.r_max, self.d_max, self.warmup_steps = r_max, d_max, warmup_steps

    def limits(self) -> tuple[float, float]:
        """(r_max, d_max) for the current training batch, after the warm-up ramp."""
        if self.warmup_steps == 0:
            return self.r_max, self.d_max
        progress = min(1.0, float(self.num_batches_tracked) / self.warmup_steps)
        return 1.0 + (self.r_max - 1.0) * progress, self.d_max * progress

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims, shape = self._layout(x)
        if not self.training:
            return super().forward(x)
        mean, var = batch_statistics(x, dims)
        std = torch.sqrt(var + self.eps)
        r_max, d_max = self.limits()
        with torch.no_grad():
            running_std = torch.sqrt(self.running_var.view(shape) + self.eps)
            r = (std / running_std).clamp(1.0 / r_max, r_max)
            d = ((mean - self.running_mean.view(shape)) / running_std).clamp(-d_max, d_max)
        x_hat = (x - mean) / std * r + d
        self._track(mean.view(-1), var.view(-1), values_per_channel=x.numel() // self.num_features)
        return x_hat * self.weight.view(shape) + self.bias.view(shape)

    def extra_repr(self) -> str:
        limits = f"r_max={self.r_max}, d_max={self.d_max}, warmup_steps={self.warmup_steps}"
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
        dims, _ = self._layout(x)
        if not self.training or x.shape[0] <= self.virtual_batch_size:
            return super().forward(x)
        outputs, means, unbiased_vars = [], [], []
        for chunk in x.split(self.virtual_batch_size):
            y, mean, var = _NormalizeBatch.apply(chunk, self.weight, self.bias, dims, self.eps)
            values = chunk.numel() // self.num_features
            outputs.append(y)
            means.append(mean)
            unbiased_vars.append(var * (values / max(values - 1, 1)))
        with torch.no_grad():
            self._track_unbiased(torch.stack(means).mean(0), torch.stack(unbiased_vars).mean(0))
        return torch.cat(outputs)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, virtual_batch_size={self.virtual_batch_size}"
