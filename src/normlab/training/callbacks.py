"""The Lightning callback of a solo cell's training: its checkpoint after every epoch (a fused
group writes one per cell in ``normlab.fused.run``)."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl

from normlab.tracking import checkpoints


class EpochCheckpoint(pl.Callback):
    """Saves the whole training state after every epoch (after validation and its metrics)
    through ``checkpoints.write``: a kill mid-write never leaves a torn checkpoint."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        checkpoints.write(self.path, trainer.save_checkpoint)
