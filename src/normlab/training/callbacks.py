"""The Lightning callbacks of a solo cell's training: its checkpoint after every epoch and its
evaluations after training (a fused group does both per cell in ``normlab.fused.run``)."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch

from normlab.evaluation.precise_bn import AfterTraining, bn_layers
from normlab.tracking import checkpoints


class EpochCheckpoint(pl.Callback):
    """Saves the whole training state after every epoch (after validation and its metrics)
    through ``checkpoints.write``: a kill mid-write never leaves a torn checkpoint."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        checkpoints.write(self.path, trainer.save_checkpoint)


class Evaluations(pl.Callback):
    """After training, logs ``val/acc_precise`` and ``val/acc_batchstats`` for networks with BN."""

    def __init__(self, after_training: AfterTraining) -> None:
        self.after_training = after_training

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        net = pl_module.net  # the plain nn.Module: copying it does not copy the trainer
        if not bn_layers(net) or trainer.current_epoch == 0:
            return
        metrics = self.after_training.evaluate(net)
        for logger in trainer.loggers:  # Lightning's convention: the 0-based epoch they belong to
            logger.log_metrics({**metrics, "epoch": trainer.current_epoch - 1})
        trainer.callback_metrics.update({key: torch.tensor(value) for key, value in metrics.items()})
