"""Every normalization layer, one paper per file, and the registry (``registry.NORMS``), the one
place that says what a kind is. ``norm_factory`` is what ``conf/norm/*.yaml`` instantiates."""

from normlab.layers.registry import NORMS, NormFactory, NormKind, build_norm, norm_factory

__all__ = ["NORMS", "NormFactory", "NormKind", "build_norm", "norm_factory"]
