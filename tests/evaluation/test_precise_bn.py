"""PreciseBN and batch-statistics evaluation against statistics computed by hand."""

import pytest
import torch
from torch import nn

from normlab.data.batches import IndexBatches
from normlab.data.fashion_mnist import Split
from normlab.evaluation.precise_bn import accuracy, bn_layers, evaluate, precise_bn
from normlab.layers.registry import build_norm


def _data(n: int, seed: int) -> Split:
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(n, 3, generator=generator, dtype=torch.float64) * 2 + torch.tensor(
        [1.0, -2.0, 5.0]
    )
    return Split(features, torch.randint(0, 4, (n,), generator=generator))


def _net(kind: str) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(build_norm(kind, 3, spatial=False, momentum=0.1), nn.Linear(3, 4)).double()


def _conv_net(kind: str) -> nn.Sequential:
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 4, kernel_size=3)
    return nn.Sequential(conv, build_norm(kind, 4, spatial=True), nn.Flatten(), nn.LazyLinear(3)).double()


@pytest.mark.parametrize("kind", ["scratch", "native", "ghost", "batch_renorm", "evonorm_b0", "switchable"])
@pytest.mark.parametrize("batch_size", [2, 8, 256])
def test_precise_bn_is_the_population_statistics(kind: str, batch_size: int) -> None:
    """Over the same 1,024 images, PreciseBN's statistics are the exact population mean and variance
    of the conv activations whatever the batch (within 1%; the average of per-batch variances is
    ~25% low at batch 2). The model's own statistics stay untouched."""
    generator = torch.Generator().manual_seed(4)
    images = torch.rand(1024, 1, 8, 8, generator=generator, dtype=torch.float64)
    images += 3 * torch.rand(1024, 1, 1, 1, generator=generator, dtype=torch.float64)  # per-image offsets
    train = Split(images, torch.zeros(1024, dtype=torch.long))
    net = _conv_net(kind)
    net(images[:8])
    before = {k: v.clone() for k, v in net.state_dict().items()}

    precise = precise_bn(net, IndexBatches(train, batch_size, shuffle=True, seed=0), num_samples=1024)
    layer = bn_layers(precise)[0]
    with torch.no_grad():
        activations = net[0](images).transpose(0, 1).reshape(4, -1)
    if kind != "evonorm_b0":  # B0 keeps no mean
        torch.testing.assert_close(layer.running_mean, activations.mean(1), rtol=1e-2, atol=0)
    torch.testing.assert_close(layer.running_var, activations.var(1, unbiased=False), rtol=1e-2, atol=0)
    per_batch = activations.reshape(4, 1024 // batch_size, -1).var(2, unbiased=False).mean(1)
    if batch_size == 2:  # what averaging per-batch variances gives: far outside 1%
        assert (per_batch / activations.var(1, unbiased=False)).max() < 0.9
    assert not precise.training
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_precise_bn_takes_whole_batches_up_to_its_samples() -> None:
    """num_samples=40 at batch 16 uses 3 whole batches (48 samples), never a cut batch."""
    net = _net("scratch")
    train = _data(100, seed=1)
    precise = precise_bn(net, IndexBatches(train, 16, shuffle=False), num_samples=40)
    torch.testing.assert_close(bn_layers(precise)[0].running_mean, train.images[:48].mean(0))
    torch.testing.assert_close(bn_layers(precise)[0].running_var, train.images[:48].var(0, unbiased=False))


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


@pytest.mark.parametrize("kind", ["scratch", "native"])
def test_the_precise_copy_is_tested_per_sample_at_any_batch_size(kind: str) -> None:
    """``evaluate``'s eval-mode accuracy of the PreciseBN copy over batches of 50 equals the one over
    the training batches of 2, while batch statistics do depend on the batch (the data tell apart)."""
    net = _net(kind)
    train, test = _data(100, seed=4), _data(200, seed=5)
    by_twos = IndexBatches(test, 2, shuffle=False)
    small = evaluate(net, IndexBatches(train, 2, shuffle=False), by_twos, 40)
    large = evaluate(
        net, IndexBatches(train, 2, shuffle=False), by_twos, 40, IndexBatches(test, 50, shuffle=False)
    )
    assert large == small
    assert (
        accuracy(net, IndexBatches(test, 50, shuffle=False), batch_statistics=True)
        != small["val/acc_batchstats"]
    )
