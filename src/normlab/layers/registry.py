"""Normalization layers by name: one registry that says what each kind is, one constructor.

Every kind is built as ``build_norm(kind, num_features, spatial, **options)`` so that models can
swap them freely (the channel count comes first, as in timm and torchvision). Each kind's options
are its constructor's keyword arguments, and ``conf/norm/<kind>.yaml`` lists all of them; a kind
without running statistics has no ``momentum``. Whoever needs to know what a kind is (does it
normalize by batch statistics? keep running statistics? which family do findings group it
with?) asks ``NORMS``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from torch import nn

from normlab.layers.batch_norm import BatchNorm
from normlab.layers.batch_variants import BatchRenorm, GhostBatchNorm
from normlab.layers.evonorm import EvoNormB0, EvoNormS0
from normlab.layers.frn import FilterResponseNorm
from normlab.layers.switchable import SwitchableNorm

NormFactory = Callable[[int, bool], nn.Module]


def _identity(num_features: int, spatial: bool) -> nn.Module:
    return nn.Identity()


def _native(
    num_features: int, spatial: bool, momentum: float | None = 0.1, eps: float = 1e-5, affine: bool = True
) -> nn.Module:
    layer = nn.BatchNorm2d if spatial else nn.BatchNorm1d
    return layer(num_features, eps=eps, momentum=momentum, affine=affine)


def groups_for(num_features: int, num_groups: int) -> int:
    """The largest divisor of ``num_features`` not above ``num_groups``: LeNet's 6 and 84 channels
    take no 32 (the GN paper's default) or even 4 equal groups."""
    return max(g for g in range(1, min(num_groups, num_features) + 1) if num_features % g == 0)


def groups_note(net: nn.Module, num_groups: int) -> str | None:
    """A sentence where ``norm.num_groups`` divides not every Group Norm layer's channels of
    ``net`` (each then uses ``groups_for``), naming what each uses; else None."""
    layers = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
    if all(layer.num_groups == num_groups for layer in layers):
        return None
    used = ", ".join(f"{layer.num_groups} for {layer.num_channels}" for layer in layers)
    return (
        f"note: norm.num_groups={num_groups} does not divide every layer's channels; each layer uses "
        f"the largest divisor not above it (groups for channels: {used})"
    )


def _group(num_features: int, spatial: bool, eps: float = 1e-5, num_groups: int = 4) -> nn.Module:
    """Group Norm (Wu & He 2018): statistics per sample over each group of channels (and H, W);
    no batch statistics, so no momentum and no batch-size dependence. torch's layer."""
    if num_groups < 1:
        raise ValueError(f"group needs num_groups >= 1; got {num_groups}")
    return nn.GroupNorm(groups_for(num_features, num_groups), num_features, eps=eps)


def _layer(num_features: int, spatial: bool, eps: float = 1e-5) -> nn.Module:
    """Layer Norm as the GN paper defines it for conv nets: one group over C, H, W, per-channel
    gamma and beta (torch's ``nn.LayerNorm`` would learn one per element)."""
    return nn.GroupNorm(1, num_features, eps=eps)


def _evonorm_s0(num_features: int, spatial: bool, eps: float = 1e-5, num_groups: int = 4) -> nn.Module:
    """EvoNorm-S0 with at most ``num_groups`` groups, as ``group`` takes them (6 channels: 3)."""
    if num_groups < 1:
        raise ValueError(f"evonorm_s0 needs num_groups >= 1; got {num_groups}")
    return EvoNormS0(num_features, spatial, groups_for(num_features, num_groups), eps)


def _scratch(
    num_features: int, spatial: bool, momentum: float | None = 0.1, eps: float = 1e-5, affine: bool = True
) -> nn.Module:
    """d2l's batch norm, from scratch (its center/scale switches are the kinds below)."""
    return BatchNorm(num_features, spatial, momentum, eps, affine=affine)


def _mean_only(
    num_features: int, spatial: bool, momentum: float | None = 0.1, eps: float = 1e-5, affine: bool = True
) -> nn.Module:
    """The scratch BN without dividing by the standard deviation (a d2l exercise)."""
    return BatchNorm(num_features, spatial, momentum, eps, scale=False, affine=affine)


def _variance_only(
    num_features: int, spatial: bool, momentum: float | None = 0.1, eps: float = 1e-5, affine: bool = True
) -> nn.Module:
    """The scratch BN without subtracting the mean: x / sqrt(var + eps) (a d2l exercise)."""
    return BatchNorm(num_features, spatial, momentum, eps, center=False, affine=affine)


@dataclass(frozen=True)
class NormKind:
    build: Callable[..., nn.Module]  # (num_features, spatial, **options) -> layer
    family: str  # what findings group it with: ghost BN is BN over virtual batches
    batch_statistics: bool  # normalizes by statistics over samples of the batch: depends on its size
    running_statistics: bool  # keeps moving averages for evaluation: has a momentum, PreciseBN applies
    virtual_batches: bool = False  # may take its statistics over chunks of the batch
    # The kind it *is* when its virtual batch holds the whole SGD batch (ghost BN is then BN).
    whole_batch_kind: str | None = None
    fuses: bool = False  # trains within a fused group exactly as alone (tests/fused/test_model.py)
    # The smallest statistics batch it takes in FC layers (one value per channel): torch's BN
    # raises below it; batch renorm passes no gradient below it (``refused_below`` says why).
    smallest_batch: int = 1
    refused_below: str | None = None  # why a cell below ``smallest_batch`` is refused, not trained

    def includes_activation(self) -> bool:
        """A normalization-activation layer (FRN + TLU, EvoNorm): the model drops its activation."""
        return bool(getattr(self.build(6, True), "includes_activation", False))

    def options(self) -> list[str]:
        """The keyword options of its constructor (after the channel count and ``spatial``)."""
        return list(inspect.signature(self.build).parameters)[2:]

    def defaults(self) -> dict[str, object]:
        """Its options' default values."""
        parameters = list(inspect.signature(self.build).parameters.values())[2:]
        return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


# Batch renorm's r and d are constants for the gradient: over one sample x - mean is 0, so a layer
# outputs weight * d + bias and nothing below it learns.
_RENORM_OF_ONE = (
    "batch renorm over 1 sample in FC layers passes no gradient below them "
    "(x - mean = 0; r, d are constants): the conv layers would keep their random weights"
)


# name -> constructor, family, batch statistics, running statistics, and what else the kind is
NORMS: dict[str, NormKind] = {
    "none": NormKind(_identity, "none", False, False, fuses=True),
    "scratch": NormKind(_scratch, "BN", True, True, fuses=True),
    "native": NormKind(_native, "BN", True, True, fuses=True, smallest_batch=2),
    "group": NormKind(_group, "group", False, False, fuses=True),
    "layer": NormKind(_layer, "layer", False, False, fuses=True),
    "batch_renorm": NormKind(
        BatchRenorm,
        "batch renorm",
        True,
        True,
        virtual_batches=True,
        smallest_batch=2,
        refused_below=_RENORM_OF_ONE,
    ),
    "ghost": NormKind(
        GhostBatchNorm, "BN", True, True, virtual_batches=True, whole_batch_kind="scratch", fuses=True
    ),
    "mean_only": NormKind(_mean_only, "mean_only", True, True),
    "variance_only": NormKind(_variance_only, "variance_only", True, True),
    "frn": NormKind(FilterResponseNorm, "FRN", False, False),
    "evonorm_b0": NormKind(EvoNormB0, "EvoNorm-B0", True, True, virtual_batches=True),
    "evonorm_s0": NormKind(_evonorm_s0, "EvoNorm-S0", False, False),
    "switchable": NormKind(SwitchableNorm, "switchable", True, True, virtual_batches=True),
}


def kinds(**wanted: object) -> tuple[str, ...]:
    """The kinds whose ``NormKind`` fields equal ``wanted``, e.g. ``kinds(batch_statistics=False)``."""
    return tuple(
        name
        for name, kind in NORMS.items()
        if all(getattr(kind, key) == value for key, value in wanted.items())
    )


# d2l's batch norm: statistics over the whole SGD batch (what findings F1-F5 compare with no norm).
WHOLE_BATCH_BN = kinds(family="BN", virtual_batches=False)


def _check_kind(kind: str) -> None:
    if kind not in NORMS:
        raise ValueError(f"unknown norm kind {kind!r}; known kinds: {', '.join(sorted(NORMS))}")


def _check_options(kind: str, options: dict[str, object]) -> None:
    known = NORMS[kind].options()
    unknown = [name for name in options if name not in known]
    if unknown:
        raise ValueError(
            f"norm kind {kind!r} takes no option {unknown[0]!r}; its options: {', '.join(known) or 'none'}"
        )


def build_norm(kind: str, num_features: int, spatial: bool, **options: object) -> nn.Module:
    """Build the normalization layer ``kind`` for ``num_features`` channels.

    ``spatial=True`` for (N, C, H, W) inputs, ``False`` for (N, C). A ``momentum`` follows torch's
    rule ``running = (1 - momentum) * running + momentum * batch`` (``None``: cumulative average).
    """
    _check_kind(kind)
    _check_options(kind, options)
    return NORMS[kind].build(num_features, spatial, **options)


def norm_factory(kind: str, **options: object) -> NormFactory:
    """A ``(num_features, spatial) -> nn.Module`` constructor for models; checks kind and options now."""
    _check_kind(kind)
    _check_options(kind, options)
    return partial(build_norm, kind, **options)
