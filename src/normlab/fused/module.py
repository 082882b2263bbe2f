"""The LightningModule of a fused group (``normlab.fused``): K cells' steps as one, metrics per cell.

It mirrors ``normlab.training.module.Classifier`` cell for cell: the same losses, accuracies, lr schedule
and epoch metrics (same names), computed per cell; each cell keeps its own data order (its own
``Order``), lr and norm. What Lightning logs it leaves alone: ``normlab.fused.run`` records each
cell's metrics into that cell's own MLflow run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from normlab.config.budgets import LrSchedule
from normlab.config.rules import divergence
from normlab.data.batches import Batch, IndexBatches
from normlab.fused.model import FusedLeNet, FusedSGD
from normlab.training.module import CONSTANT, EpochSums


class FusedEpochs:
    """The K cells' shuffling orders, set to one epoch at once (Lightning calls ``set_epoch``
    before every epoch); ``offset``: epochs a resumed group already trained."""

    def __init__(self, batches: Sequence[IndexBatches], offset: int) -> None:
        self.orders = [b.sampler for b in batches]
        self.offset = offset

    def set_epoch(self, epoch: int) -> None:
        for order in self.orders:
            order.set_epoch(epoch + self.offset)


class FusedCalls:
    """What each training call receives: up to ``per_call`` steps, each step the K cells' own
    batches stacked, images (K, batch, C, H, W) and labels (K, batch)."""

    def __init__(self, batches: Sequence[IndexBatches], per_call: int, offset: int = 0) -> None:
        self.batches = batches
        self.per_call = per_call
        self.sampler = FusedEpochs(batches, offset)
        self.batch_sampler = None

    def __len__(self) -> int:
        return -(-len(self.batches[0]) // self.per_call)

    def __iter__(self) -> Iterator[tuple[Batch, ...]]:
        for calls in zip(*(b.calls(self.per_call) for b in self.batches), strict=True):
            yield tuple(
                (torch.stack([images for images, _ in steps]), torch.stack([labels for _, labels in steps]))
                for steps in zip(*calls, strict=True)
            )


def cell_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each cell's mean loss over its batch: ``logits`` (K, batch, classes), ``labels`` (K, batch)."""
    k, batch, classes = logits.shape
    each = F.cross_entropy(logits.reshape(k * batch, classes), labels.reshape(-1), reduction="none")
    return each.view(k, batch).mean(dim=1)


def fused_step(losses: torch.Tensor, alive: Sequence[bool], sgd: FusedSGD, factor: float) -> None:
    """One SGD step of every live cell (a trunk and its branches step alike): each cell's gradient
    is its own; a masked (diverged) one gets none."""
    sgd.zero_grad()
    live = losses if all(alive) else losses[torch.tensor(alive, device=losses.device)]
    live.sum().backward()
    sgd.step(factor)


class FusedClassifier(EpochSums):
    """Trains a ``FusedLeNet`` of K cells: model k with lr ``lrs[k]`` (times the shared warm-up
    and cosine schedule), starting at step ``first_step`` (a resumed group). After each epoch
    ``epoch_metrics[k]`` holds cell k's metrics, named as ``Classifier`` logs them, or None for a
    cell that diverged (``diverged[k]`` says why, in the epoch it did). A cell that diverges
    (``config.rules.divergence``) is masked from then on: its loss leaves the summed loss (its
    gradient is zero) and its lr is 0; the others train on. ``nets``: the K cells' own LeNets,
    which validation tests with the fused model's weights.
    """

    def __init__(
        self,
        model: FusedLeNet,
        nets: Sequence[nn.Module],
        lrs: Sequence[float],
        schedule: LrSchedule = CONSTANT,
        first_step: int = 0,
        epoch_offset: int = 0,
        after_step: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(sums_shape=(model.k, 2))
        self.automatic_optimization = False
        self.model = model
        self.nets = list(nets)  # the cells' own nets (not submodules): validation loads and tests them
        self.base_lrs = torch.tensor(lrs, dtype=torch.float64)
        self.alive = [True] * model.k
        self.schedule = schedule
        self.steps = first_step
        self.after_step = after_step  # called with the number of steps taken (a budget's fork: ``branches``)
        self.epoch_offset = epoch_offset
        self.epoch_metrics: list[dict[str, float] | None] = [None] * model.k
        self.diverged: dict[int, str] = {}  # cells that diverged this epoch: why

    def configure_optimizers(self) -> None:
        return None  # ``fused.FusedSGD``: one lr per model within each fused tensor

    def live_lrs(self) -> torch.Tensor:
        return self.base_lrs * torch.tensor(self.alive, dtype=torch.float64)

    def on_fit_start(self) -> None:
        # Built here, on the model's device: it keeps views of the parameters.
        self.sgd = FusedSGD(self.model, self.live_lrs())

    def _record(self, logits: torch.Tensor, labels: torch.Tensor, stage: str) -> torch.Tensor:
        """Each cell's mean loss over its batch, summed with its accuracy into the epoch's sums.
        ``logits`` (K, batch, classes), ``labels`` (K, batch)."""
        losses = cell_losses(logits, labels)
        batch = labels.shape[1]
        with torch.no_grad():
            sums = self._sums[stage]
            sums[:, 0].add_(losses.detach(), alpha=batch)
            sums[:, 1].add_((logits.argmax(dim=2) == labels).sum(dim=1))
        self._counts[stage] += batch
        return losses

    def training_step(self, steps: tuple[Batch, ...], batch_idx: int) -> None:
        for images, labels in steps:
            losses = self._record(self.model(images), labels, "train")
            fused_step(losses, self.alive, self.sgd, self.schedule.factor(self.steps))
            self.steps += 1
            if self.after_step is not None:
                self.after_step(self.steps)

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        for k, net in enumerate(self.nets):
            net.load_state_dict(self.model.unfused(k))
            net.to(self.device).eval()

    @torch.no_grad()
    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        """Every cell tested on the same batches, by its own net with the fused model's weights:
        at test batches (1024) K plain LeNets one after another take half the time of the fused
        model on CPU, whose grouped convolutions are slow at large batches."""
        images, labels = batch
        logits = torch.stack([net(images) for net in self.nets])
        self._record(logits, labels.expand(len(self.nets), *labels.shape), "val")

    def on_validation_epoch_end(self) -> None:
        self.diverged = {}
        sums = {stage: self._sums[stage].tolist() for stage in ("train", "val")}
        epoch = self.epoch_offset + self.current_epoch + 1
        lrs_now = (self.base_lrs * self.schedule.factor(self.steps)).tolist()
        for k in range(self.model.k):
            if not self.alive[k]:
                self.epoch_metrics[k] = None
                continue
            metrics = {}
            for stage in ("train", "val"):
                n = self._counts[stage]
                if n:
                    metrics[f"{stage}/loss"] = sums[stage][k][0] / n
                    metrics[f"{stage}/acc"] = sums[stage][k][1] / n
            metrics.update({
                "lr": float(self.base_lrs[k]),
                "lr/now": lrs_now[k],
                "time/epoch_s": self._train_seconds,
                "perf/samples_per_s": self._counts["train"] / max(self._train_seconds, 1e-9),
            })  # fmt: skip
            diverged = divergence(metrics, epoch)
            if diverged:
                self.alive[k] = False
                self.diverged[k] = diverged
            self.epoch_metrics[k] = None if diverged else metrics
        if self.diverged:
            self.sgd.set_lrs(self.live_lrs())
