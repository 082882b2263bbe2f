"""Batches cut by index from whole tensors on the training device, in seeded orders.

A batch is one index into the split's two tensors (no per-sample collate). Every shuffled pass
draws its order from (seed, epoch, stream) alone, so a resumed run replays its epoch's order.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from normlab.data.fashion_mnist import Split

TRAINING_ORDER, PRECISE_BN_SAMPLE = 0, 1  # shuffling streams: SGD's epochs, PreciseBN's sample


def order_seed(seed: int, epoch: int, stream: int = TRAINING_ORDER) -> int:
    """A 64-bit generator seed for shuffling pass ``epoch`` of run ``seed``, from numpy's SeedSequence.

    ``seed + epoch`` made seed s+1 replay seed s's orders shifted by one epoch, so "independent"
    seeds shared data orders. A SeedSequence hashes (seed; stream, epoch) into unrelated states, and
    its spawn key keeps these streams apart from the weight init (``torch.manual_seed(seed)``)."""
    sequence = np.random.SeedSequence(entropy=seed, spawn_key=(stream, epoch))
    return int(sequence.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))  # torch takes < 2**63


Batch = tuple[torch.Tensor, torch.Tensor]  # (images, labels)


class Order:
    """Which samples one pass visits, in which order: the first ``size`` of a permutation drawn
    from ``order_seed(seed, epoch, stream)``, or storage order (``shuffle=False``).

    It is the ``sampler`` of the batch iterables below, because Lightning's loops call
    ``loader.sampler.set_epoch(epoch)`` before every epoch: a resumed run replays its epoch's
    order with nobody reaching into the loader. Used alone, each pass advances the epoch.
    """

    def __init__(self, size: int, shuffle: bool, seed: int = 0, stream: int = TRAINING_ORDER) -> None:
        self.size = size
        self.shuffle = shuffle
        self.seed = seed
        self.stream = stream
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def next_pass(self, population: int, device: torch.device) -> torch.Tensor | None:
        """The indices of this pass (None: storage order), and advance to the next epoch.
        Drawn over all ``population`` samples, then cut: a dropped tail is a random sample."""
        epoch, self.epoch = self.epoch, self.epoch + 1
        if not self.shuffle:
            return None
        generator = torch.Generator().manual_seed(order_seed(self.seed, epoch, self.stream))
        return torch.randperm(population, generator=generator)[: self.size].to(device)


class IndexBatches:
    """An iterable of (images, labels) batches cut from whole tensors by index.

    Shuffling follows its ``sampler`` (an ``Order``): it depends only on (seed, epoch, stream), not
    on what else drew numbers, and every (seed, epoch) pair gets an independent stream.
    ``drop_single_tail`` drops a last batch of one sample when ``batch_size > 1``: batch norm cannot
    normalize one value per channel (torch raises), and one sample of an epoch changes nothing.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        drop_single_tail: bool = False,
        stream: int = TRAINING_ORDER,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.split = split
        self.batch_size = batch_size
        n = len(split.labels)
        single_tail = drop_single_tail and batch_size > 1 and n % batch_size == 1
        self.size = n - 1 if single_tail else n
        self.sampler = Order(self.size, shuffle, seed, stream)
        self.batch_sampler = None  # Lightning reads both attributes, as on a torch DataLoader

    def __len__(self) -> int:
        return -(-self.size // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        for batches in self.calls(1):
            yield from batches

    def calls(self, per_call: int) -> Iterator[tuple[Batch, ...]]:
        """One pass as tuples of up to ``per_call`` consecutive batches, each tuple gathered with
        one index and cut into views: the same batches in the same order as ``iter(self)``."""
        if per_call < 1:
            raise ValueError(f"batches per call must be at least 1, got {per_call}")
        order = self.sampler.next_pass(len(self.split.labels), self.split.labels.device)
        step = self.batch_size * per_call
        for start in range(0, self.size, step):
            index = slice(start, start + step) if order is None else order[start : start + step]
            images, labels = self.split.images[index], self.split.labels[index]
            yield tuple(zip(images.split(self.batch_size), labels.split(self.batch_size), strict=True))

    def steps(self, first: int, count: int) -> Iterator[Batch]:
        """The batches of SGD steps ``first`` .. ``first + count - 1`` of the run these batches
        train (step s is batch s % len(self) of epoch s // len(self)), drawn from orders of their
        own: the passes the loop iterates are not advanced. What a budget's branch trains on."""
        images, labels = self.split.images, self.split.labels
        step, end = first, first + count
        while step < end:
            epoch, position = divmod(step, len(self))
            order = Order(self.size, self.sampler.shuffle, self.sampler.seed, self.sampler.stream)
            order.set_epoch(epoch)
            permutation = order.next_pass(len(labels), labels.device)
            last = min(len(self), position + end - step)
            for batch in range(position, last):
                window = slice(batch * self.batch_size, min((batch + 1) * self.batch_size, self.size))
                index = window if permutation is None else permutation[window]
                yield images[index], labels[index]
            step += last - position


class SGDCalls:
    """What each training call of the loop receives: a tuple of up to ``per_call`` consecutive SGD
    batches of ``batches``. Lightning's overhead per call is a large part of a LeNet step at small
    batches; handing it several SGD batches per call pays it once per tuple, and the module steps
    through them (same steps, same order)."""

    def __init__(self, batches: IndexBatches, per_call: int) -> None:
        if per_call < 1:
            raise ValueError(f"batches per call must be at least 1, got {per_call}")
        self.batches = batches
        self.per_call = per_call
        self.sampler = batches.sampler  # Lightning sets the epoch here
        self.batch_sampler = None

    def __len__(self) -> int:
        return -(-len(self.batches) // self.per_call)

    def __iter__(self) -> Iterator[tuple[Batch, ...]]:
        return self.batches.calls(self.per_call)
