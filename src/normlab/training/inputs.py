"""What every cell trains from, built once per cell (solo) or per group (fused): the trainer, the
net, the data on the trainer's device and the batches cut from it."""

from __future__ import annotations

import functools
import logging
import warnings
from dataclasses import dataclass

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from lightning_fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig

from normlab.config.cell import CellSpec, DataSpec
from normlab.config.console import first_line, say
from normlab.config.rules import ConfigError
from normlab.data.batches import PRECISE_BN_SAMPLE, IndexBatches
from normlab.data.fashion_mnist import Split, load
from normlab.evaluation.precise_bn import AfterTraining
from normlab.layers.registry import groups_note

# Our epoch lines replace Lightning's per-step bar; no checkpoints or summaries in the hot path.
QUIET_TRAINER = dict(
    enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0
)


def quiet_libraries() -> None:
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # start/stop lines per run
    # Both concern Lightning internals we do not use (per-step logging, its pytree helper).
    warnings.filterwarnings("ignore", message=".*log_every_n_steps.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    # A fused group steps its own SGD (normlab.fused.model.FusedSGD): Lightning need not optimize.
    warnings.filterwarnings("ignore", message=".*configure_optimizers.*returned `None`.*")


def make_trainer(spec: CellSpec, max_epochs: int | None = None) -> pl.Trainer:
    """The Lightning trainer, made before anything is recorded: an accelerator this machine lacks
    is a sentence, not a traceback after a run was opened (its logger is attached later).
    ``max_epochs``: what is left of the cell's epochs (a resumed fused group); by default its
    schedule's (``trainer.max_epochs``, raised where ``budget.min_steps`` asks for more)."""
    settings = {**spec.cfg.trainer, "max_epochs": spec.schedule.epochs if max_epochs is None else max_epochs}
    try:
        return pl.Trainer(**settings, logger=False, **QUIET_TRAINER)
    except (MisconfigurationException, ValueError, RuntimeError) as error:
        raise ConfigError(f"trainer={dict(spec.cfg.trainer)} cannot run here: {first_line(error)}") from None


def build_net(cfg: DictConfig) -> torch.nn.Module:
    """The configured model with the configured norm (``model.name`` labels runs; it is no argument)."""
    return instantiate({k: v for k, v in cfg.model.items() if k != "name"}, norm=instantiate(cfg.norm))


def seeded_net(spec: CellSpec) -> torch.nn.Module:
    """The cell's net at its seed's init (data orders have their own seeds: ``data.batches``)."""
    pl.seed_everything(spec.seed, workers=False, verbose=False)
    net = build_net(spec.cfg)
    if "num_groups" in spec.cfg.norm:
        note = groups_note(net, spec.cfg.norm.num_groups)
        if note:
            say_once(note)
    return net


@functools.cache
def say_once(note: str) -> None:
    """A note said once per process: a sweep's cells share it."""
    say(note, logging.WARNING)


@dataclass(frozen=True)
class Inputs:
    """The splits on the training device and the batches every cell of them is trained and
    evaluated on; a cell's own batches follow its seed."""

    data: DataSpec
    train: Split
    test: Split
    val_batches: IndexBatches  # the test split in eval mode, after every epoch

    def sgd_batches(self, seed: int) -> IndexBatches:
        return IndexBatches(self.train, self.data.batch_size, shuffle=True, seed=seed, drop_single_tail=True)

    def after_training(self, seed: int) -> AfterTraining:
        """PreciseBN over the cell's own sample of training batches and batch statistics over test
        batches, both as large as the training batches; the PreciseBN copy's accuracy (per
        sample) over ``val_batches``."""
        batch_size = self.data.batch_size
        precise_sample = IndexBatches(
            self.train, batch_size, shuffle=True, seed=seed, stream=PRECISE_BN_SAMPLE
        )
        test_batches = IndexBatches(self.test, batch_size, shuffle=False)
        return AfterTraining(precise_sample, test_batches, self.data.precise_samples, self.val_batches)


def load_inputs(data: DataSpec, device: torch.device) -> Inputs:
    train, test = load(data.root, data.download, data.train_subset, device, data.test_subset)
    return Inputs(data, train, test, IndexBatches(test, data.eval_batch_size, shuffle=False))
