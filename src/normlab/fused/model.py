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
(K, batch, classes). Feature maps and conv weights are kept channels-last (NHWC): on CPU oneDNN's
grouped convolutions, forward and backward, are faster in that layout at the small batches where
fusion is used (``make bench`` measures the fused step). ``FusedLeNet`` builds the fused model from
K LeNets (their own inits); its ``unfused`` returns model k's state dict, key for key a LeNet's.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from normlab.layers.batch_norm import BatchNorm
from normlab.layers.batch_variants import GhostBatchNorm
from normlab.models import LeNet


class FusedConv2d(nn.Module):
    """K ``nn.Conv2d`` of the same shape as one grouped convolution over (batch, K*C_in, H, W)."""

    def __init__(self, convs: Sequence[nn.Conv2d]) -> None:
        super().__init__()
        first = convs[0]
        if first.groups != 1:
            raise ValueError("only ungrouped convolutions fuse")
        self.k, self.stride, self.padding = len(convs), first.stride, first.padding
        stacked = torch.cat([conv.weight.detach() for conv in convs])
        self.weight = nn.Parameter(stacked.contiguous(memory_format=torch.channels_last))
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
    """K ``nn.Linear`` of the same shape as one batched matmul: (batch, K*in) -> (batch, K*out).

    The weights are kept as (K, in, out), each model's transposed: the matmul's weight gradient then
    comes out in the parameter's own layout (as (K, out, in) it would be copied into it every step,
    a third of the linear layers' time at batch 1-8)."""

    def __init__(self, linears: Sequence[nn.Linear]) -> None:
        super().__init__()
        self.k = len(linears)
        self.weight = nn.Parameter(
            torch.stack([linear.weight.detach().t() for linear in linears]).contiguous()
        )  # (K, in, out)
        biases = [linear.bias for linear in linears]
        self.bias = nn.Parameter(torch.stack([b.detach() for b in biases])) if biases[0] is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        per_model = x.view(batch, self.k, -1).transpose(0, 1)  # (K, batch, in)
        if self.bias is None:
            y = torch.bmm(per_model, self.weight)
        else:
            y = torch.baddbmm(self.bias.unsqueeze(1), per_model, self.weight)
        return y.transpose(0, 1).reshape(batch, -1)

    def part(self, k: int) -> dict[str, torch.Tensor]:
        parts = {"weight": self.weight[k].t()}  # (out, in), as nn.Linear keeps it
        if self.bias is not None:
            parts["bias"] = self.bias[k]
        return parts


def _setting(norm: nn.Module) -> tuple[object, ...] | None:
    """What must be equal for K norms to run as one over K x C channels (None: they cannot).

    Batch norms (scratch, ghost, torch's) normalize per channel and group norms per contiguous
    group of channels, so K of one type and setting side by side are one layer of K x C channels
    (and K x G groups): each model's statistics, running averages and gradients stay its own."""
    if isinstance(norm, nn.Identity):
        return ("identity",)
    if type(norm) in (BatchNorm, GhostBatchNorm):
        options = ("spatial", "momentum", "eps", "center", "scale", "affine", "virtual_batch_size")
        return (type(norm), norm.num_features, *(getattr(norm, name, None) for name in options))
    if type(norm) in (nn.BatchNorm1d, nn.BatchNorm2d):
        return (type(norm), norm.num_features, norm.momentum, norm.eps, norm.affine, norm.track_running_stats)
    if type(norm) is nn.GroupNorm:
        return (nn.GroupNorm, norm.num_groups, norm.num_channels, norm.eps, norm.affine)
    return None


def _widened(norm: nn.Module, k: int) -> nn.Module:
    """``norm`` built for k times its channels (and groups)."""
    if isinstance(norm, nn.Identity):
        return nn.Identity()
    if isinstance(norm, GhostBatchNorm):
        return GhostBatchNorm(
            k * norm.num_features, norm.spatial, norm.momentum, norm.eps, norm.virtual_batch_size
        )
    if isinstance(norm, BatchNorm):
        return BatchNorm(
            k * norm.num_features, norm.spatial, norm.momentum, norm.eps, norm.center, norm.scale, norm.affine
        )
    if isinstance(norm, nn.GroupNorm):
        return nn.GroupNorm(k * norm.num_groups, k * norm.num_channels, norm.eps, norm.affine)
    return type(norm)(k * norm.num_features, norm.eps, norm.momentum, norm.affine)


class StackedNorm(nn.Module):
    """K norms of one type and setting (``_setting``) as one layer over their K x C channels; a
    norm no other matches is a stack of one (any module that acts on its own channels)."""

    def __init__(self, norms: Sequence[nn.Module]) -> None:
        super().__init__()
        self.k = len(norms)
        if self.k == 1:
            self.layer = norms[0]
            return
        self.layer = _widened(norms[0], self.k)
        with torch.no_grad():
            for name, tensor in self.layer.state_dict().items():
                parts = [norm.state_dict()[name] for norm in norms]
                tensor.copy_(parts[0] if tensor.dim() == 0 else torch.cat(parts))
        for tensor in norms[0].state_dict().values():  # the models' dtype and device
            self.layer.to(tensor)
            break

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def part(self, k: int) -> dict[str, torch.Tensor]:
        """Model k's (of this stack) state, with its own layer's keys."""
        if self.k == 1:
            return dict(self.layer.state_dict())
        return {name: tensor if tensor.dim() == 0 else tensor.view(self.k, -1)[k]
                for name, tensor in self.layer.state_dict().items()}  # fmt: skip


class FusedNorms(nn.Module):
    """The K models' norms of one layer: consecutive models whose norms stack (``_setting``) run
    as one ``StackedNorm`` over their channels, so K models of 4 kinds, sorted by kind, cost 4
    calls, not K. Each stack sees a dense copy of its channels (channels-last for feature maps)."""

    def __init__(self, norms: Sequence[nn.Module]) -> None:
        super().__init__()
        runs: list[list[nn.Module]] = []
        for norm in norms:
            setting = _setting(norm)
            if runs and setting is not None and setting == _setting(runs[-1][0]):
                runs[-1].append(norm)
            else:
                runs.append([norm])
        self.k = len(norms)
        self.stacks = nn.ModuleList(StackedNorm(run) for run in runs)
        self.firsts = [
            sum(len(run) for run in runs[:i]) for i in range(len(runs))
        ]  # each stack's first model
        self.identity = all(isinstance(stack.layer, nn.Identity) for stack in self.stacks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.identity:
            return x
        if len(self.stacks) == 1:
            return self.stacks[0].layer(x)
        per_model = x.shape[1] // self.k
        layout = torch.channels_last if x.dim() == 4 else torch.contiguous_format
        slices = x.split([stack.k * per_model for stack in self.stacks], dim=1)
        outputs = [  # each stack's layer called directly: a LeNet step is mostly per-call overhead
            part if isinstance(layer, nn.Identity) else layer(part.contiguous(memory_format=layout))
            for layer, part in zip((stack.layer for stack in self.stacks), slices, strict=True)
        ]
        return torch.cat(outputs, 1)

    def locate(self, k: int) -> tuple[StackedNorm, int]:
        """The stack that holds model k, and k's index in it."""
        index = max(i for i, first in enumerate(self.firsts) if first <= k)
        return self.stacks[index], k - self.firsts[index]

    def part(self, k: int) -> dict[str, torch.Tensor]:
        stack, index = self.locate(k)
        return stack.part(index)


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
    return FusedNorms(layers)


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
        fused = fused.contiguous(memory_format=torch.channels_last)
        return super().forward(fused).view(batch, k, -1).transpose(0, 1)

    def unfused(self, k: int) -> dict[str, torch.Tensor]:
        """Model k's state dict, with a LeNet's keys (``0.weight``, ``1.running_mean``, ...): copies
        in torch's default layout, not views (a saved view would save every model's values)."""
        state = {}
        for index, layer in enumerate(self):
            if isinstance(layer, FusedConv2d | FusedLinear | FusedNorms):
                state.update({
                    f"{index}.{key}": value.clone(memory_format=torch.contiguous_format)
                    for key, value in layer.part(k).items()
                })  # fmt: skip
        return state


def fused_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The sum of the K models' mean cross-entropies (each model's gradient is its own), and the
    K losses. ``logits`` (K, batch, classes), ``labels`` (K, batch)."""
    k, batch, classes = logits.shape
    each = F.cross_entropy(logits.reshape(k * batch, classes), labels.reshape(-1), reduction="none")
    losses = each.view(k, batch).mean(dim=1)
    return losses.sum(), losses


def _units(model: FusedLeNet) -> Iterator[tuple[nn.Module, int]]:
    """The modules whose parameters hold n models side by side (their ``k``), with each one's
    first model: the fused convs and linears (all models) and each stack of norms."""
    for layer in model:
        if isinstance(layer, FusedConv2d | FusedLinear):
            yield layer, 0
        elif isinstance(layer, FusedNorms):
            yield from zip(layer.stacks, layer.firsts, strict=True)


class FusedSGD:
    """Plain SGD over a ``FusedLeNet``, model k at its own lr (torch's ``p -= lr * grad``, no
    momentum or decay). A parameter of a unit of n models holds model i's values in the i-th of n
    equal blocks along its first dim (whatever its memory layout), so the step is one foreach
    multiply-add over those blocks, each block scaled by its model's lr: a LeNet step is too
    small for a Python loop over ~30 parameters to be free.

    ``lrs`` (per model) change rarely (a cell that diverges gets 0); a schedule that scales every
    model alike is ``step(factor)``.
    """

    def __init__(self, model: FusedLeNet, lrs: Sequence[float] | torch.Tensor) -> None:
        self.parameters: list[nn.Parameter] = []
        self.blocks: list[torch.Tensor] = []  # views of the parameters: (n, ...)
        self.models: list[slice] = []  # the models each parameter's blocks belong to
        for unit, first in _units(model):
            for parameter in unit.parameters():
                self.parameters.append(parameter)
                with torch.no_grad():  # a view to write into, not part of any graph
                    self.blocks.append(parameter.unflatten(0, (unit.k, -1)))
                self.models.append(slice(first, first + unit.k))
        self.set_lrs(lrs)

    def set_lrs(self, lrs: Sequence[float] | torch.Tensor) -> None:
        """Model k's lr is ``lrs[k]`` from now on."""
        if not self.parameters:
            return
        per_model = torch.as_tensor(lrs, dtype=torch.float64).to(self.parameters[0])
        self.scales = [  # each block's lr, shaped to broadcast over the block
            per_model[models].view(-1, *[1] * (block.dim() - 1))
            for models, block in zip(self.models, self.blocks, strict=True)
        ]

    def zero_grad(self) -> None:
        for parameter in self.parameters:
            parameter.grad = None

    @torch.no_grad()
    def step(self, factor: float = 1.0) -> None:
        """p -= factor * lr * grad, for every parameter that has a gradient."""
        have = [i for i, parameter in enumerate(self.parameters) if parameter.grad is not None]
        grads = [self.parameters[i].grad.unflatten(0, (self.blocks[i].shape[0], -1)) for i in have]  # type: ignore[union-attr]
        torch._foreach_addcmul_(
            [self.blocks[i] for i in have], grads, [self.scales[i] for i in have], value=-factor
        )
