"""Ctrl-C, or SIGTERM (how SLURM preempts and ``timeout`` stops a job), at a safe point. Python
raises KeyboardInterrupt wherever the main thread happens to be, e.g. inside an MLflow write holding
its store's lock, where the clean-up that follows (which writes to the store too) can hang; SIGTERM
would end the process with no clean-up at all. This callback turns the first of either into a flag
(which signal it was) and raises KeyboardInterrupt at the next training call, between SGD steps and
outside any MLflow call; the last epoch checkpoint stays the one a rerun resumes from. A second
signal is Python's own: Ctrl-C interrupts at once, SIGTERM terminates.

A tracking server found gone mid-epoch (``tracking.watch``) stops training at the same safe point
(``stop``), raising ``StoreLost`` there.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

import pytorch_lightning as pl

from normlab.tracking.store import StoreLost

CAUGHT = (signal.SIGINT, signal.SIGTERM)


class SafeInterrupt(pl.Callback):
    def __init__(self) -> None:
        self.received: str | None = None  # the signal's name ("SIGINT", "SIGTERM"), once one came
        self.lost: str | None = None  # why the tracking store is gone, once it is
        self.previous: dict[int, Any] = {}

    def _press(self, signum: int, frame: FrameType | None) -> None:
        self.received = signal.Signals(signum).name
        self._restore()  # the next signal is Python's own

    def _restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}

    def stop(self, why: str) -> None:
        """Stop training at its next safe point: the tracking store is gone (any thread may call)."""
        self.lost = why

    def stopped_by(self, trainer: pl.Trainer) -> str | None:
        """The signal that interrupted training, or None where it was not interrupted (Lightning
        swallows the KeyboardInterrupt and marks itself interrupted)."""
        return (self.received or "SIGINT") if trainer.interrupted else None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if threading.current_thread() is threading.main_thread():  # only it may set handlers
            self.previous = {signum: signal.signal(signum, self._press) for signum in CAUGHT}

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self.received:
            raise KeyboardInterrupt(self.received)
        if self.lost:
            raise StoreLost(self.lost)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore()
