import pytest
import torch
from torch import nn

from normlab.models import LeNet
from normlab.norms import BatchNorm, norm_factory


@pytest.mark.parametrize(("padding", "flatten"), [(0, 256), (2, 400)])
def test_lenet_shapes(padding: int, flatten: int) -> None:
    net = LeNet(norm_factory("scratch"), conv1_padding=padding)
    assert net(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    first_linear = next(m for m in net if isinstance(m, nn.Linear))
    assert first_linear.in_features == flatten


def test_one_class_for_every_norm() -> None:
    assert sum(isinstance(m, BatchNorm) for m in LeNet(norm_factory("scratch"))) == 4
    assert sum(isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d) for m in LeNet(norm_factory("native"))) == 4
    plain = LeNet(norm_factory("none"), conv1_padding=2)
    assert sum(isinstance(m, nn.Identity) for m in plain) == 4
    # d2l's plain LeNet has 61,706 parameters; Identity adds none.
    assert sum(p.numel() for p in plain.parameters()) == 61_706


def test_xavier_uniform_init() -> None:
    torch.manual_seed(0)
    net = LeNet(norm_factory("none"))
    for layer in net:
        if isinstance(layer, nn.Conv2d | nn.Linear):
            fan_in = layer.weight[0].numel()
            fan_out = layer.weight.shape[0] * layer.weight[0, 0].numel()
            bound = (6 / (fan_in + fan_out)) ** 0.5
            assert layer.weight.abs().max() <= bound
            assert layer.weight.abs().max() > 0.9 * bound  # spread over the whole range
