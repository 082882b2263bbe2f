"""LeNet for 28x28 Fashion-MNIST, with a pluggable normalization after each affine layer."""

from __future__ import annotations

from torch import nn

from normlab.norms import NormFactory


def _conv_out(size: int, kernel: int, padding: int) -> int:
    return size + 2 * padding - kernel + 1


class LeNet(nn.Sequential):
    """d2l's LeNet: conv -> norm -> sigmoid -> avgpool (x2), then three FC layers (norm + sigmoid between).

    ``conv1_padding=0`` is the BN chapter's net (flatten 16*4*4 = 256); ``conv1_padding=2`` is the
    LeNet chapter's net (flatten 16*5*5 = 400). With ``norm`` returning ``nn.Identity`` both are the
    plain nets. Weights are xavier-uniform as in d2l; biases keep torch's default init.
    """

    def __init__(
        self,
        norm: NormFactory,
        conv1_padding: int = 0,
        image_size: int = 28,
        in_channels: int = 1,
        num_classes: int = 10,
    ) -> None:
        side = _conv_out(image_size, 5, conv1_padding) // 2
        side = _conv_out(side, 5, 0) // 2
        super().__init__(
            nn.Conv2d(in_channels, 6, kernel_size=5, padding=conv1_padding),
            norm(6, True),
            nn.Sigmoid(),
            nn.AvgPool2d(kernel_size=2, stride=2),
            nn.Conv2d(6, 16, kernel_size=5),
            norm(16, True),
            nn.Sigmoid(),
            nn.AvgPool2d(kernel_size=2, stride=2),
            nn.Flatten(),
            nn.Linear(16 * side * side, 120),
            norm(120, False),
            nn.Sigmoid(),
            nn.Linear(120, 84),
            norm(84, False),
            nn.Sigmoid(),
            nn.Linear(84, num_classes),
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.xavier_uniform_(module.weight)
