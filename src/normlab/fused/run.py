"""Train a group of cells as one fused model (``fused.model``), each cell still its own run.

``fit_group`` is ``training.solo.fit`` for K cells that differ only in seed, lr and norm
(``fused.plan`` says which): each cell goes through the cell lifecycle
(``normlab.training.lifecycle``: claim, skip / resume / new, start, recording, finish) exactly as a
solo cell does, with a ``fused_with`` tag; the cells that train run as one ``FusedLeNet`` in one
Lightning loop. After every epoch each cell's metrics go into its own run and its own state into
its own checkpoint (``checkpoints.FUSED``); a cell that diverges is recorded FAILED and
masked, the others go on; at the end each cell gets its PreciseBN and batch-statistics evaluation
and is finished. Killed, every cell resumes from its checkpoint.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from itertools import groupby
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from normlab.config.budgets import Budget
from normlab.config.cell import CellSpec, read_cell
from normlab.config.console import say
from normlab.evaluation.annealed import every_mode
from normlab.fused.branch import fused_branch
from normlab.fused.model import FusedLeNet
from normlab.fused.module import FusedCalls, FusedClassifier
from normlab.tracking import checkpoints
from normlab.tracking.names import FUSED_WITH_TAG, VAL_ACC
from normlab.tracking.watch import watch_server
from normlab.training import lifecycle
from normlab.training.branches import Forks, has_budget, record_budget, record_end
from normlab.training.inputs import load_inputs, make_trainer, quiet_libraries, seeded_net
from normlab.training.interrupt import SafeInterrupt
from normlab.training.lifecycle import CellRun, Outcome, RunFailed
from normlab.training.progress import EpochProgress


@dataclass(frozen=True)
class Result:
    """What became of one cell of the group: ``Outcome.action`` or "failed" (and why)."""

    name: str
    status: str
    reason: str = ""
    outcome: Outcome | None = None


@dataclass(frozen=True)
class Member:
    """A cell of the group that trains: its index in the group, its run and net, and how far it got."""

    index: int
    run: CellRun
    net: torch.nn.Module
    epochs_done: int = 0
    steps_done: int = 0

    @property
    def spec(self) -> CellSpec:
        return self.run.cell.spec


def save_checkpoint(member: Member, state: dict[str, torch.Tensor], epochs: int, steps: int) -> None:
    """The cell's state after ``epochs`` epochs; the one before is kept (``checkpoints.previous``),
    so that cells killed while the group wrote its checkpoints can all resume from one epoch."""
    saved = {"epochs": epochs, "steps": steps, "net": {k: v.cpu() for k, v in state.items()}}
    checkpoints.write(member.run.cell.checkpoint, lambda path: torch.save(saved, path), keep_previous=True)


def _saved(member: Member) -> dict[int, dict[str, Any]]:
    """The cell's states by epoch: its seed's initial net as epoch 0, and for a resumed cell its
    last checkpoint and the one before it."""
    path = member.run.cell.checkpoint
    files = (path, checkpoints.previous(path)) if member.run.cell.resuming else ()
    found = [torch.load(p, map_location="cpu", weights_only=True) for p in files if p.exists()]
    initial = {"epochs": 0, "steps": 0, "net": member.net.state_dict()}
    return {0: initial} | {saved["epochs"]: saved for saved in found}


def _at_common_epoch(members: list[Member]) -> list[Member]:
    """The members, each with its net and progress as its chosen state left them. A group killed
    while it wrote its checkpoints has some cells one epoch ahead of the others (or, in its first
    epoch's writes, some resumable and some new): those resume from the epoch behind, so the group
    trains on exactly as it would have (the epoch it replays is recorded once: ``EpochRecorder``).
    Cells further apart (grouped anew) keep their last state."""
    saved = [_saved(m) for m in members]
    behind = min((max(states) for states in saved), default=0)
    chosen = [behind if behind in states and max(states) - behind <= 1 else max(states) for states in saved]
    for member, states, epoch in zip(members, saved, chosen, strict=True):
        member.net.load_state_dict(states[epoch]["net"])
    return [
        replace(m, epochs_done=epoch, steps_done=states[epoch]["steps"])
        for m, states, epoch in zip(members, saved, chosen, strict=True)
    ]


class GroupRecords(pl.Callback):
    """After each epoch (validation included): every live cell's metrics into its run and its state
    into its checkpoint; a diverged cell recorded FAILED (and masked by the module)."""

    def __init__(self, members: Sequence[Member]) -> None:
        self.members = members
        self.failed: dict[int, str] = {}  # member position -> why

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        assert isinstance(module, FusedClassifier)
        epoch = module.epoch_offset + trainer.current_epoch + 1
        for position, why in module.diverged.items():
            member = self.members[position]
            self.failed[position] = member.run.fail("Diverged", why)
            say(f"[{member.run.name}] failed: {why} (masked; the group trains on)")
        for position, metrics in enumerate(module.epoch_metrics):
            if metrics is None:
                continue
            member = self.members[position]
            member.run.log_epoch(metrics, epoch)
            save_checkpoint(member, module.model.unfused(position), epoch, module.steps)
        if not any(module.alive):
            trainer.should_stop = True


class GroupProgress(EpochProgress):
    """The group's epoch line: the range of its live cells' test accuracies, and speed per cell."""

    def describe(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> tuple[str, float, float]:
        assert isinstance(pl_module, FusedClassifier)
        live = [m for m in pl_module.epoch_metrics if m is not None]
        accuracies = [m[VAL_ACC] for m in live]
        shown = f"{VAL_ACC} {min(accuracies):.3f}-{max(accuracies):.3f}" if accuracies else "no cell left"
        speed = live[0]["perf/samples_per_s"] if live else 0.0
        return shown, pl_module.train_seconds, speed


def _train(members: list[Member], spec: CellSpec) -> dict[int, Result]:
    """Train ``members`` (all at the same epoch; ``spec``: what they share) as one fused model; a
    Result per member index."""
    first, total = members[0], spec.schedule.epochs
    trainer = make_trainer(spec, max_epochs=total - first.epochs_done)
    device = trainer.strategy.root_device
    inputs = load_inputs(spec.data, device)
    sgd = [inputs.sgd_batches(m.spec.seed) for m in members]
    nets = [m.net for m in members]
    budgets = spec.schedule.budgets(spec.data)
    module = FusedClassifier(
        FusedLeNet(nets),
        nets,
        lrs=[m.spec.schedule.lr for m in members],
        schedule=spec.schedule.lr_schedule(spec.data),
        first_step=first.steps_done,
        epoch_offset=first.epochs_done,
    )

    def evaluate(member: Member, net: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, float]:
        """The cell in every eval mode, ``net`` holding ``state`` (its part of a fused model)."""
        net.load_state_dict(state)
        return every_mode(net, inputs.val_batches, inputs.after_training(member.spec.seed))

    def branch(budget: Budget) -> None:
        branched = fused_branch(module, budget, sgd)
        for position, member in enumerate(members):
            if module.alive[position] and not has_budget(member.run, budget):
                net = copy.deepcopy(member.net).to(device)
                record_budget(member.run, budget, evaluate(member, net, branched.unfused(position)))

    module.after_step = Forks(
        budgets[:-1], lambda budget: all(has_budget(m.run, budget) for m in members), branch
    )
    label = f"fused {len(members)} cells bs{spec.data.batch_size}"
    records = GroupRecords(members)
    safe = SafeInterrupt()
    trainer.callbacks += [records, GroupProgress(label, first.epochs_done), safe]
    for member in members:
        member.run.record_device(device)
    say(f"[{label}] training {', '.join(m.run.name for m in members)}")
    runs = [m.run for m in members]
    with (
        lifecycle.recording(runs, f"fused group ({label})", lambda: safe.stopped_by(trainer)) as stopped,
        ExitStack() as monitors,
        watch_server(spec.tracking.uri, safe.stop),  # a server gone mid-epoch stops it at a safe point
    ):
        for run in runs:
            monitors.enter_context(run.system_metrics())
        trainer.fit(
            module,
            train_dataloaders=FusedCalls(sgd, spec.data.batches_per_call, first.epochs_done),
            val_dataloaders=inputs.val_batches,
        )
    failed = {**records.failed, **stopped.failed}
    results = {members[p].index: Result(members[p].run.name, "failed", why) for p, why in failed.items()}
    trained = trainer.current_epoch > 0
    for position, member in enumerate(members):
        if member.index in results:
            continue
        final = dict(module.epoch_metrics[position] or {})
        if trained:  # the largest budget: the trunk's own end
            evaluated = evaluate(member, member.net.to(device), module.model.unfused(position))
            final.update(record_end(member.run, budgets, spec.schedule.shape, evaluated))
        outcome = member.run.finish(final)
        results[member.index] = Result(member.run.name, outcome.action, outcome=outcome)
    return results


def fit_group(
    cfgs: Sequence[DictConfig], overrides: Sequence[list[str]], tags: dict[str, str] | None = None
) -> list[Result]:
    """Train cells ``cfgs`` (launched with ``overrides``) as one fused model; what became of each,
    in order. Each cell is skipped, resumed or started as a solo cell would be; the ones that
    train must share everything but seed, lr and norm (``fused.plan.group_key``)."""
    specs = [read_cell(cfg) for cfg in cfgs]
    quiet_libraries()
    make_trainer(specs[0])  # before the store is touched: a missing GPU records nothing
    lifecycle.writable(specs[0].tracking.checkpoints)
    fused_with = f"{len(specs)} cells: {', '.join(spec.name for spec in specs)}"[:5000]
    results: dict[int, Result] = {}
    members: list[Member] = []
    with ExitStack() as claims:
        for index, spec in enumerate(specs):
            cell = claims.enter_context(lifecycle.claim(spec, checkpoints.FUSED))
            if cell.plan.action in ("skip", "busy"):
                outcome = lifecycle.skip(cell)
                results[index] = Result(cell.name, outcome.action, outcome=outcome)
                continue
            net = seeded_net(spec)
            try:
                run_tags = {**(tags or {}), FUSED_WITH_TAG: fused_with}
                run = lifecycle.start(cell, net, list(overrides[index]), run_tags)
            except RunFailed as refused:
                results[index] = Result(cell.name, "failed", str(refused))
                continue
            members.append(Member(index, run, net))
        # Cells at different epochs train as one group per epoch; within it cells of one norm
        # setting sit side by side, so their norms stack (fused.model).
        members = sorted(_at_common_epoch(members), key=lambda m: (m.epochs_done, str(m.spec.cfg.norm)))
        for _, same_epoch in groupby(members, key=lambda m: m.epochs_done):
            results.update(_train(list(same_epoch), specs[0]))
    return [results[index] for index in range(len(specs))]
