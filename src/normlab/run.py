"""Train one cell and record it in MLflow, as four steps: open the cell (skip, resume or start),
build what trains it, train (recording a failure), close.

``fit`` is what every entry point calls (``normlab.train`` for Hydra, ``rerun``, ``bench``, tests).
Its config's ``tracking.uri`` is already resolved (``normlab.config.tracking_uri``).
"""

from __future__ import annotations

import logging
import sys
import tempfile
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from lightning_fabric.utilities.exceptions import MisconfigurationException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from normlab import cells, config, data, locks, resume, tracking
from normlab.config import ConfigError
from normlab.data import IndexBatches, SGDCalls, Split
from normlab.evalmodes import EvalModes
from normlab.interrupt import SafeInterrupt
from normlab.module import Classifier
from normlab.norms import NORMS
from normlab.progress import EpochProgress

PARENT_TAG = "mlflow.parentRunId"  # nests a run under its sweep's run in the UI


class RunFailed(RuntimeError):
    """Training raised (or the cell was refused); the run is recorded as FAILED with a ``failure``
    tag saying why."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) during training; the run is recorded as KILLED, with the reason, and resumes
    on the next run of the cell."""


class Outcome(NamedTuple):
    action: str  # what fit did with the cell: "new" (trained), "resume", "skip" or "busy" (normlab.resume)
    metrics: dict[str, float]  # the run's final metrics
    run_id: str  # the MLflow run that holds them


# Our EpochProgress replaces Lightning's per-step bar; no checkpoints or summaries in the hot path.
QUIET_TRAINER = dict(
    enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0
)


def build_net(cfg: DictConfig) -> torch.nn.Module:
    """The configured model with the configured norm (``model.name`` labels runs; it is no argument)."""
    return instantiate({k: v for k, v in cfg.model.items() if k != "name"}, norm=instantiate(cfg.norm))


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def quiet_libraries() -> None:
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # start/stop lines per run
    # Both concern Lightning internals we do not use (per-step logging, its pytree helper).
    warnings.filterwarnings("ignore", message=".*log_every_n_steps.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    # A fused group steps its own SGD (normlab.fused.FusedSGD): Lightning need not optimize.
    warnings.filterwarnings("ignore", message=".*configure_optimizers.*returned `None`.*")


@dataclass(frozen=True)
class Cell:
    """A cell opened in its study's store, with what ``resume.plan_cell`` decided to do with it."""

    cfg: DictConfig
    name: str
    fingerprint: str
    client: MlflowClient
    experiment: str
    checkpoints: Path
    plan: resume.Plan
    checkpoint_name: str = resume.SOLO  # resume.FUSED in a fused group

    @property
    def checkpoint(self) -> Path:
        return resume.checkpoint_path(self.checkpoints, self.fingerprint, self.checkpoint_name)


def make_trainer(cfg: DictConfig, max_epochs: int | None = None) -> pl.Trainer:
    """The Lightning trainer, made before anything is recorded: an accelerator this machine lacks
    is a sentence, not a traceback after a run was opened (its logger is attached in ``build``).
    ``max_epochs``: what is left of ``trainer.max_epochs`` (a resumed fused group)."""
    settings = {**cfg.trainer, **({"max_epochs": max_epochs} if max_epochs is not None else {})}
    try:
        return pl.Trainer(**settings, logger=False, **QUIET_TRAINER)
    except (MisconfigurationException, ValueError, RuntimeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"trainer={dict(cfg.trainer)} cannot run here: {first}") from None


def writable(folder: Path) -> Path:
    """``folder``, created, once a file could be written in it (checkpoints go there every epoch)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise ConfigError(f"checkpoint_dir={folder} is not writable ({error.strerror or error})") from None
    return folder


def open_cell(
    cfg: DictConfig, fingerprint: str, checkpoints: Path, claimed: bool, checkpoint_name: str = resume.SOLO
) -> Cell:
    """Find the cell's runs in the store and plan: skip, resume or start (nothing loaded yet);
    busy when another process holds the cell's claim."""
    client, experiment = tracking.open_store(cfg.tracking.uri, cfg.study)
    name = cells.run_name(cfg)
    cell = Cell(cfg, name, fingerprint, client, experiment, checkpoints, resume.BUSY, checkpoint_name)
    if claimed:
        plan = resume.plan_cell(client, experiment, fingerprint, cell.checkpoint, bool(cfg.force))
        cell = replace(cell, plan=plan)
    say(f"[{cell.name}] {cell.plan.action}: {cell.plan.reason}")
    return cell


def skip(cell: Cell) -> Outcome:
    """A finished cell: count it in this grid, show it as configured now (label, published
    figures), and return its metrics. A busy one: nothing to return yet."""
    if cell.plan.action == "busy":
        return Outcome("busy", {}, cell.plan.run_id or "")
    assert cell.plan.run_id is not None
    finished = cell.client.get_run(cell.plan.run_id)
    tracking.join_grid(cell.client, finished, cell.cfg.report.get("grid"))
    for key, value in cells.presentation_tags(cell.cfg).items():
        if finished.data.tags.get(key) != value:
            cell.client.set_tag(cell.plan.run_id, key, value)
    return Outcome("skip", dict(finished.data.metrics), cell.plan.run_id)


def start(cell: Cell, net: torch.nn.Module, overrides: list[str], tags: dict[str, str]) -> str:
    """A new run of the cell (a stale checkpoint removed first), or its killed run reopened; the
    run id. A refused cell is recorded as FAILED with the reason, and raises RunFailed."""
    cfg, client = cell.cfg, cell.client
    if cell.plan.action == "resume":
        run_id = cell.plan.run_id
        assert run_id is not None
        before = client.get_run(run_id).data.tags
        client.update_run(run_id, status="RUNNING")
        moved = {}
        parent, earlier = tags.get(PARENT_TAG), before.get(PARENT_TAG)
        if parent and earlier and parent != earlier:  # nested under the sweep resuming it, said so
            moved = {"previous_parent": earlier}
            say(f"[{cell.name}] moves from sweep run {earlier} to {parent}")
        for key, value in {**tracking.process_tags(), "status": "running", **tags, **moved}.items():
            client.set_tag(run_id, key, value)
        if "failure" in before:  # why it stopped is no longer true
            client.delete_tag(run_id, "failure")
        return run_id
    resume.remove_checkpoint(cell.checkpoints, cell.fingerprint)  # a stale one must not be resumed
    run_tags = {
        "kind": "cell",
        "status": "running",
        "study": cfg.study,
        "model": cfg.model.name,
        "norm": cfg.norm.kind,
        "batch_size": str(cfg.data.batch_size),
        **({"momentum": str(cfg.norm.momentum)} if "momentum" in cfg.norm else {}),
        "lr": str(cfg.optimizer.lr),
        "seed": str(cfg.seed),
        "config_fingerprint": cell.fingerprint,
        "device": "pending",
        # Trainable parameters: what removing the bias before BN or fixing gamma and beta saves.
        "parameters": str(sum(p.numel() for p in net.parameters() if p.requires_grad)),
        **({tracking.GRIDS_TAG: cfg.report.grid} if cfg.report.get("grid") else {}),
        **cells.presentation_tags(cfg),
        **tags,
    }
    run_id = tracking.start_run(client, cell.experiment, cell.name, cfg, overrides, run_tags)
    refused = cells.refusal(cfg)
    if refused:  # recorded, so the table says why the cell has no number
        client.set_tag(run_id, "failure", f"Refused: {refused}")
        tracking.end_run(client, run_id, "FAILED")
        raise RunFailed(f"run {cell.name} refused: {refused}")
    return run_id


@dataclass(frozen=True)
class Training:
    """What ``trainer.fit`` is given."""

    trainer: pl.Trainer
    module: Classifier
    train_calls: SGDCalls
    val_batches: IndexBatches


def eval_modes(
    cfg: DictConfig, train_split: Split, test_split: Split, val_batches: IndexBatches
) -> EvalModes:
    """A cell's evaluations after training (a net with running statistics): PreciseBN over the
    cell's own sample of training batches and batch statistics over test batches, both as large
    as the training batches; the PreciseBN copy's accuracy (per sample) over ``val_batches``."""
    batch_size = cfg.data.batch_size
    precise_sample = IndexBatches(
        train_split, batch_size, shuffle=True, seed=cfg.seed, stream=data.PRECISE_BN_SAMPLE
    )
    test_batches = IndexBatches(test_split, batch_size, shuffle=False)
    return EvalModes(precise_sample, test_batches, cfg.eval.precise_samples, val_batches)


def build(cell: Cell, trainer: pl.Trainer, net: torch.nn.Module, run_id: str) -> Training:
    """The trainer's logger (into ``run_id``), the data on its device, the module and callbacks."""
    cfg, client = cell.cfg, cell.client
    trainer.logger = tracking.EpochMLFlowLogger(
        experiment_name=cfg.study, tracking_uri=cfg.tracking.uri, run_id=run_id
    )
    device = trainer.strategy.root_device
    client.set_tag(run_id, "device", torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu")
    train_split, test_split = data.load(cfg.data.root, cfg.data.download, cfg.data.train_subset, device)
    batch_size = cfg.data.batch_size
    sgd_batches = IndexBatches(train_split, batch_size, shuffle=True, seed=cfg.seed, drop_single_tail=True)
    steps_per_epoch = len(sgd_batches)
    module = Classifier(
        net,
        optimizer=instantiate(cfg.optimizer, lr=config.effective_lr(cfg)),
        warmup_steps=-(-cfg.warmup_samples // batch_size),
        cosine_steps=cfg.trainer.max_epochs * steps_per_epoch if cfg.lr_schedule == "cosine" else 0,
    )
    trainer.callbacks += [EpochProgress(cell.name), resume.EpochCheckpoint(cell.checkpoint), SafeInterrupt()]
    val_batches = IndexBatches(test_split, cfg.data.eval_batch_size, shuffle=False)
    if NORMS[cfg.norm.kind].running_statistics:
        trainer.callbacks.append(eval_modes(cfg, train_split, test_split, val_batches))
    per_call = max(1, cfg.data.samples_per_call // batch_size)
    return Training(trainer, module, SGDCalls(sgd_batches, per_call), val_batches)


def train(cell: Cell, run_id: str, training: Training) -> None:
    """``trainer.fit`` with system metrics; a failure is recorded (FAILED and why) and raises
    RunFailed, an interruption is recorded as KILLED (its checkpoint lets a rerun resume it)."""
    cfg, client = cell.cfg, cell.client
    resuming = cell.plan.action == "resume"
    try:
        with tracking.system_metrics(run_id, cfg.tracking.uri, cfg.tracking.system_metrics_s, resuming):
            training.trainer.fit(
                training.module,
                train_dataloaders=training.train_calls,
                val_dataloaders=training.val_batches,
                ckpt_path=cell.checkpoint if resuming else None,
            )
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        client.set_tag(run_id, "failure", f"{type(error).__name__}: {reason}"[:400])
        tracking.end_run(client, run_id, "FAILED")
        raise RunFailed(f"run {cell.name} failed: {reason}") from error
    except BaseException as error:
        # Lightning turns Ctrl-C into sys.exit(1) after its own clean-up; its state says which.
        interrupted = isinstance(error, KeyboardInterrupt) or training.trainer.interrupted
        if interrupted:
            client.set_tag(run_id, "failure", "interrupted (SIGINT): rerun to resume from the last epoch")
        tracking.end_run(client, run_id, "KILLED")
        if interrupted:
            raise Interrupted(f"interrupted: run {cell.name} marked KILLED; rerun to resume") from None
        raise


def close(cell: Cell, run_id: str, training: Training) -> Outcome:
    """Mark the run FINISHED (Lightning's logger would, without our status tag), drop its
    checkpoint, and return its final metrics."""
    tracking.end_run(cell.client, run_id, "FINISHED")
    resume.remove_checkpoint(cell.checkpoints, cell.fingerprint)
    final = {key: float(value) for key, value in training.trainer.callback_metrics.items()}
    return Outcome(cell.plan.action, final, run_id)


def fit(cfg: DictConfig, overrides: list[str], tags: dict[str, str] | None = None) -> Outcome:
    """Train one cell as configured, record it in MLflow, and return what was done and its final
    metrics. A cell with a FINISHED run is skipped, a killed one resumes from its last epoch
    checkpoint into the same run (``normlab.resume``). ``tags`` go on a new run (its sweep's
    parent run, the run it reruns)."""
    if not cfg.tracking.uri:
        raise ValueError("fit needs cfg.tracking.uri resolved (normlab.config.tracking_uri)")
    config.check_config(cfg)
    data.check_root(cfg.data.root)
    cfg = cells.canonical(cfg)
    quiet_libraries()
    trainer = make_trainer(cfg)  # before the store is touched: a missing GPU records nothing
    checkpoints = writable(config.checkpoint_dir(cfg.checkpoint_dir))
    # Held from planning to the end: of two processes given one cell, one trains it.
    fingerprint = cells.fingerprint(cfg)
    with locks.hold(resume.claim_path(checkpoints, fingerprint), wait=False) as claimed:
        cell = open_cell(cfg, fingerprint, checkpoints, claimed)
        if cell.plan.action in ("skip", "busy"):
            return skip(cell)
        pl.seed_everything(cfg.seed, workers=False, verbose=False)  # the init (data orders have their own)
        net = build_net(cfg)
        run_id = start(cell, net, overrides, tags or {})
        training = build(cell, trainer, net, run_id)
        train(cell, run_id, training)
        return close(cell, run_id, training)
