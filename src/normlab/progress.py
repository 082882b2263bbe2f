"""One console line per epoch: the metrics a user watches, and how long the rest will take."""

from __future__ import annotations

import time

import pytorch_lightning as pl
from rich.console import Console

SHOWN = ("train/loss", "train/acc", "val/loss", "val/acc")


class EpochProgress(pl.Callback):
    """Prints ``[run] epoch 3/10  train/loss 0.412 ...  6.1 s  9.8k samples/s  eta 43 s``.

    A per-step bar costs time at small batch sizes and says little for 10-second epochs.
    """

    def __init__(self, run_name: str, console: Console | None = None) -> None:
        self.run_name = run_name
        self.console = console or Console(stderr=True, highlight=False, soft_wrap=True)
        self._fit_started = 0.0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_started = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
        done = trainer.current_epoch + 1
        elapsed = time.perf_counter() - self._fit_started
        eta = elapsed / done * (trainer.max_epochs - done)
        shown = "  ".join(f"{key} {metrics[key]:.3f}" for key in SHOWN if key in metrics)
        speed = metrics.get("perf/samples_per_s", 0.0)
        self.console.print(
            f"[bold]{self.run_name}[/] epoch {done}/{trainer.max_epochs}  {shown}  "
            f"{metrics.get('time/epoch_s', 0.0):.1f} s  {speed / 1000:.1f}k samples/s  eta {eta:.0f} s"
        )
