"""The norms beyond BN, in float64: each against torch's layers, an independent formula, or BN where
its paper says the two coincide; across batch sizes, momenta, and conv and FC shapes."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normlab.layers.batch_variants import BatchRenorm, GhostBatchNorm
from normlab.layers.registry import BatchNorm, build_norm, groups_for
from tests.layers.norm_checks import TOL, make_input, same_training_steps

SHAPES = [False, True]  # spatial: (N, C) FC inputs and (N, C, H, W) conv inputs
MOMENTA = [0.1, 0.5, None]


def _affine(*layers: nn.Module) -> None:
    """The same non-trivial gamma and beta in every layer, so their gradients are tested too."""
    generator = torch.Generator().manual_seed(7)
    channels = layers[0].weight.numel()
    weight = torch.rand(channels, generator=generator, dtype=torch.float64) + 0.5
    bias = torch.randn(channels, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        for layer in layers:
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)


def _native_bn(channels: int, spatial: bool, momentum: float | None, affine: bool = True) -> nn.Module:
    return build_norm("native", channels, spatial, momentum=momentum, affine=affine).double()


# --- Group Norm and Layer Norm -------------------------------------------------------------


def _group_norm_formula(
    x: torch.Tensor, groups: int, weight: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """The GN paper's definition, written out: per sample, mean and biased variance over each group."""
    grouped = x.reshape(x.shape[0], groups, -1)
    mean = grouped.mean(dim=2, keepdim=True)
    var = ((grouped - mean) ** 2).mean(dim=2, keepdim=True)
    normalized = ((grouped - mean) / torch.sqrt(var + 1e-5)).reshape(x.shape)
    view = (1, -1) + (1,) * (x.dim() - 2)
    return normalized * weight.view(view) + bias.view(view)


@pytest.mark.parametrize("spatial", SHAPES, ids=["fc", "conv"])
@pytest.mark.parametrize("batch", [1, 2, 8])
@pytest.mark.parametrize("num_groups", [1, 2, 3, 6])
def test_group_norm_equals_the_papers_formula(spatial: bool, batch: int, num_groups: int) -> None:
    layer = build_norm("group", 6, spatial, num_groups=num_groups).double()
    _affine(layer)
    assert layer.num_groups == num_groups  # 6 channels: each of these divides it
    if not spatial and num_groups == 6 and batch == 1:  # one value per group: nothing to normalize
        with pytest.raises(ValueError, match="Expected more than 1 value"):
            layer(make_input(batch, 6, spatial, 0))
        return
    same_training_steps(
        layer, lambda x: _group_norm_formula(x, num_groups, layer.weight, layer.bias), spatial, batch
    )


@pytest.mark.parametrize("spatial", SHAPES, ids=["fc", "conv"])
def test_layer_norm_is_one_group_over_c_h_w(spatial: bool) -> None:
    layer = build_norm("layer", 6, spatial).double()
    _affine(layer)
    view = (1, -1, 1, 1) if spatial else (1, -1)

    def reference(
        x: torch.Tensor,
    ) -> torch.Tensor:  # torch's layer_norm over all but N, then per-channel affine
        return F.layer_norm(x, x.shape[1:], eps=1e-5) * layer.weight.view(view) + layer.bias.view(view)

    same_training_steps(layer, reference, spatial, batch=4)


def test_group_and_layer_norm_do_not_mix_samples() -> None:
    """No batch statistics: a sample's output is the same alone as in any batch, in train and eval."""
    for kind in ("group", "layer"):
        layer = build_norm(kind, 16, True).double()
        x = make_input(8, 16, True, 0)
        torch.testing.assert_close(layer(x)[3:4], layer(x[3:4]), **TOL)


def test_groups_for_channel_counts_that_do_not_divide() -> None:
    assert [groups_for(c, 4) for c in (6, 16, 84, 120, 7)] == [3, 4, 4, 4, 1]
    assert groups_for(120, 32) == 30 and groups_for(6, 32) == 6 and groups_for(6, 1) == 1


# --- Batch Renormalization -----------------------------------------------------------------


@pytest.mark.parametrize("spatial", SHAPES, ids=["fc", "conv"])
@pytest.mark.parametrize("momentum", MOMENTA)
@pytest.mark.parametrize("batch", [2, 8, 64])
def test_batch_renorm_with_r_max_1_and_d_max_0_is_batch_norm(spatial: bool, momentum, batch: int) -> None:
    ours = build_norm("batch_renorm", 6, spatial, momentum=momentum, r_max=1.0, d_max=0.0).double()
    native = _native_bn(6, spatial, momentum)
    _affine(ours, native)
    same_training_steps(ours, native, spatial, batch)


@pytest.mark.parametrize("spatial", SHAPES, ids=["fc", "conv"])
def test_batch_renorm_unclipped_trains_on_the_moving_statistics(spatial: bool) -> None:
    """With limits that never bind, r and d turn the batch statistics into the moving ones: the
    training output is the evaluation output (the paper's point), while the gradient still flows
    through the batch mean and variance with r and d held constant."""
    layer = build_norm("batch_renorm", 6, spatial, r_max=1e6, d_max=1e6).double()
    _affine(layer)
    for step in range(3):
        x = make_input(8, 6, spatial, step).requires_grad_()
        layer.eval()
        expected = layer(x).detach()
        dims, view = ((0, 2, 3), (1, -1, 1, 1)) if spatial else ((0,), (1, -1))
        mean = x.mean(dim=dims, keepdim=True)
        std = torch.sqrt(x.var(dim=dims, unbiased=False, keepdim=True) + 1e-5)
        running_std = torch.sqrt(layer.running_var.view(view) + 1e-5)
        r = (std / running_std).detach()
        d = ((mean - layer.running_mean.view(view)) / running_std).detach()
        formula = ((x - mean) / std * r + d) * layer.weight.view(view) + layer.bias.view(view)
        (grad_formula,) = torch.autograd.grad(formula.sum(), x)
        layer.train()
        y = layer(x)
        torch.testing.assert_close(y, expected, **TOL)
        torch.testing.assert_close(y, formula, **TOL)
        (grad,) = torch.autograd.grad(y.sum(), x)
        torch.testing.assert_close(grad, grad_formula, **TOL)


def test_batch_renorm_holds_batch_norm_then_relaxes_the_limits_linearly() -> None:
    """The paper's schedule: (1, 0) for hold_steps batches, then linear to (r_max, d_max)."""
    layer = BatchRenorm(4, spatial=False, r_max=3.0, d_max=5.0, hold_steps=20, warmup_steps=10)
    for step, expected in [(0, (1.0, 0.0)), (19, (1.0, 0.0)), (20, (1.0, 0.0)), (25, (2.0, 2.5)),
                           (30, (3.0, 5.0)), (400, (3.0, 5.0))]:  # fmt: skip
        layer.num_batches_tracked.fill_(step)
        assert layer.limits() == expected, step
    assert BatchRenorm(4, spatial=False, r_max=3.0, d_max=5.0).limits() == (3.0, 5.0)
    held = BatchRenorm(4, spatial=False, hold_steps=3).double()  # plain BN for 3 steps, in training
    reference = nn.BatchNorm1d(4).double()
    for _ in range(3):
        x = torch.randn(8, 4, dtype=torch.float64) * 3 + 2
        torch.testing.assert_close(held(x), reference(x), **TOL)
    for bad in (dict(r_max=0.5), dict(d_max=-1.0), dict(hold_steps=-1), dict(warmup_steps=-1)):
        with pytest.raises(ValueError, match="batch_renorm needs"):
            BatchRenorm(4, spatial=False, **bad)


@pytest.mark.parametrize("spatial", [False, True])
@pytest.mark.parametrize("virtual", [1, 4, 5])
def test_batch_renorm_over_virtual_batches_held_is_ghost_batch_norm(spatial: bool, virtual: int) -> None:
    """With its limits held at (1, 0), batch renorm over virtual batches is ghost BN exactly:
    outputs, input and affine gradients, running statistics, over several steps (uneven tails too)."""
    ours = BatchRenorm(6, spatial, r_max=1.0, d_max=0.0, virtual_batch_size=virtual).double()
    ghost = GhostBatchNorm(6, spatial, virtual_batch_size=virtual).double()
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5), ours.bias.uniform_(-0.5, 0.5)
        ghost.load_state_dict(ours.state_dict(), strict=False)
    for step in range(3):
        x = make_input(13, 6, spatial, step).requires_grad_()
        x_ghost = x.detach().clone().requires_grad_()
        y, y_ghost = ours(x), ghost(x_ghost)
        torch.testing.assert_close(y, y_ghost, **TOL)
        upstream = torch.randn_like(y)
        y.backward(upstream), y_ghost.backward(upstream)
        torch.testing.assert_close(x.grad, x_ghost.grad, **TOL)
        torch.testing.assert_close(ours.weight.grad, ghost.weight.grad, **TOL)
        torch.testing.assert_close(ours.bias.grad, ghost.bias.grad, **TOL)
        torch.testing.assert_close(ours.running_var, ghost.running_var, **TOL)
        torch.testing.assert_close(ours.running_mean, ghost.running_mean, **TOL)


# --- Ghost Batch Norm ----------------------------------------------------------------------


@pytest.mark.parametrize("spatial", SHAPES, ids=["fc", "conv"])
@pytest.mark.parametrize("momentum", MOMENTA)
@pytest.mark.parametrize(("batch", "virtual"), [(8, 8), (8, 32), (2, 2), (17, 64)])
def test_ghost_with_a_virtual_batch_at_least_the_batch_is_batch_norm(
    spatial, momentum, batch, virtual
) -> None:
    ours = build_norm("ghost", 6, spatial, momentum=momentum, virtual_batch_size=virtual).double()
    native = _native_bn(6, spatial, momentum)
    _affine(ours, native)
    same_training_steps(ours, native, spatial, batch)


@pytest.mark.parametrize("spatial", SHAPES, ids=["fc", "conv"])
@pytest.mark.parametrize(("batch", "virtual"), [(8, 4), (10, 4), (64, 16), (12, 5)])
def test_ghost_normalizes_each_virtual_batch_as_batch_norm_would(
    spatial: bool, batch: int, virtual: int
) -> None:
    """Output and gradients: torch's BN applied chunk by chunk. Moving statistics: one step towards
    the chunks' average mean and average unbiased variance (computed here with torch.var)."""
    momentum = 0.3
    ours = GhostBatchNorm(6, spatial, momentum=momentum, virtual_batch_size=virtual).double()
    native = _native_bn(6, spatial, momentum)
    _affine(ours, native)
    dims = (0, 2, 3) if spatial else (0,)
    for step in range(3):
        x = make_input(batch, 6, spatial, step)
        chunks = x.split(virtual)
        expected_mean = (1 - momentum) * ours.running_mean + momentum * torch.stack(
            [c.mean(dim=dims) for c in chunks]
        ).mean(0)
        expected_var = (1 - momentum) * ours.running_var + momentum * torch.stack(
            [c.var(dim=dims, unbiased=c.numel() > 6) for c in chunks]
        ).mean(0)

        def chunkwise(x: torch.Tensor) -> torch.Tensor:
            return torch.cat([copy.deepcopy(native).train()(c) for c in x.split(virtual)])

        x_ours, x_reference = x.clone().requires_grad_(), x.clone().requires_grad_()
        y_ours, y_reference = ours(x_ours), chunkwise(x_reference)
        torch.testing.assert_close(y_ours, y_reference, **TOL)
        upstream = torch.randn_like(y_ours, generator=torch.Generator().manual_seed(step))
        (y_ours * upstream).sum().backward()
        (y_reference * upstream).sum().backward()
        torch.testing.assert_close(x_ours.grad, x_reference.grad, **TOL)
        torch.testing.assert_close(ours.running_mean, expected_mean, **TOL)
        torch.testing.assert_close(ours.running_var, expected_var, **TOL)
    with pytest.raises(ValueError, match="virtual_batch_size >= 1"):
        GhostBatchNorm(6, spatial, virtual_batch_size=0)


def test_ghost_affine_gradients_sum_over_virtual_batches() -> None:
    ours = GhostBatchNorm(6, True, virtual_batch_size=4).double()
    chunks = [_native_bn(6, True, 0.1) for _ in range(3)]
    _affine(ours, *chunks)
    x = make_input(12, 6, True, 0)
    ours(x).pow(2).sum().backward()
    for chunk, part in zip(chunks, x.split(4), strict=True):
        chunk(part).pow(2).sum().backward()
    torch.testing.assert_close(ours.weight.grad, sum(c.weight.grad for c in chunks), **TOL)
    torch.testing.assert_close(ours.bias.grad, sum(c.bias.grad for c in chunks), **TOL)


# --- d2l's exercises: mean-only, variance-only, fixed gamma and beta -----------------------


@pytest.mark.parametrize("spatial", SHAPES, ids=["fc", "conv"])
@pytest.mark.parametrize("kind", ["mean_only", "variance_only"])
def test_lite_norms_remove_only_the_mean_or_only_the_variance(spatial: bool, kind: str) -> None:
    ours = build_norm(kind, 6, spatial, momentum=0.2).double()
    native = _native_bn(6, spatial, 0.2)  # the same moving statistics as full BN
    _affine(ours, native)
    dims, view = ((0, 2, 3), (1, -1, 1, 1)) if spatial else ((0,), (1, -1))

    def formula(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        normalized = x - mean if kind == "mean_only" else x / torch.sqrt(var + 1e-5)
        return normalized * ours.weight.view(view) + ours.bias.view(view)

    for step in range(3):
        x = make_input(8, 6, spatial, step).requires_grad_()
        mean, var = x.mean(dim=dims, keepdim=True), x.var(dim=dims, unbiased=False, keepdim=True)
        expected = formula(x, mean, var)
        y = ours(x)
        native(x.detach())
        torch.testing.assert_close(y, expected, **TOL)
        (grad,) = torch.autograd.grad((y * y).sum(), x)
        (grad_formula,) = torch.autograd.grad((expected * expected).sum(), x)
        torch.testing.assert_close(grad, grad_formula, **TOL)
        torch.testing.assert_close(ours.running_mean, native.running_mean, **TOL)
        torch.testing.assert_close(ours.running_var, native.running_var, **TOL)
    ours.eval()
    x = make_input(8, 6, spatial, 99)
    running = (ours.running_mean.view(view), ours.running_var.view(view))
    torch.testing.assert_close(ours(x), formula(x, *running), **TOL)


@pytest.mark.parametrize("spatial", SHAPES, ids=["fc", "conv"])
@pytest.mark.parametrize("batch", [2, 8, 64])
def test_fixed_affine_equals_torch_affine_false(spatial: bool, batch: int) -> None:
    ours = build_norm("scratch", 6, spatial, affine=False).double()
    native = _native_bn(6, spatial, 0.1, affine=False)
    assert not list(ours.parameters()) and ours.state_dict().keys() == native.state_dict().keys()
    channels = 6
    for step in range(3):
        x = make_input(batch, channels, spatial, step)
        x_ours, x_native = x.clone().requires_grad_(), x.clone().requires_grad_()
        y_ours, y_native = ours(x_ours), native(x_native)
        torch.testing.assert_close(y_ours, y_native, **TOL)
        (y_ours**2).sum().backward()
        (y_native**2).sum().backward()
        torch.testing.assert_close(x_ours.grad, x_native.grad, **TOL)
        torch.testing.assert_close(ours.running_var, native.running_var, **TOL)
    assert isinstance(ours, BatchNorm) and "affine=False" in repr(ours)
