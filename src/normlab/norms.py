"""Normalization layers by name: one registry, one constructor, and the from-scratch batch norm.

Every kind is built as ``build_norm(kind, num_features, spatial, momentum, eps, **options)`` so
that models can swap them freely (the channel count comes first, as in timm and torchvision).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn

from normlab.batch_norm import BatchNorm
from normlab.batch_variants import BatchRenorm, GhostBatchNorm

NormFactory = Callable[[int, bool], nn.Module]


def _identity(num_features: int, spatial: bool, momentum: float | None, eps: float) -> nn.Module:
    return nn.Identity()


def _native(
    num_features: int, spatial: bool, momentum: float | None, eps: float, affine: bool = True
) -> nn.Module:
    layer = nn.BatchNorm2d if spatial else nn.BatchNorm1d
    return layer(num_features, eps=eps, momentum=momentum, affine=affine)


def groups_for(num_features: int, num_groups: int) -> int:
    """The largest divisor of ``num_features`` not above ``num_groups``: LeNet's 6 and 84 channels
    take no 32 (the GN paper's default) or even 4 equal groups."""
    return max(g for g in range(1, min(num_groups, num_features) + 1) if num_features % g == 0)


def _group(
    num_features: int, spatial: bool, momentum: float | None, eps: float, num_groups: int = 4
) -> nn.Module:
    """Group Norm (Wu & He 2018): statistics per sample over each group of channels (and H, W);
    no batch statistics, so no momentum and no batch-size dependence. torch's layer."""
    if num_groups < 1:
        raise ValueError(f"group needs num_groups >= 1; got {num_groups}")
    return nn.GroupNorm(groups_for(num_features, num_groups), num_features, eps=eps)


def _layer(num_features: int, spatial: bool, momentum: float | None, eps: float) -> nn.Module:
    """Layer Norm as the GN paper defines it for conv nets: one group over C, H, W, per-channel
    gamma and beta (torch's ``nn.LayerNorm`` would learn one per element)."""
    return nn.GroupNorm(1, num_features, eps=eps)


def _variant(**fixed: object) -> Callable[..., nn.Module]:
    """A registry entry: the scratch BatchNorm with some options fixed (d2l's exercises)."""

    def build(
        num_features: int, spatial: bool, momentum: float | None, eps: float, **options: object
    ) -> nn.Module:
        return BatchNorm(num_features, spatial, momentum, eps, **{**options, **fixed})

    return build


NORMS: dict[str, Callable[..., nn.Module]] = {
    "none": _identity,
    "scratch": BatchNorm,
    "native": _native,
    "group": _group,
    "layer": _layer,
    "batch_renorm": BatchRenorm,
    "ghost": GhostBatchNorm,
    "mean_only": _variant(scale=False),
    "variance_only": _variant(center=False),
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
