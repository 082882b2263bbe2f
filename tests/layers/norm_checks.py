"""Shared by the norm numerics tests: float64 inputs far from zero mean and unit variance, and a
step-by-step comparison of a norm layer with its reference."""

import torch
from torch import nn

TOL = dict(rtol=0, atol=1e-10)


def make_input(batch: int, channels: int, spatial: bool, step: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1000 * batch + step)
    shape = (batch, channels, 5, 4) if spatial else (batch, channels)
    # An offset and scale per channel, so that the statistics are far from 0 and 1.
    view = (1, channels, 1, 1) if spatial else (1, channels)
    offset = torch.linspace(-3, 3, channels, dtype=torch.float64).view(view)
    return torch.randn(shape, generator=generator, dtype=torch.float64) * 2.5 + offset


def same_training_steps(ours: nn.Module, reference, spatial: bool, batch: int, steps: int = 4) -> None:
    """Outputs, input and affine gradients, and moving statistics agree step by step, then in eval.

    ``reference`` is a module, or a function of the input standing in for one.
    """
    channels = ours.weight.numel()
    for step in range(steps):
        x = make_input(batch, channels, spatial, step)
        x_ours, x_reference = x.clone().requires_grad_(), x.clone().requires_grad_()
        y_ours, y_reference = ours(x_ours), reference(x_reference)
        torch.testing.assert_close(y_ours, y_reference, **TOL)
        upstream = torch.randn_like(y_ours, generator=torch.Generator().manual_seed(step))
        (y_ours * upstream).sum().backward()
        (y_reference * upstream).sum().backward()
        torch.testing.assert_close(x_ours.grad, x_reference.grad, **TOL)
        if isinstance(reference, nn.Module):
            for name in ("weight", "bias"):
                if isinstance(getattr(ours, name), nn.Parameter):
                    torch.testing.assert_close(getattr(ours, name).grad, getattr(reference, name).grad, **TOL)
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                if hasattr(reference, name):
                    torch.testing.assert_close(getattr(ours, name), getattr(reference, name), **TOL)
    if isinstance(reference, nn.Module):
        ours.eval(), reference.eval()
        x = make_input(batch, channels, spatial, 99)
        torch.testing.assert_close(ours(x), reference(x), **TOL)
