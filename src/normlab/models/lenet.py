"""LeNet for 28x28 Fashion-MNIST, with a pluggable normalization after each affine layer."""

from __future__ import annotations

from torch import nn

from normlab.layers.registry import NormFactory
from normlab.layers.weight_standardization import StandardizedConv2d

POSITIONS = ("before_activation", "after_activation")
NORM_IN = ("all", "conv", "fc", "none")


def _conv_out(size: int, kernel: int, padding: int) -> int:
    return size + 2 * padding - kernel + 1


class LeNet(nn.Sequential):
    """d2l's LeNet: conv -> norm -> sigmoid -> avgpool (x2), then three FC layers (norm + sigmoid between).

    ``conv1_padding=0`` is the BN chapter's net (flatten 16*4*4 = 256); ``conv1_padding=2`` is the
    LeNet chapter's net (flatten 16*5*5 = 400). With ``norm`` returning ``nn.Identity`` both are the
    plain nets. Weights are xavier-uniform as in d2l; biases keep torch's default init.

    d2l's exercises as options: ``norm_position="after_activation"`` puts the norm after the sigmoid;
    ``norm_in`` keeps it in ``"conv"`` or ``"fc"`` layers only (``"none"``: nowhere);
    ``bias_before_norm=False`` drops the bias of each conv/linear layer a norm follows (BN's shift
    makes it redundant: the batch mean absorbs it).

    A normalization-activation layer (FRN + TLU, EvoNorm: ``includes_activation``) replaces norm
    *and* sigmoid; an ``nn.Identity`` keeps the sigmoid's place. ``weight_standardization=True``
    standardizes the conv layers' weights (``StandardizedConv2d``; Qiao et al. 2019).
    """

    def __init__(
        self,
        norm: NormFactory,
        conv1_padding: int = 0,
        image_size: int = 28,
        in_channels: int = 1,
        num_classes: int = 10,
        norm_position: str = "before_activation",
        norm_in: str = "all",
        bias_before_norm: bool = True,
        weight_standardization: bool = False,
    ) -> None:
        if norm_position not in POSITIONS:
            raise ValueError(f"model.norm_position={norm_position!r}; valid: {', '.join(POSITIONS)}")
        if norm_in not in NORM_IN:
            raise ValueError(f"model.norm_in={norm_in!r}; valid: {', '.join(NORM_IN)}")

        def block(
            affine: type[nn.Conv2d | nn.Linear], inputs: int, outputs: int, **kw: int
        ) -> list[nn.Module]:
            spatial = issubclass(affine, nn.Conv2d)
            wanted = norm_in == "all" or norm_in == ("conv" if spatial else "fc")
            normalize = norm(outputs, spatial) if wanted else nn.Identity()
            bias = bias_before_norm or isinstance(normalize, nn.Identity)
            if getattr(normalize, "includes_activation", False):
                if norm_position != "before_activation":
                    raise ValueError(
                        f"{type(normalize).__name__} includes its activation: no sigmoid to follow"
                    )
                return [affine(inputs, outputs, bias=bias, **kw), normalize, nn.Identity()]
            layers = [affine(inputs, outputs, bias=bias, **kw), normalize, nn.Sigmoid()]
            return layers if norm_position == "before_activation" else [layers[0], layers[2], layers[1]]

        conv = StandardizedConv2d if weight_standardization else nn.Conv2d

        side = _conv_out(image_size, 5, conv1_padding) // 2
        side = _conv_out(side, 5, 0) // 2
        super().__init__(
            *block(conv, in_channels, 6, kernel_size=5, padding=conv1_padding),
            nn.AvgPool2d(kernel_size=2, stride=2),
            *block(conv, 6, 16, kernel_size=5),
            nn.AvgPool2d(kernel_size=2, stride=2),
            nn.Flatten(),
            *block(nn.Linear, 16 * side * side, 120),
            *block(nn.Linear, 120, 84),
            nn.Linear(84, num_classes),
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.xavier_uniform_(module.weight)
