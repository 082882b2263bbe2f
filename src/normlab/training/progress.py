"""One console line per epoch, for a solo cell and for a fused group: the metrics a user watches,
and how long the rest will take."""

from __future__ import annotations

import time

import pytorch_lightning as pl

from normlab.config.console import say

SHOWN = ("train/loss", "train/acc", "val/loss", "val/acc")


class EpochProgress(pl.Callback):
    """Prints ``[label] epoch 3/10  train/loss 0.412 ...  6.1 s  9.8k samples/s  eta 43 s``.

    A per-step bar costs time at small batch sizes and says little for 10-second epochs. The ETA
    counts this fit's epochs only (a resumed cell's earlier ones took no time of it).
    ``epoch_offset``: epochs trained before this fit that Lightning does not know of (a resumed
    fused group starts its trainer at 0).
    """

    def __init__(self, label: str, epoch_offset: int = 0) -> None:
        self.label = label
        self.epoch_offset = epoch_offset
        self._started = 0.0
        self._first_epoch = 0

    def describe(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> tuple[str, float, float]:
        """What the line shows of the epoch: its metrics, its training seconds, samples per second."""
        metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
        shown = "  ".join(f"{key} {metrics[key]:.3f}" for key in SHOWN if key in metrics)
        return shown, metrics.get("time/epoch_s", 0.0), metrics.get("perf/samples_per_s", 0.0)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = time.perf_counter()
        self._first_epoch = trainer.current_epoch

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        done = trainer.current_epoch + 1
        elapsed = time.perf_counter() - self._started
        eta = elapsed / max(done - self._first_epoch, 1) * (trainer.max_epochs - done)
        shown, seconds, speed = self.describe(trainer, pl_module)
        epoch, total = self.epoch_offset + done, self.epoch_offset + trainer.max_epochs
        say(
            f"{self.label} epoch {epoch}/{total}  {shown}  "
            f"{seconds:.1f} s  {speed / 1000:.1f}k samples/s  eta {eta:.0f} s"
        )
