"""What a cell is, read once from its config: its identity, data, schedule and tracking.

``read_cell`` checks the config (``rules``) and the data (found and verified) before anything is
recorded, makes it canonical (``cells.canonical``) and returns a ``CellSpec``; every later step of
a cell's run (``normlab.training``, ``normlab.fused``) takes that, not the raw config. The config
itself stays inside (``CellSpec.cfg``): the model and norm are instantiated from it and a run
records it as its params.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from normlab.config import cells, paths, rules
from normlab.config.budgets import Budget, LrSchedule, ladder, ladder_epochs, whole_epochs
from normlab.data import fashion_mnist


@dataclass(frozen=True)
class DataSpec:
    root: str | None
    download: bool
    train_subset: int | None  # the first N training images; None: all
    test_subset: int | None  # the first N test images (quick runs); None: all
    batch_size: int  # SGD's batch, and the batch of PreciseBN's and batch-statistics evaluation
    eval_batch_size: int  # the test split's batches in eval mode (changes speed only)
    samples_per_call: int  # SGD batches handed to each Lightning training call, in samples
    precise_samples: int  # PreciseBN: training samples whose BN inputs give the population statistics

    @property
    def batches_per_call(self) -> int:
        return max(1, self.samples_per_call // self.batch_size)

    @property
    def samples_per_epoch(self) -> int:
        """Training samples an epoch visits (a last batch of one sample is dropped: ``IndexBatches``)."""
        size = self.train_subset or fashion_mnist.TRAIN_SIZE
        return size - 1 if self.batch_size > 1 and size % self.batch_size == 1 else size

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.samples_per_epoch // self.batch_size)


@dataclass(frozen=True)
class Schedule:
    epochs: int  # the largest budget: trainer.max_epochs, raised to budget.min_steps and whole ladder epochs
    lr: float  # the lr the cell trains at (``rules.effective_lr``: scaled where lr_scaling=linear)
    warmup_samples: int
    shape: str  # constant, cosine or wsd (``normlab.config.budgets``)
    ladder: tuple[int, ...]  # the budgets in epochs, smallest first; the last is ``epochs``
    cooldown: float  # wsd: the decay's share of each budget

    def warmup_steps(self, batch_size: int) -> int:
        return -(-self.warmup_samples // batch_size)

    def lr_schedule(self, data: DataSpec) -> LrSchedule:
        """The schedule of the largest budget (a branch takes ``for_budget`` of its own)."""
        total = self.epochs * data.steps_per_epoch
        return LrSchedule(self.shape, self.warmup_steps(data.batch_size), total, self.cooldown)

    def budgets(self, data: DataSpec) -> list[Budget]:
        return ladder(self.lr_schedule(data), self.ladder, data.steps_per_epoch, data.samples_per_epoch)


@dataclass(frozen=True)
class TrackingSpec:
    uri: str  # resolved (``paths.tracking_uri``)
    study: str  # the MLflow experiment
    checkpoints: Path  # the folder of per-epoch checkpoints and claims
    system_metrics_s: float
    force: bool  # train again even where a FINISHED run exists
    grid: str | None  # the study's grid this cell was launched in


@dataclass(frozen=True)
class CellSpec:
    cfg: DictConfig  # canonical and checked
    name: str  # the run name (``cells.run_name``)
    fingerprint: str  # what the run computes (``cells.fingerprint``)
    seed: int
    norm: str  # the norm kind (``normlab.layers.NORMS``)
    data: DataSpec
    schedule: Schedule
    tracking: TrackingSpec
    refusal: str | None  # why the cell would measure nothing (``cells.refusal``), recorded as its failure


def read_cell(cfg: DictConfig) -> CellSpec:
    """The cell ``cfg`` describes (its ``tracking.uri`` resolved), or ConfigError / DataError in
    one sentence before anything is recorded."""
    if not cfg.tracking.uri:
        raise ValueError("read_cell needs cfg.tracking.uri resolved (normlab.config.paths.tracking_uri)")
    rules.check_config(cfg)
    fashion_mnist.check(cfg.data.root, bool(cfg.data.download))
    cfg = cells.canonical(cfg)
    data = cfg.data
    data_spec = DataSpec(
        data.root,
        bool(data.download),
        data.train_subset,
        data.get("test_subset"),
        int(data.batch_size),
        int(data.eval_batch_size),
        int(data.samples_per_call),
        int(cfg.eval.precise_samples),
    )
    return CellSpec(
        cfg=cfg,
        name=cells.run_name(cfg),
        fingerprint=cells.fingerprint(cfg),
        seed=int(cfg.seed),
        norm=str(cfg.norm.kind),
        data=data_spec,
        schedule=read_schedule(cfg, data_spec),
        tracking=TrackingSpec(
            str(cfg.tracking.uri),
            str(cfg.study),
            paths.checkpoint_dir(cfg.checkpoint_dir),
            float(cfg.tracking.system_metrics_s),
            bool(cfg.force),
            cfg.report.get("grid"),
        ),
        refusal=cells.refusal(cfg),
    )


def read_schedule(cfg: DictConfig, data: DataSpec) -> Schedule:
    """The cell's schedule and ladder. Its epochs: ``trainer.max_epochs``, raised so that the
    largest budget has ``budget.min_steps`` SGD steps and every ladder fraction is a whole number
    of epochs. ConfigError where a ladder needs the wsd schedule or a budget's decay would start
    inside the warm-up."""
    budget = cfg.get("budget") or {}
    fractions = tuple(float(f) for f in budget.get("ladder", [1.0]))
    shape = str(cfg.lr_schedule)
    if len(set(fractions) | {1.0}) > 1 and shape != "wsd":
        raise rules.ConfigError(
            f"budget.ladder={list(fractions)} needs lr_schedule=wsd (a branch decays from the constant lr)"
        )
    min_epochs = -(-int(budget.get("min_steps", 0)) // data.steps_per_epoch)
    epochs = whole_epochs(fractions, max(int(cfg.trainer.max_epochs), min_epochs))
    schedule = Schedule(
        epochs,
        rules.effective_lr(cfg),
        int(cfg.warmup_samples),
        shape,
        tuple(ladder_epochs((*fractions, 1.0), epochs)),
        float(budget.get("cooldown", 0.2)),
    )
    warmup = schedule.warmup_steps(data.batch_size)
    smallest = schedule.budgets(data)[0]
    if shape == "wsd" and smallest.fork_step < max(warmup, 1):
        where = f"inside the warm-up ({warmup} steps)" if warmup else "before any step"
        raise rules.ConfigError(
            f"the smallest budget ({smallest.epochs} epochs, {smallest.steps} steps) would start its decay "
            f"at step {smallest.fork_step}, {where}: raise trainer.max_epochs or lower warmup_samples"
        )
    return schedule
