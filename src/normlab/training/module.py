"""The thin LightningModule: a classifier's steps, epoch metrics and optimizer."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.trainer.states import TrainerFn
from torch import nn

from normlab.config.budgets import LrSchedule
from normlab.config.rules import divergence
from normlab.data.batches import Batch

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
CONSTANT = LrSchedule("constant", warmup_steps=0, total_steps=0)


class Diverged(ArithmeticError):
    """The run diverged (``config.rules.divergence``: a non-finite loss, or a training loss above
    twice guessing's from the second epoch on)."""


def sgd_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
    """One SGD step down ``loss`` (a trunk and its branches step alike)."""
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


class EpochSums(pl.LightningModule):
    """What a classifier sums during an epoch, per stage: [loss * n, correct] on the device (of
    shape ``sums_shape``: (2,), or (K, 2) for K fused cells), n on the host, and the seconds of the
    epoch's training pass (validation follows the last training batch of every epoch)."""

    def __init__(self, sums_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.sums_shape = sums_shape
        self._sums = {stage: torch.zeros(self.sums_shape, dtype=torch.float64) for stage in ("train", "val")}
        self._counts = {"train": 0, "val": 0}
        self._train_started = 0.0
        self._train_seconds = 0.0

    @property
    def train_seconds(self) -> float:
        """Seconds of the last epoch's training pass."""
        return self._train_seconds

    def _reset(self, stage: str) -> None:
        self._sums[stage] = torch.zeros(self.sums_shape, dtype=torch.float64, device=self.device)
        self._counts[stage] = 0

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def on_train_epoch_start(self) -> None:
        self._reset("train")
        self._synchronize()
        self._train_started = time.perf_counter()

    def on_validation_epoch_start(self) -> None:
        self._synchronize()
        self._train_seconds = time.perf_counter() - self._train_started
        self._reset("val")


class Classifier(EpochSums):
    """Trains ``net`` with cross-entropy and logs, once per epoch:

    ``train/loss``, ``train/acc`` (running averages over the epoch in train mode, as d2l reports),
    ``val/loss``, ``val/acc`` (eval mode: moving statistics), ``lr``, ``time/epoch_s`` (training
    pass) and ``perf/samples_per_s``.

    Speed: each training call receives a tuple of SGD batches (``normlab.data.batches.SGDCalls``)
    and runs their steps itself (Lightning's manual optimization), so Lightning's per-call overhead
    is paid once per tuple. The steps call the torch optimizer and ``backward`` directly
    (Lightning's wrappers cost time per step; ``make bench`` compares the platform with a plain
    loop); what those wrappers add, mixed precision and multi-device strategies, is refused in
    ``on_fit_start`` rather than silently skipped. Per-step sums stay on the device and are read
    once per epoch: a ``self.log`` per step would cost more than a step. All metrics of an epoch
    are logged together when validation ends (Lightning validates after the last training batch of
    every epoch), so a tracker receives one batch per epoch.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory,
        schedule: LrSchedule = CONSTANT,
        after_step: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(sums_shape=(2,))
        self.automatic_optimization = False
        self.net = net
        self.optimizer_factory = optimizer
        self.schedule = schedule
        self.after_step = after_step  # called with the number of steps taken (a budget's fork: ``branches``)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def configure_optimizers(self) -> dict[str, object]:
        optimizer = self.optimizer_factory(self.parameters())
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, self.schedule.factor)
        return {"optimizer": optimizer, "lr_scheduler": schedule}

    def _step(self, images: torch.Tensor, labels: torch.Tensor, stage: str) -> torch.Tensor:
        logits = self.net(images)
        loss = F.cross_entropy(logits, labels)
        with torch.no_grad():
            sums = self._sums[stage]
            sums[0].add_(loss.detach(), alpha=labels.numel())
            sums[1].add_((logits.argmax(dim=1) == labels).sum())
        self._counts[stage] += labels.numel()
        return loss

    def on_fit_start(self) -> None:
        precision, devices = self.trainer.precision, self.trainer.world_size
        if precision not in ("32-true", "32") or devices != 1:
            raise ValueError(
                f"Classifier trains in float32 on one device; got precision={precision}, {devices} devices"
            )

    def training_step(self, batches: tuple[Batch, ...], batch_idx: int) -> None:
        optimizer = self.trainer.optimizers[0]
        schedule = self.trainer.lr_scheduler_configs[0].scheduler
        for images, labels in batches:
            sgd_step(self._step(images, labels, "train"), optimizer)
            schedule.step()  # its step count is in the checkpoint: a resumed run continues it
            if self.after_step is not None:
                self.after_step(schedule.last_epoch)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._step(*batch, "val")

    def on_validation_epoch_end(self) -> None:
        metrics = {}
        for stage in ("train", "val"):
            loss_sum, correct = self._sums[stage].tolist()
            n = self._counts[stage]
            if n:
                metrics[f"{stage}/loss"] = loss_sum / n
                metrics[f"{stage}/acc"] = correct / n
        diverged = divergence(metrics, self.current_epoch + 1)
        if diverged:
            raise Diverged(diverged)
        if self.trainer.state.fn == TrainerFn.FITTING:
            group = self.trainer.optimizers[0].param_groups[0]
            metrics["lr"] = group["initial_lr"]  # the configured (peak) lr: tables group cells by it
            metrics["lr/now"] = group["lr"]
            metrics["time/epoch_s"] = self._train_seconds
            metrics["perf/samples_per_s"] = self._counts["train"] / max(self._train_seconds, 1e-9)
        self.log_dict(metrics, on_step=False, on_epoch=True)
