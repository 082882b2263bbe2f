"""Ctrl-C at a safe point. Python raises KeyboardInterrupt wherever the main thread happens to be,
e.g. inside an MLflow write holding its store's lock, where the clean-up that follows (which
writes to the store too) can hang. This callback turns the first SIGINT into a flag and raises
KeyboardInterrupt at the next training call, between SGD steps and outside any MLflow call; the
last epoch checkpoint stays the one a rerun resumes from. A second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

import pytorch_lightning as pl


class SafeInterrupt(pl.Callback):
    def __init__(self) -> None:
        self.pressed = False
        self.previous: Any = None

    def _press(self, signum: int, frame: FrameType | None) -> None:
        self.pressed = True
        signal.signal(signal.SIGINT, self.previous)  # the next Ctrl-C is Python's own

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if threading.current_thread() is threading.main_thread():  # only it may set handlers
            self.previous = signal.signal(signal.SIGINT, self._press)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self.pressed:
            raise KeyboardInterrupt

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.previous is not None and not self.pressed:
            signal.signal(signal.SIGINT, self.previous)
