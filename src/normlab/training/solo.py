"""Train one cell alone and record it in MLflow, through the cell lifecycle (``lifecycle``).

``fit`` is what every entry point calls for one cell (``normlab.train`` for Hydra, ``rerun``,
``bench``, tests). Its config's ``tracking.uri`` is already resolved (``config.paths.tracking_uri``).
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from normlab.config.budgets import Budget
from normlab.config.cell import CellSpec, read_cell
from normlab.data.batches import SGDCalls
from normlab.evaluation.annealed import every_mode
from normlab.tracking import checkpoints
from normlab.tracking.watch import watch_server
from normlab.training import lifecycle
from normlab.training.branches import Forks, has_budget, record_budget, record_end, solo_branch
from normlab.training.callbacks import EpochCheckpoint
from normlab.training.inputs import load_inputs, make_trainer, quiet_libraries, seeded_net
from normlab.training.interrupt import SafeInterrupt
from normlab.training.lifecycle import CellRun, Outcome, RunFailed
from normlab.training.logger import EpochLogger
from normlab.training.module import Classifier
from normlab.training.progress import EpochProgress


def train(spec: CellSpec, run: CellRun, trainer: pl.Trainer, net: torch.nn.Module) -> dict[str, float]:
    """``trainer.fit`` of the cell's net into ``run``, its budgets evaluated on the way
    (``branches``) and at its end; its final metrics. A failure is recorded (FAILED and why) and
    raises RunFailed; an interruption is recorded as KILLED and raises Interrupted (its checkpoint
    lets a rerun resume it)."""
    trainer.logger = EpochLogger(run.recorder)
    device = trainer.strategy.root_device
    run.record_device(device)
    inputs = load_inputs(spec.data, device)
    sgd_batches = inputs.sgd_batches(spec.seed)
    make_optimizer = instantiate(spec.cfg.optimizer, lr=spec.schedule.lr)
    schedule, budgets = spec.schedule.lr_schedule(spec.data), spec.schedule.budgets(spec.data)
    module = Classifier(net, optimizer=make_optimizer, schedule=schedule)

    def evaluate(trained: torch.nn.Module) -> dict[str, float]:  # PreciseBN's sample drawn anew: the same one
        return every_mode(trained, inputs.val_batches, inputs.after_training(spec.seed))

    def branch(budget: Budget) -> None:
        batches = sgd_batches.steps(budget.fork_step, budget.steps - budget.fork_step)
        branched = solo_branch(net, trainer.optimizers[0], make_optimizer, budget, schedule, batches)
        record_budget(run, budget, evaluate(branched))

    module.after_step = Forks(budgets[:-1], lambda budget: has_budget(run, budget), branch)
    checkpoint = run.cell.checkpoint
    safe = SafeInterrupt()
    trainer.callbacks += [EpochProgress(spec.name), EpochCheckpoint(checkpoint), safe]
    label = f"run {spec.name}"
    final: dict[str, float] = {}
    with (
        lifecycle.recording([run], label, lambda: safe.stopped_by(trainer)) as stopped,
        run.system_metrics(),
        watch_server(spec.tracking.uri, safe.stop),  # a server gone mid-epoch stops it at a safe point
    ):
        trainer.fit(
            module,
            train_dataloaders=SGDCalls(sgd_batches, spec.data.batches_per_call),
            val_dataloaders=inputs.val_batches,
            ckpt_path=checkpoint if run.cell.resuming else None,
        )
        final = {key: float(value) for key, value in trainer.callback_metrics.items()}
        if trainer.current_epoch > 0:  # the largest budget: the trunk's own end
            final.update(record_end(run, budgets, spec.schedule.shape, evaluate(net)))
    if stopped.failed:
        raise RunFailed(stopped.failed[0]) from stopped.error
    return final


def fit(cfg: DictConfig, overrides: list[str], tags: dict[str, str] | None = None) -> Outcome:
    """Train one cell as configured, record it in MLflow, and return what was done and its final
    metrics. A cell with a FINISHED run is skipped, a killed one resumes from its last epoch
    checkpoint into the same run (``normlab.tracking.resume``). ``tags`` go on the run (its
    sweep's parent run, the run it reruns)."""
    spec = read_cell(cfg)
    quiet_libraries()
    trainer = make_trainer(spec)  # before the store is touched: a missing GPU records nothing
    lifecycle.writable(spec.tracking.checkpoints)
    with lifecycle.claim(spec, checkpoints.SOLO) as cell:
        if cell.plan.action in ("skip", "busy"):
            return lifecycle.skip(cell)
        net = seeded_net(spec)
        run = lifecycle.start(cell, net, overrides, tags or {})
        return run.finish(train(spec, run, trainer, net))
