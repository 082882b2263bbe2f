"""PreciseBN and batch-statistics evaluation against statistics computed by hand."""

import pytest
import torch
from torch import nn

from normlab.data import IndexBatches, Split
from normlab.evalmodes import accuracy, bn_layers, precise_bn
from normlab.norms import build_norm


def _data(n: int, seed: int) -> Split:
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(n, 3, generator=generator, dtype=torch.float64) * 2 + torch.tensor(
        [1.0, -2.0, 5.0]
    )
    return Split(features, torch.randint(0, 4, (n,), generator=generator))


def _net(kind: str) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(build_norm(kind, 3, spatial=False, momentum=0.1), nn.Linear(3, 4)).double()


@pytest.mark.parametrize("kind", ["scratch", "native"])
def test_precise_bn_is_the_plain_average_over_batches(kind: str) -> None:
    net = _net(kind)
    train = _data(48, seed=1)
    for x, _ in IndexBatches(train, 8, shuffle=True, seed=0):  # some training moves the EMA
        net(x)
    before = {k: v.clone() for k, v in net.state_dict().items()}

    batches = IndexBatches(train, 16, shuffle=False)
    precise = precise_bn(net, batches, num_batches=2)  # the first 32 samples, 2 batches of 16
    layer = bn_layers(precise)[0]
    chunks = [train.images[:16], train.images[16:32]]
    torch.testing.assert_close(layer.running_mean, torch.stack([c.mean(0) for c in chunks]).mean(0))
    torch.testing.assert_close(
        layer.running_var, torch.stack([c.var(0, unbiased=True) for c in chunks]).mean(0)
    )
    assert not precise.training
    for key, value in net.state_dict().items():  # the model's own statistics are untouched
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("kind", ["scratch", "native"])
def test_batch_statistics_accuracy_by_hand(kind: str) -> None:
    net = _net(kind)
    test = _data(30, seed=2)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    linear = net[1]
    correct = 0
    for x, y in IndexBatches(test, 8, shuffle=False):  # batches of 8, 8, 8, 6
        x_hat = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-5)
        correct += (linear(x_hat).argmax(1) == y).sum().item()
    assert accuracy(net, IndexBatches(test, 8, shuffle=False), batch_statistics=True) == correct / 30
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_moving_statistics_accuracy_by_hand() -> None:
    net = _net("scratch")
    test = _data(20, seed=3)
    layer = net[0]
    x_hat = (test.images - layer.running_mean) / torch.sqrt(layer.running_var + 1e-5)
    expected = (net[1](x_hat).argmax(1) == test.labels).double().mean().item()
    assert accuracy(net, IndexBatches(test, 7, shuffle=False)) == pytest.approx(expected)
