import gzip
import shutil
from pathlib import Path

import pytest
import torch

from normlab.data import fashion_mnist as data
from normlab.data.batches import PRECISE_BN_SAMPLE, TRAINING_ORDER, IndexBatches, SGDCalls
from normlab.data.fashion_mnist import DataError, Split


@pytest.fixture(scope="module")
def real() -> tuple[Split, Split]:
    return data.load(download=False)


def test_real_fashion_mnist(real: tuple[Split, Split]) -> None:
    train, test = real
    assert train.images.shape == (60_000, 1, 28, 28) and test.images.shape == (10_000, 1, 28, 28)
    assert train.images.dtype == torch.float32
    assert train.images.min() == 0.0 and train.images.max() == 1.0
    # Balanced classes: 6,000 per class in train, 1,000 in test.
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10


def test_train_subset() -> None:
    train, test = data.load(download=False, train_subset=100)
    assert len(train.labels) == 100 and len(test.labels) == 10_000
    with pytest.raises(ValueError, match="train_subset must be between 1 and 60000"):
        data.load(download=False, train_subset=60_001)


def _copy_real_files(target: Path) -> None:
    source = next(d for d in data._candidate_dirs(None) if data._verified_bytes(d) is not None)
    for name in data.FILES:
        found = data._find(source, name)
        shutil.copy(found, target / found.name)


def test_explicit_root_and_uncompressed_files(tmp_path: Path) -> None:
    _copy_real_files(tmp_path)
    for gz in tmp_path.glob("*.gz"):  # decompressed files are found as well
        gz.with_suffix("").write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    train, _ = data.load(root=str(tmp_path), download=False, train_subset=10)
    assert len(train.labels) == 10


def test_corrupt_file_is_one_sentence_naming_both_ways(tmp_path: Path) -> None:
    _copy_real_files(tmp_path)
    labels = next(tmp_path.glob("t10k-labels*"))
    raw = bytearray(gzip.decompress(labels.read_bytes()) if labels.suffix == ".gz" else labels.read_bytes())
    raw[100] ^= 1  # one flipped bit
    labels.unlink()
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(bytes(raw))
    with pytest.raises(DataError) as error:
        data.locate(root=str(tmp_path), download=False)
    message = str(error.value)
    assert "corrupt" in message and "t10k-labels-idx1-ubyte" in message
    assert "apt-get install dataset-fashion-mnist" in message and "torchvision" in message
    assert "\n" not in message


def test_missing_data_names_both_ways(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "DEBIAN_ROOT", tmp_path / "no-debian")
    monkeypatch.setattr(data, "DOWNLOAD_ROOT", tmp_path / "no-download")
    monkeypatch.delenv(data.ROOT_ENV_VAR, raising=False)
    with pytest.raises(
        DataError, match="was not found in .*apt-get install dataset-fashion-mnist.*torchvision"
    ):
        data.locate(root=None, download=False)
    # an explicit root is not second-guessed: without the files there it is an error, not a fallback
    with pytest.raises(DataError, match="data.root=.*empty holds no verified Fashion-MNIST files"):
        data.locate(root=str(tmp_path / "empty"), download=True)

    def offline() -> None:
        raise OSError("network is unreachable")

    monkeypatch.setattr(data, "_download", offline)
    with pytest.raises(DataError, match="download failed \\(network is unreachable\\)"):
        data.locate(root=None, download=True)


def _split(n: int) -> Split:
    return Split(torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1), torch.arange(n))


def test_index_batches_cover_every_sample_once_per_epoch() -> None:
    batches = IndexBatches(_split(10), batch_size=4, shuffle=True, seed=3)
    assert len(batches) == 3
    first = list(batches)
    assert [len(y) for _, y in first] == [4, 4, 2]  # the last, partial batch is kept
    seen = torch.cat([y for _, y in first])
    assert sorted(seen.tolist()) == list(range(10))
    assert all(torch.equal(x.view(-1).long(), y) for x, y in first)  # images stay with their labels
    second = torch.cat([y for _, y in batches])
    assert not torch.equal(seen, second)  # a new order each epoch


def test_shuffling_is_seeded() -> None:
    def orders(seed: int) -> list[list[int]]:
        batches = IndexBatches(_split(50), batch_size=50, shuffle=True, seed=seed)
        return [next(iter(batches))[1].tolist() for _ in range(3)]

    assert orders(0) == orders(0)
    assert orders(0) != orders(1)


def test_seeds_and_epochs_give_independent_orders() -> None:
    """Seeds 0-9 x epochs 0-9: 100 distinct orders. Under ``seed + epoch`` seeding seed s+1's
    epoch e replayed seed s's epoch e+1 (only 19 distinct orders); nor may the PreciseBN sample
    replay a training epoch."""

    def order(seed: int, epoch: int, stream: int = TRAINING_ORDER) -> tuple[int, ...]:
        batches = IndexBatches(_split(100), batch_size=100, shuffle=True, seed=seed, stream=stream)
        batches.sampler.set_epoch(epoch)
        return tuple(next(iter(batches))[1].tolist())

    training = {order(seed, epoch) for seed in range(10) for epoch in range(10)}
    assert len(training) == 100
    assert not training & {order(seed, 0, PRECISE_BN_SAMPLE) for seed in range(10)}


def test_unshuffled_batches_keep_order() -> None:
    batches = IndexBatches(_split(7), batch_size=3, shuffle=False)
    assert torch.cat([y for _, y in batches]).tolist() == list(range(7))
    with pytest.raises(ValueError, match="batch size must be at least 1"):
        IndexBatches(_split(7), batch_size=0, shuffle=False)


def test_single_sample_tail_is_dropped_only_when_asked() -> None:
    kept = IndexBatches(_split(9), batch_size=4, shuffle=True, seed=0)
    assert [len(y) for _, y in kept] == [4, 4, 1]
    dropped = IndexBatches(_split(9), batch_size=4, shuffle=True, seed=0, drop_single_tail=True)
    assert len(dropped) == 2 and [len(y) for _, y in dropped] == [4, 4]
    # the dropped sample is a random one, not always the last
    left_out = {(set(range(9)) - set(torch.cat([y for _, y in dropped]).tolist())).pop() for _ in range(10)}
    assert len(left_out) > 1
    single = IndexBatches(_split(3), batch_size=1, shuffle=False, drop_single_tail=True)
    assert len(single) == 3  # batch size 1 is all single batches: nothing dropped


@pytest.mark.parametrize("per_call", [2, 3, 10])
def test_calls_hold_the_single_batches_in_order(per_call: int) -> None:
    plain = IndexBatches(_split(25), batch_size=4, shuffle=True, seed=5, drop_single_tail=True)
    calls = SGDCalls(
        IndexBatches(_split(25), batch_size=4, shuffle=True, seed=5, drop_single_tail=True), per_call
    )
    assert len(calls) == -(-6 // per_call)  # 24 samples (the single tail dropped): 6 batches
    for _ in range(2):  # two epochs: the same order per epoch either way
        expected = [y for _, y in plain]
        passed = list(calls)
        assert all(len(call) <= per_call for call in passed)
        cut = [y for call in passed for _, y in call]
        assert len(cut) == len(expected) and all(map(torch.equal, cut, expected))


def test_lightning_sets_the_epoch_through_the_sampler() -> None:
    """Lightning's loops call ``loader.sampler.set_epoch(epoch)`` before each epoch (that is how a
    resumed run replays its epoch's order): the sampler must be the order the batches follow."""
    from lightning_fabric.utilities.data import _set_sampler_epoch

    batches = IndexBatches(_split(30), batch_size=30, shuffle=True, seed=1)
    calls = SGDCalls(batches, per_call=2)
    _set_sampler_epoch(calls, 4)
    fresh = IndexBatches(_split(30), batch_size=30, shuffle=True, seed=1)
    fresh.sampler.set_epoch(4)
    first = next(iter(calls))[0][1]
    assert torch.equal(first, next(iter(fresh))[1])
    assert not torch.equal(
        first, next(iter(IndexBatches(_split(30), batch_size=30, shuffle=True, seed=1)))[1]
    )
