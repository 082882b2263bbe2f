"""The from-scratch BN against torch's nn.BatchNorm1d/2d, in float64, across batch sizes and momenta."""

import pytest
import torch
from torch import nn

from normlab.layers.registry import NORMS, BatchNorm, build_norm
from tests.layers.norm_checks import TOL, make_input, same_training_steps

MOMENTA = [0.01, 0.1, 0.5, 0.9, 1.0, None]
BATCH_SIZES = [2, 3, 8, 17, 64]


def _pair(spatial: bool, channels: int, momentum: float | None) -> tuple[nn.Module, nn.Module]:
    scratch = build_norm("scratch", channels, spatial, momentum=momentum).double()
    native = build_norm("native", channels, spatial, momentum=momentum).double()
    # Non-trivial affine parameters, identical in both, so their gradients are tested too.
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in (scratch, native):
            layer.weight.copy_(torch.rand(channels, generator=generator, dtype=torch.float64) + 0.5)
            generator.manual_seed(2)
            layer.bias.copy_(torch.randn(channels, generator=generator, dtype=torch.float64))
            generator.manual_seed(1)
    return scratch, native


@pytest.mark.parametrize("spatial", [False, True], ids=["fc", "conv"])
@pytest.mark.parametrize("momentum", MOMENTA)
@pytest.mark.parametrize("batch", BATCH_SIZES)
def test_scratch_equals_native(spatial: bool, momentum: float | None, batch: int) -> None:
    channels = 6
    scratch, native = _pair(spatial, channels, momentum)
    same_training_steps(scratch, native, spatial, batch)


def test_running_stats_follow_the_documented_rule() -> None:
    """An independent formula: running = (1 - m) running + m batch, unbiased variance stored."""
    layer = BatchNorm(3, spatial=False, momentum=0.3).double()
    x = make_input(10, 3, False, 0)
    layer(x)
    expected_mean = 0.7 * 0.0 + 0.3 * x.mean(0)
    expected_var = 0.7 * 1.0 + 0.3 * x.var(0, unbiased=True)
    torch.testing.assert_close(layer.running_mean, expected_mean, **TOL)
    torch.testing.assert_close(layer.running_var, expected_var, **TOL)


def test_cumulative_average_when_momentum_is_none() -> None:
    layer = BatchNorm(2, spatial=True, momentum=None).double()
    batches = [make_input(4, 2, True, step) for step in range(5)]
    for x in batches:
        layer(x)
    means = torch.stack([x.mean((0, 2, 3)) for x in batches])
    torch.testing.assert_close(layer.running_mean, means.mean(0), **TOL)


def test_mode_follows_training_flag_not_grad_mode() -> None:
    """d2l's layer uses batch statistics whenever grad is off; ours uses running ones in eval only."""
    layer = BatchNorm(3, spatial=False).double()
    x = make_input(8, 3, False, 0)
    with torch.no_grad():
        y_train = layer(x)  # train mode under no_grad: still batch statistics
    torch.testing.assert_close(y_train.mean(0), torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-12)
    layer.eval()
    y_eval = layer(x.clone().requires_grad_())  # eval mode with grad on: running statistics
    expected = (x - layer.running_mean) / torch.sqrt(layer.running_var + layer.eps)
    torch.testing.assert_close(y_eval, expected, **TOL)


@pytest.mark.parametrize("spatial", [False, True], ids=["fc", "conv"])
def test_state_dicts_interchange(spatial: bool) -> None:
    scratch, native = _pair(spatial, 4, 0.1)
    for step in range(3):
        scratch(make_input(8, 4, spatial, step))
    assert scratch.state_dict().keys() == native.state_dict().keys()
    native.load_state_dict(scratch.state_dict())
    back = BatchNorm(4, spatial).double()
    back.load_state_dict(native.state_dict())
    scratch.eval(), native.eval(), back.eval()
    x = make_input(5, 4, spatial, 7)
    torch.testing.assert_close(native(x), scratch(x), **TOL)
    torch.testing.assert_close(back(x), scratch(x), **TOL)


def test_batch_of_one_in_fc_layers() -> None:
    """torch raises; ours outputs the bias (nothing to normalize), so a batch-1 study can run."""
    native = build_norm("native", 3, spatial=False)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        native(torch.randn(1, 3))
    scratch = build_norm("scratch", 3, spatial=False)
    y = scratch(torch.randn(1, 3))
    torch.testing.assert_close(y, scratch.bias.detach().view(1, 3).expand(1, 3))
    assert torch.isfinite(scratch.running_var).all()


def test_registry_and_errors() -> None:
    assert set(NORMS) == {
        *(
            "none",
            "scratch",
            "native",
            "group",
            "layer",
            "batch_renorm",
            "ghost",
            "mean_only",
            "variance_only",
            "frn",
            "evonorm_b0",
            "evonorm_s0",
            "switchable",
        )
    }
    assert isinstance(build_norm("none", 3, True), nn.Identity)
    assert isinstance(build_norm("native", 3, True), nn.BatchNorm2d)
    assert isinstance(build_norm("native", 3, False), nn.BatchNorm1d)
    with pytest.raises(
        ValueError, match="known kinds: batch_renorm, evonorm_b0, evonorm_s0, frn, ghost, group, layer"
    ):
        build_norm("bogus", 3, True)
    with pytest.raises(ValueError, match="expects 4-D input"):
        build_norm("scratch", 3, True)(torch.randn(2, 3))


@pytest.mark.parametrize("shape", [(2, 3), (5, 4), (3, 2, 4, 4), (8, 3, 2, 5)], ids=str)
def test_hand_written_gradient_passes_gradcheck(shape: tuple[int, ...]) -> None:
    """The closed-form backward against finite differences, independently of torch's BN layers."""
    torch.manual_seed(0)
    layer = BatchNorm(shape[1], spatial=len(shape) == 4).double().train()
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.uniform_(-1, 1)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: layer(x), (x, layer.weight, layer.bias))
