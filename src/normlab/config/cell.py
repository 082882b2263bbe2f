"""What a cell is, read once from its config: its identity, data, schedule and tracking.

``read_cell`` checks the config (``rules``), refuses a missing data root before anything is
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
from normlab.data import fashion_mnist


@dataclass(frozen=True)
class DataSpec:
    root: str | None
    download: bool
    train_subset: int | None  # the first N training images; None: all
    batch_size: int  # SGD's batch, and the batch of PreciseBN's and batch-statistics evaluation
    eval_batch_size: int  # the test split's batches in eval mode (changes speed only)
    samples_per_call: int  # SGD batches handed to each Lightning training call, in samples
    precise_samples: int  # PreciseBN: training samples whose BN inputs give the population statistics

    @property
    def batches_per_call(self) -> int:
        return max(1, self.samples_per_call // self.batch_size)


@dataclass(frozen=True)
class Schedule:
    epochs: int
    lr: float  # the lr the cell trains at (``rules.effective_lr``: scaled where lr_scaling=linear)
    warmup_samples: int
    cosine: bool  # a half-cosine decay to 0 by the last step of the last epoch

    def warmup_steps(self, batch_size: int) -> int:
        return -(-self.warmup_samples // batch_size)

    def cosine_steps(self, steps_per_epoch: int) -> int:
        return self.epochs * steps_per_epoch if self.cosine else 0


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
    fashion_mnist.check_root(cfg.data.root)
    cfg = cells.canonical(cfg)
    data = cfg.data
    return CellSpec(
        cfg=cfg,
        name=cells.run_name(cfg),
        fingerprint=cells.fingerprint(cfg),
        seed=int(cfg.seed),
        norm=str(cfg.norm.kind),
        data=DataSpec(
            data.root,
            bool(data.download),
            data.train_subset,
            int(data.batch_size),
            int(data.eval_batch_size),
            int(data.samples_per_call),
            int(cfg.eval.precise_samples),
        ),
        schedule=Schedule(
            int(cfg.trainer.max_epochs),
            rules.effective_lr(cfg),
            int(cfg.warmup_samples),
            cfg.lr_schedule == "cosine",
        ),
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
