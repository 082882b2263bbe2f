"""The small-batch normalizations since group norm, each against an independent implementation in
float64: FRN + TLU, EvoNorm-B0 and -S0 and Weight Standardization against timm's layers, Switchable
Norm against the paper's formulas (a one-hot mix is exactly torch's IN, LN or BN): outputs, input
and parameter gradients, running statistics, then evaluation."""

from collections.abc import Callable

import pytest
import torch
from timm.layers import EvoNorm2dB0, EvoNorm2dS0, FilterResponseNormTlu2d, StdConv2d
from torch import nn

from normlab.layers.batch_variants import GhostBatchNorm
from normlab.layers.registry import NORMS, build_norm, norm_factory
from normlab.layers.weight_standardization import StandardizedConv2d
from normlab.models import LeNet
from tests.layers.norm_checks import make_input

NEW_KINDS = ("frn", "evonorm_b0", "evonorm_s0", "switchable")
MOMENTA = [0.1, 0.5, None]
# float64: 1e-10 absolute, and 1e-12 relative for values far from 1 (B0 on an FC layer divides by
# v * x + sqrt(eps), so its gradients reach 1e4).
TOL = dict(rtol=1e-12, atol=1e-10)


@pytest.fixture
def timm_in_float64(monkeypatch: pytest.MonkeyPatch) -> None:
    """timm computes its statistics after ``x.float()`` (an upcast for half precision), which casts
    a float64 input down to float32; here ``.float()`` keeps float64, so timm's formulas are
    compared at float64's precision."""
    monkeypatch.setattr(torch.Tensor, "float", lambda self, *args, **kwargs: self)


def _randomize(module: nn.Module, seed: int) -> None:
    """Parameters away from their init (ones and zeros hide mistakes): uniform in [0.5, 1.5]."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.rand(parameter.shape, generator=generator, dtype=torch.float64) + 0.5)


def _same_steps(
    ours: nn.Module,
    reference: nn.Module,
    spatial: bool,
    batch: int,
    as_reference: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
    steps: int = 3,
) -> None:
    """Outputs, input gradients, every parameter's gradient (by name) and the running statistics
    agree step by step, then in eval mode. ``as_reference`` maps our input to the reference's
    layout (FC inputs as (N, C, 1, 1) maps for timm's 4-D layers)."""
    channels = ours.weight.numel()
    for step in range(steps + 1):
        if step == steps:
            ours.eval(), reference.eval()
        x = make_input(batch, channels, spatial, step)
        x_ours, x_reference = x.clone().requires_grad_(), x.clone().requires_grad_()
        y_ours, y_reference = ours(x_ours), reference(as_reference(x_reference)).reshape(x.shape)
        torch.testing.assert_close(y_ours, y_reference, **TOL)
        upstream = torch.randn(
            y_ours.shape, generator=torch.Generator().manual_seed(step), dtype=torch.float64
        )
        (y_ours * upstream).sum().backward()
        (y_reference * upstream).sum().backward()
        torch.testing.assert_close(x_ours.grad, x_reference.grad, **TOL)
        theirs = {name.rsplit(".", 1)[-1]: p for name, p in reference.named_parameters()}  # wrapped too
        for name, parameter in ours.named_parameters():
            torch.testing.assert_close(parameter.grad, theirs[name].grad, **TOL, msg=name)
        for name, buffer in reference.named_buffers():  # by their own name (a wrapped layer's too)
            mine = getattr(ours, name.rsplit(".", 1)[-1])
            torch.testing.assert_close(mine.double(), buffer.double(), **TOL, msg=name)


def _maps(x: torch.Tensor) -> torch.Tensor:
    return x[:, :, None, None]


@pytest.mark.parametrize("batch", [1, 2, 8])
def test_frn_equals_timm(timm_in_float64: None, batch: int) -> None:
    ours = build_norm("frn", 6, spatial=True).double()
    reference = FilterResponseNormTlu2d(6, eps=1e-6).double()
    _randomize(ours, 0), _randomize(reference, 0)
    _same_steps(ours, reference, spatial=True, batch=batch)


@pytest.mark.parametrize("spatial", [False, True], ids=["fc", "conv"])
def test_frn_learned_eps_is_eps_plus_its_absolute_value(spatial: bool) -> None:
    """FC layers always learn eps (one value per channel: x / sqrt(x^2 + eps) would be sign(x));
    conv layers when asked. The paper's formula with eps + |e|, gradient of e included."""
    ours = build_norm("frn", 5, spatial=spatial, learned_eps=spatial).double()
    assert ours.learned_eps is not None
    _randomize(ours, 1)
    with torch.no_grad():
        ours.learned_eps.fill_(-0.3)  # its absolute value counts
    weight, bias, tau, e = (
        p.detach().clone().requires_grad_() for p in (ours.weight, ours.bias, ours.tau, ours.learned_eps)
    )
    x = make_input(4, 5, spatial, 0)
    shape = (1, -1, 1, 1) if spatial else (1, -1)
    nu2 = (x**2).mean(dim=(2, 3), keepdim=True) if spatial else x**2
    expected = torch.max(
        weight.view(shape) * x / torch.sqrt(nu2 + 1e-6 + e.abs()) + bias.view(shape), tau.view(shape)
    )
    y = ours(x)
    torch.testing.assert_close(y, expected, **TOL)
    y.sum().backward(), expected.sum().backward()
    torch.testing.assert_close(ours.learned_eps.grad, e.grad, **TOL)
    assert build_norm("frn", 5, spatial=True).learned_eps is None  # conv layers: fixed eps by default


@pytest.mark.parametrize("spatial", [False, True], ids=["fc", "conv"])
@pytest.mark.parametrize("momentum", MOMENTA)
@pytest.mark.parametrize("batch", [2, 8, 64])
def test_evonorm_b0_equals_timm(
    timm_in_float64: None, spatial: bool, momentum: float | None, batch: int
) -> None:
    ours = build_norm("evonorm_b0", 6, spatial=spatial, momentum=momentum).double()
    # timm has no cumulative average: momentum None is compared at its first step only (m = 1)
    reference = EvoNorm2dB0(6, momentum=1.0 if momentum is None else momentum, eps=1e-5).double()
    _randomize(ours, 2), _randomize(reference, 2)
    _same_steps(
        ours,
        reference,
        spatial,
        batch,
        lambda x: x if spatial else _maps(x),
        steps=1 if momentum is None else 3,
    )


@pytest.mark.parametrize("virtual", [2, 3])
def test_evonorm_b0_over_virtual_batches_is_b0_per_chunk(timm_in_float64: None, virtual: int) -> None:
    """Each chunk normalized as timm's B0 would normalize it as a batch; the running variance takes
    one step towards the chunks' average unbiased variance."""
    ours = build_norm("evonorm_b0", 4, spatial=True, virtual_batch_size=virtual).double()
    reference = EvoNorm2dB0(4, momentum=0.1, eps=1e-5).double()
    _randomize(ours, 3), _randomize(reference, 3)
    x = make_input(8, 4, True, 0)
    chunks = x.split(virtual)
    torch.testing.assert_close(ours(x), torch.cat([reference(chunk) for chunk in chunks]), **TOL)
    n = virtual * 5 * 4
    average = torch.stack(
        [c.var(dim=(0, 2, 3), unbiased=False) * n / (n - 1) for c in chunks[: 8 // virtual]]
    )
    if 8 % virtual:  # the tail chunk, of fewer samples
        tail = chunks[-1]
        m = tail.numel() // 4
        average = torch.cat([average, (tail.var(dim=(0, 2, 3), unbiased=False) * m / (m - 1))[None]])
    torch.testing.assert_close(ours.running_var, 0.9 + 0.1 * average.mean(0), **TOL)


@pytest.mark.parametrize("spatial", [False, True], ids=["fc", "conv"])
@pytest.mark.parametrize("batch", [1, 2, 8])
@pytest.mark.parametrize("channels", [6, 16, 84])
def test_evonorm_s0_equals_timm_with_groups_as_group_norm_takes_them(
    timm_in_float64: None, spatial: bool, batch: int, channels: int
) -> None:
    ours = build_norm("evonorm_s0", channels, spatial=spatial).double()
    groups = {6: 3, 16: 4, 84: 4}[channels]  # at most 4, a divisor of the channels (as norm=group)
    assert ours.groups == groups
    reference = EvoNorm2dS0(channels, groups=groups, eps=1e-5).double()
    _randomize(ours, 4), _randomize(reference, 4)
    _same_steps(ours, reference, spatial, batch, lambda x: x if spatial else _maps(x))


def _one_hot(layer: nn.Module, which: int) -> None:
    with torch.no_grad():
        for mix in (layer.mean_weight, layer.var_weight):
            mix.fill_(-torch.inf)
            mix[which] = 0.0


def _reference_for(which: str, spatial: bool, momentum: float | None) -> nn.Module:
    if which == "IN":
        return nn.InstanceNorm2d(6, affine=True, eps=1e-5)
    if which == "LN":
        return nn.GroupNorm(1, 6, eps=1e-5)
    return (nn.BatchNorm2d if spatial else nn.BatchNorm1d)(6, momentum=momentum, eps=1e-5)


class _WithMixingWeights(nn.Module):
    """A reference layer with zero-gradient mixing weights beside it: a one-hot softmax passes
    exactly 0 to the mixing weights (p_i (delta_ij - p_j) = 0 when p is one-hot)."""

    def __init__(self, layer: nn.Module, statistics: int) -> None:
        super().__init__()
        self.layer = layer
        self.mean_weight = nn.Parameter(torch.zeros(statistics, dtype=torch.float64))
        self.var_weight = nn.Parameter(torch.zeros(statistics, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x) + 0 * (self.mean_weight.sum() + self.var_weight.sum())


@pytest.mark.parametrize(
    ("which", "spatial"), [("IN", True), ("LN", True), ("BN", True), ("LN", False), ("BN", False)]
)
@pytest.mark.parametrize("momentum", MOMENTA)
@pytest.mark.parametrize("batch", [2, 8])
def test_switchable_one_hot_is_instance_layer_or_batch_norm(
    which: str, spatial: bool, momentum: float | None, batch: int
) -> None:
    ours = build_norm("switchable", 6, spatial=spatial, momentum=momentum).double()
    order = ["IN", "LN", "BN"] if spatial else ["LN", "BN"]
    _one_hot(ours, order.index(which))
    reference = _reference_for(which, spatial, momentum).double()
    _randomize(reference, 5)
    with torch.no_grad():
        ours.weight.copy_(reference.weight), ours.bias.copy_(reference.bias)
    _same_steps(ours, _WithMixingWeights(reference, len(order)), spatial, batch)


def test_switchable_mixes_the_papers_statistics() -> None:
    """Weights away from one-hot: the mix of means and of variances as the paper writes them, each
    statistic computed here by ``torch.var_mean``; evaluation swaps BN's for its moving averages."""
    ours = build_norm("switchable", 4, spatial=True, momentum=0.1).double()
    _randomize(ours, 6)
    x = make_input(8, 4, True, 0)
    w_mean, w_var = torch.softmax(ours.mean_weight.detach(), 0), torch.softmax(ours.var_weight.detach(), 0)

    def expected(bn_var: torch.Tensor, bn_mean: torch.Tensor) -> torch.Tensor:
        in_var, in_mean = torch.var_mean(x, dim=(2, 3), keepdim=True, correction=0)
        ln_var, ln_mean = torch.var_mean(x, dim=(1, 2, 3), keepdim=True, correction=0)
        mean = w_mean[0] * in_mean + w_mean[1] * ln_mean + w_mean[2] * bn_mean
        var = w_var[0] * in_var + w_var[1] * ln_var + w_var[2] * bn_var
        shape = (1, -1, 1, 1)
        return (x - mean) / torch.sqrt(var + 1e-5) * ours.weight.detach().view(
            shape
        ) + ours.bias.detach().view(shape)

    torch.testing.assert_close(
        ours(x), expected(*torch.var_mean(x, dim=(0, 2, 3), keepdim=True, correction=0)), **TOL
    )
    ours.eval()
    moving = (ours.running_var.view(1, -1, 1, 1), ours.running_mean.view(1, -1, 1, 1))
    torch.testing.assert_close(ours(x), expected(*moving), **TOL)


@pytest.mark.parametrize("virtual", [2, 3])
def test_switchable_bn_over_virtual_batches_is_ghost_bn(virtual: int) -> None:
    ours = build_norm("switchable", 6, spatial=True, virtual_batch_size=virtual).double()
    _one_hot(ours, 2)
    ghost = GhostBatchNorm(6, spatial=True, virtual_batch_size=virtual).double()
    _randomize(ghost, 7)
    with torch.no_grad():
        ours.weight.copy_(ghost.weight), ours.bias.copy_(ghost.bias)
    _same_steps(ours, _WithMixingWeights(ghost, 3), spatial=True, batch=8)


@pytest.mark.parametrize("padding", [0, 2])
def test_weight_standardization_equals_timm_std_conv(padding: int) -> None:
    ours = StandardizedConv2d(3, 6, kernel_size=5, padding=padding).double()
    reference = StdConv2d(3, 6, kernel_size=5, padding=padding, bias=True, eps=1e-6).double()
    with torch.no_grad():
        reference.weight.copy_(ours.weight), reference.bias.copy_(ours.bias)
    x = make_input(4, 3, True, 0).repeat(1, 1, 3, 3)
    x_ours, x_reference = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ours, y_reference = ours(x_ours), reference(x_reference)
    torch.testing.assert_close(y_ours, y_reference, **TOL)
    (y_ours**2).sum().backward(), (y_reference**2).sum().backward()
    torch.testing.assert_close(x_ours.grad, x_reference.grad, **TOL)
    torch.testing.assert_close(ours.weight.grad, reference.weight.grad, **TOL)
    torch.testing.assert_close(ours.bias.grad, reference.bias.grad, **TOL)
    standardized = ours.standardized_weight().flatten(1)
    torch.testing.assert_close(standardized.mean(1), torch.zeros(6, dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", NEW_KINDS)
@pytest.mark.parametrize("batch", [1, 2])
def test_lenet_trains_with_each_new_kind_down_to_batch_1(kind: str, batch: int) -> None:
    """A normalization-activation layer takes the sigmoid's place; the others keep it. A step at
    batch 1 and 2 gives finite gradients everywhere (no layer raises as torch's BN does)."""
    net = LeNet(norm_factory(kind))
    activations = [type(m).__name__ for m in net if isinstance(m, nn.Sigmoid | nn.Identity)]
    dropped = NORMS[kind].includes_activation()
    assert activations == (["Identity"] * 4 if dropped else ["Sigmoid"] * 4)
    images = torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    nn.functional.cross_entropy(net(images), torch.arange(batch)).backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_weight_standardized_lenet_standardizes_its_conv_layers_only() -> None:
    net = LeNet(norm_factory("group"), weight_standardization=True)
    assert [type(m).__name__ for m in net if isinstance(m, nn.Conv2d | nn.Linear)] == [
        "StandardizedConv2d", "StandardizedConv2d", "Linear", "Linear", "Linear"
    ]  # fmt: skip


def test_registry_knows_what_each_new_kind_is() -> None:
    assert set(NEW_KINDS) <= set(NORMS)
    assert {k for k in NORMS if NORMS[k].includes_activation()} == {"frn", "evonorm_b0", "evonorm_s0"}
    assert {k for k in NEW_KINDS if NORMS[k].batch_statistics} == {"evonorm_b0", "switchable"}
    assert {k for k in NEW_KINDS if NORMS[k].running_statistics} == {"evonorm_b0", "switchable"}
