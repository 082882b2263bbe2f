"""K LeNets trained as one model (horizontally fused training, HFTA: Wang et al., MLSys 2021).

A LeNet step at a small batch is mostly overhead: K independent models fused into one pay it once.
Model k keeps channels ``[k*C, (k+1)*C)`` of every fused layer:

- a convolution becomes one convolution with ``groups = K`` (weights stacked along the output
  channels), so model k's outputs see only model k's inputs;
- a linear layer becomes one batched matmul over a (K, batch, features) view;
- each model keeps its own normalization module, applied to its slice of channels (so the norm
  kinds, momenta and options of the K models may differ), and activations and pooling act per
  channel anyway;
- the loss is the sum of the K models' losses, so each model's gradient is exactly its own.

Each model sees its own batch (its own data order): inputs are (K, batch, C, H, W), logits
(K, batch, classes). ``fuse`` builds the fused model from K LeNets (their own inits), ``unfused``
returns model k's state dict, key for key a LeNet's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from normlab.batch_norm import BatchNorm
from normlab.models import LeNet


class FusedConv2d(nn.Module):
    """K ``nn.Conv2d`` of the same shape as one grouped convolution over (batch, K*C_in, H, W)."""

    def __init__(self, convs: Sequence[nn.Conv2d]) -> None:
        super().__init__()
        first = convs[0]
        if first.groups != 1:
            raise ValueError("only ungrouped convolutions fuse")
        self.k, self.stride, self.padding = len(convs), first.stride, first.padding
        self.weight = nn.Parameter(torch.cat([conv.weight.detach() for conv in convs]))
        biases = [conv.bias for conv in convs]
        self.bias = nn.Parameter(torch.cat([b.detach() for b in biases])) if biases[0] is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, groups=self.k)

    def part(self, k: int) -> dict[str, torch.Tensor]:
        rows = self.weight.shape[0] // self.k
        parts = {"weight": self.weight[k * rows : (k + 1) * rows]}
        if self.bias is not None:
            parts["bias"] = self.bias[k * rows : (k + 1) * rows]
        return parts


class FusedLinear(nn.Module):
    """K ``nn.Linear`` of the same shape as one batched matmul: (batch, K*in) -> (batch, K*out)."""

    def __init__(self, linears: Sequence[nn.Linear]) -> None:
        super().__init__()
        self.k = len(linears)
        self.weight = nn.Parameter(
            torch.stack([linear.weight.detach() for linear in linears])
        )  # (K, out, in)
        biases = [linear.bias for linear in linears]
        self.bias = nn.Parameter(torch.stack([b.detach() for b in biases])) if biases[0] is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        per_model = x.view(batch, self.k, -1).transpose(0, 1)  # (K, batch, in)
        if self.bias is None:
            y = torch.bmm(per_model, self.weight.transpose(1, 2))
        else:
            y = torch.baddbmm(self.bias.unsqueeze(1), per_model, self.weight.transpose(1, 2))
        return y.transpose(0, 1).reshape(batch, -1)

    def part(self, k: int) -> dict[str, torch.Tensor]:
        parts = {"weight": self.weight[k]}
        if self.bias is not None:
            parts["bias"] = self.bias[k]
        return parts


class PerModel(nn.Module):
    """Each model's own module (its norm) on its slice of the channels (dim 1)."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        super().__init__()
        self.models = nn.ModuleList(modules)
        self.identity = all(isinstance(module, nn.Identity) for module in modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.identity:
            return x
        slices = x.chunk(len(self.models), dim=1)
        # Contiguous slices: a norm then reduces in the same order as it does alone.
        outputs = [module(part.contiguous()) for module, part in zip(self.models, slices, strict=True)]
        return torch.cat(outputs, dim=1)

    def part(self, k: int) -> dict[str, torch.Tensor]:
        return dict(self.models[k].state_dict())


class FusedBatchNorm(nn.Module):
    """K batch norms of one kind and one setting as one over K*C channels: BN is per channel, so
    each model's statistics, running averages and gradients stay its own, in one call."""

    def __init__(self, norms: Sequence[nn.Module]) -> None:
        super().__init__()
        first = norms[0]
        self.k, channels = len(norms), first.num_features * len(norms)
        if isinstance(first, BatchNorm):
            self.layer: nn.Module = BatchNorm(
                channels, first.spatial, first.momentum, first.eps, first.center, first.scale, first.affine
            )
        else:
            self.layer = type(first)(channels, first.eps, first.momentum, first.affine)
        with torch.no_grad():
            for name, tensor in self.layer.state_dict().items():
                parts = [norm.state_dict()[name] for norm in norms]
                tensor.copy_(parts[0] if tensor.dim() == 0 else torch.cat(parts))
        self.layer.to(first.running_mean)  # the models' dtype and device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def part(self, k: int) -> dict[str, torch.Tensor]:
        return {name: tensor if tensor.dim() == 0 else tensor.view(self.k, -1)[k]
                for name, tensor in self.layer.state_dict().items()}  # fmt: skip

    @staticmethod
    def fits(norms: Sequence[nn.Module]) -> bool:
        """Plain BN (scratch or torch's) of one type and one setting in every model."""
        first = norms[0]
        if type(first) not in (BatchNorm, nn.BatchNorm1d, nn.BatchNorm2d):
            return False
        setting = ("momentum", "eps", "affine", "center", "scale", "spatial", "num_features")
        return all(
            type(norm) is type(first)
            and all(getattr(norm, a, None) == getattr(first, a, None) for a in setting)
            for norm in norms
        )


SHARED = (nn.Sigmoid, nn.AvgPool2d, nn.Flatten)  # act per channel: one module serves all K


def _fuse_layer(layers: list[nn.Module]) -> nn.Module:
    first = layers[0]
    shapes = {tuple(p.shape for p in layer.parameters()) for layer in layers if not _is_norm(layer)}
    if len(shapes) > 1:
        raise ValueError(
            f"the models differ in the shapes of a {type(first).__name__}: fuse one architecture"
        )
    if any(type(layer) is not type(first) for layer in layers) and not all(
        _is_norm(layer) for layer in layers
    ):
        raise ValueError(
            f"the models differ in layer kind: {sorted({type(layer).__name__ for layer in layers})}"
        )
    if isinstance(first, nn.Conv2d):
        return FusedConv2d(layers)
    if isinstance(first, nn.Linear):
        return FusedLinear(layers)
    if isinstance(first, SHARED):
        return first
    return FusedBatchNorm(layers) if FusedBatchNorm.fits(layers) else PerModel(layers)


def _is_norm(layer: nn.Module) -> bool:
    return not isinstance(layer, (nn.Conv2d, nn.Linear, *SHARED))


class FusedLeNet(nn.Sequential):
    """K LeNets of one architecture (norm kinds may differ) as one model; see the module docstring."""

    def __init__(self, nets: Sequence[LeNet]) -> None:
        lengths = {len(net) for net in nets}
        if len(lengths) != 1:
            raise ValueError("the models differ in depth: fuse LeNets of one architecture")
        super().__init__(*(_fuse_layer([net[i] for net in nets]) for i in range(len(nets[0]))))
        self.k = len(nets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(K, batch, C, H, W) -> (K, batch, classes)."""
        k, batch = x.shape[:2]
        fused = x.transpose(0, 1).reshape(batch, k * x.shape[2], *x.shape[3:])
        return super().forward(fused).view(batch, k, -1).transpose(0, 1)

    def unfused(self, k: int) -> dict[str, torch.Tensor]:
        """Model k's state dict, with a LeNet's keys (``0.weight``, ``1.running_mean``, ...)."""
        state = {}
        for index, layer in enumerate(self):
            if isinstance(layer, FusedConv2d | FusedLinear | FusedBatchNorm | PerModel):
                state.update({f"{index}.{key}": value for key, value in layer.part(k).items()})
        return state


def fused_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The sum of the K models' mean cross-entropies (each model's gradient is its own), and the
    K losses. ``logits`` (K, batch, classes), ``labels`` (K, batch)."""
    k, batch, classes = logits.shape
    each = F.cross_entropy(logits.reshape(k * batch, classes), labels.reshape(-1), reduction="none")
    losses = each.view(k, batch).mean(dim=1)
    return losses.sum(), losses


@torch.no_grad()
def sgd_step(model: FusedLeNet, lrs: torch.Tensor) -> None:
    """Plain SGD with model k's lr ``lrs[k]`` (torch's ``p -= lr * grad``, no momentum or decay)."""
    for layer in model:
        if isinstance(layer, FusedConv2d | FusedLinear | FusedBatchNorm):
            for parameter in layer.parameters():  # model k's values: row k of a (K, -1) view
                if parameter.grad is not None:
                    rows = parameter.view(layer.k, -1)
                    rows.sub_(parameter.grad.view(layer.k, -1) * lrs.to(rows.dtype)[:, None])
        elif isinstance(layer, PerModel):
            for lr, module in zip(lrs.tolist(), layer.models, strict=True):
                for parameter in module.parameters():
                    if parameter.grad is not None:
                        parameter.add_(parameter.grad, alpha=-lr)
