"""Fashion-MNIST: its files found and verified (``fashion_mnist``), and batches cut from it by
index in seeded orders (``batches``). Nothing here knows about models, configs or MLflow."""

from normlab.data.batches import (
    PRECISE_BN_SAMPLE,
    TRAINING_ORDER,
    Batch,
    IndexBatches,
    Order,
    SGDCalls,
    order_seed,
)
from normlab.data.fashion_mnist import CHANCE, TRAIN_SIZE, DataError, Split, check, load, locate

__all__ = [
    "CHANCE",
    "PRECISE_BN_SAMPLE",
    "TRAINING_ORDER",
    "TRAIN_SIZE",
    "Batch",
    "DataError",
    "IndexBatches",
    "Order",
    "SGDCalls",
    "Split",
    "check",
    "load",
    "locate",
    "order_seed",
]
