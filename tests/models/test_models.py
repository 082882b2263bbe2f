import pytest
import torch
from torch import nn

from normlab.layers.registry import BatchNorm, norm_factory
from normlab.models import LeNet


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


def _kinds(net: nn.Module) -> list[str]:
    short = {nn.Conv2d: "conv", nn.Linear: "fc", BatchNorm: "bn", nn.Sigmoid: "act", nn.Identity: "-"}
    return [short[type(m)] for m in net if type(m) in short]


def test_norm_before_or_after_the_activation() -> None:
    before = _kinds(LeNet(norm_factory("scratch")))
    after = _kinds(LeNet(norm_factory("scratch"), norm_position="after_activation"))
    assert before[:3] == ["conv", "bn", "act"] and after[:3] == ["conv", "act", "bn"]
    assert before.count("bn") == after.count("bn") == 4 and after[-1] == "fc"
    with pytest.raises(ValueError, match="model.norm_position='middle'; valid: before_activation"):
        LeNet(norm_factory("scratch"), norm_position="middle")


@pytest.mark.parametrize(
    ("norm_in", "in_conv", "in_fc"), [("all", 2, 2), ("conv", 2, 0), ("fc", 0, 2), ("none", 0, 0)]
)
def test_norm_only_in_conv_or_fc_layers(norm_in: str, in_conv: int, in_fc: int) -> None:
    net = LeNet(norm_factory("scratch"), norm_in=norm_in)
    norms = [m for m in net if isinstance(m, BatchNorm)]
    assert sum(m.spatial for m in norms) == in_conv and sum(not m.spatial for m in norms) == in_fc
    assert net(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_removing_the_bias_before_bn_saves_one_parameter_per_normalized_channel() -> None:
    def count(net: nn.Module) -> int:
        return sum(p.numel() for p in net.parameters())

    kept = LeNet(norm_factory("scratch"))
    removed = LeNet(norm_factory("scratch"), bias_before_norm=False)
    assert count(kept) - count(removed) == 6 + 16 + 120 + 84  # the output layer keeps its bias
    assert [m.bias is None for m in removed if isinstance(m, nn.Conv2d | nn.Linear)] == [True] * 4 + [False]
    # Without a norm there is nothing to absorb the bias: it stays.
    assert count(LeNet(norm_factory("none"), bias_before_norm=False)) == count(LeNet(norm_factory("none")))
    # Only where a norm follows: BN in FC layers only removes the FC biases.
    fc_only = LeNet(norm_factory("scratch"), norm_in="fc")
    assert count(fc_only) - count(LeNet(norm_factory("scratch"), norm_in="fc", bias_before_norm=False)) == 204


def test_default_net_draws_the_same_weights_as_before_the_options() -> None:
    """The options must not change the default net's random init (old runs stay reproducible)."""
    torch.manual_seed(3)
    first = LeNet(norm_factory("scratch")).state_dict()
    torch.manual_seed(3)
    layers = [
        nn.Conv2d(1, 6, 5),
        nn.Conv2d(6, 16, 5),
        nn.Linear(256, 120),
        nn.Linear(120, 84),
        nn.Linear(84, 10),
    ]
    for layer in layers:
        nn.init.xavier_uniform_(layer.weight)
    convs_and_linears = [k for k in first if k.endswith("weight") and first[k].dim() > 1]
    for key, layer in zip(convs_and_linears, layers, strict=True):
        torch.testing.assert_close(first[key], layer.weight, rtol=0, atol=0)
