"""Train a group of cells as one fused model (``normlab.fused``), each cell still its own run.

``fit_group`` is ``run.fit`` for K cells that differ only in seed, lr and norm (``normlab.fusion``
says which): each cell is opened, skipped, resumed or started exactly as ``fit`` does it (same
claim, fingerprint, run name, params and tags, plus ``fused_with``), then the cells that train
run as one ``FusedLeNet`` in one Lightning loop. After every epoch each cell's metrics go into its
own run and its own state into its own checkpoint (``resume.FUSED``); a cell whose loss turns NaN
is recorded FAILED and masked, the others go on; at the end each cell gets its PreciseBN and
batch-statistics evaluation and is closed. Killed, every cell resumes from its checkpoint.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from itertools import groupby
from pathlib import Path
from typing import Any

import mlflow
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from rich.console import Console

from normlab import cells, config, data, locks, resume, tracking
from normlab.data import IndexBatches
from normlab.fused import FusedLeNet
from normlab.fused_module import FusedCalls, FusedClassifier
from normlab.interrupt import SafeInterrupt
from normlab.norms import NORMS
from normlab.run import (
    Cell,
    Interrupted,
    Outcome,
    RunFailed,
    build_net,
    eval_modes,
    make_trainer,
    open_cell,
    quiet_libraries,
    say,
    skip,
    start,
    writable,
)

FUSED_WITH_TAG = "fused_with"  # on each run of a fused group: how many cells trained together, and which


@dataclass(frozen=True)
class Result:
    """What became of one cell of the group: ``Outcome.action`` or "failed" (and why)."""

    name: str
    status: str
    reason: str = ""
    outcome: Outcome | None = None


@dataclass(frozen=True)
class Member:
    """A cell of the group that trains: its index in the group, its opened cell, run and net."""

    index: int
    cell: Cell
    run_id: str
    net: torch.nn.Module
    epochs_done: int = 0
    steps_done: int = 0


def save_checkpoint(member: Member, state: dict[str, torch.Tensor], epochs: int, steps: int) -> None:
    """The cell's state after ``epochs`` epochs, written to a temporary file and renamed (a kill
    mid-write never leaves a torn checkpoint); the one before is kept as ``previous``, so that
    cells killed while the group wrote its checkpoints can all resume from one epoch."""
    path = member.cell.checkpoint
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save({"epochs": epochs, "steps": steps, "net": {k: v.cpu() for k, v in state.items()}}, partial)
    if path.exists():  # linked, not moved: a kill between the two renames still leaves ``path``
        linked = path.with_suffix(".link")
        linked.unlink(missing_ok=True)
        os.link(path, linked)
        os.replace(linked, previous(path))
    os.replace(partial, path)


def previous(path: Path) -> Path:
    return path.with_suffix(".previous")


def _saved(member: Member) -> dict[int, dict[str, Any]]:
    """The cell's states by epoch: its seed's initial net as epoch 0, and for a resumed cell its
    last checkpoint and the one before it."""
    path = member.cell.checkpoint
    files = (path, previous(path)) if member.cell.plan.action == "resume" else ()
    found = [torch.load(p, map_location="cpu", weights_only=True) for p in files if p.exists()]
    initial = {"epochs": 0, "steps": 0, "net": member.net.state_dict()}
    return {0: initial} | {saved["epochs"]: saved for saved in found}


def _at_common_epoch(members: list[Member]) -> list[Member]:
    """The members, each with its net and progress as its chosen state left them. A group killed
    while it wrote its checkpoints has some cells one epoch ahead of the others (or, in its first
    epoch's writes, some resumable and some new): those resume from the epoch behind, so the group
    trains on exactly as it would have. Cells further apart (grouped anew) keep their last state."""
    saved = [_saved(m) for m in members]
    behind = min((max(states) for states in saved), default=0)
    chosen = [behind if behind in states and max(states) - behind <= 1 else max(states) for states in saved]
    for member, states, epoch in zip(members, saved, chosen, strict=True):
        member.net.load_state_dict(states[epoch]["net"])
    return [
        replace(m, epochs_done=epoch, steps_done=states[epoch]["steps"])
        for m, states, epoch in zip(members, saved, chosen, strict=True)
    ]


def _log(client: Any, run_id: str, metrics: dict[str, float], epoch: int) -> None:
    """The epoch's metrics at step = epoch number, as ``tracking.EpochMLFlowLogger`` logs a solo run's."""
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[mlflow.entities.Metric(k, v, now, epoch) for k, v in metrics.items()])


class GroupRecords(pl.Callback):
    """After each epoch (validation included): every live cell's metrics into its run and its state
    into its checkpoint, a diverged cell recorded FAILED, one console line for the group."""

    def __init__(self, members: Sequence[Member], label: str, total_epochs: int) -> None:
        self.members = members
        self.label = label
        self.total_epochs = total_epochs
        self.console = Console(stderr=True, highlight=False, soft_wrap=True)
        self.failed: dict[int, str] = {}  # member position -> why
        self._started = 0.0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        assert isinstance(module, FusedClassifier)
        epoch = module.epoch_offset + trainer.current_epoch + 1
        for position, why in module.diverged.items():
            member = self.members[position]
            member.cell.client.set_tag(member.run_id, "failure", f"Diverged: {why}"[:400])
            tracking.end_run(member.cell.client, member.run_id, "FAILED")
            self.failed[position] = f"run {member.cell.name} failed: {why}"
            say(f"[{member.cell.name}] failed: {why} (masked; the group trains on)")
        for position, metrics in enumerate(module.epoch_metrics):
            if metrics is None:
                continue
            member = self.members[position]
            _log(member.cell.client, member.run_id, metrics, epoch)
            save_checkpoint(member, module.model.unfused(position), epoch, module.steps)
        if not any(module.alive):
            trainer.should_stop = True
        live = [m for m in module.epoch_metrics if m is not None]
        done = trainer.current_epoch + 1
        elapsed = time.perf_counter() - self._started
        eta = elapsed / done * (trainer.max_epochs - done)
        accuracies = [m["val/acc"] for m in live]
        shown = f"val/acc {min(accuracies):.3f}-{max(accuracies):.3f}" if accuracies else "no cell left"
        speed = live[0]["perf/samples_per_s"] / 1000 if live else 0.0
        self.console.print(
            f"[bold]{self.label}[/] epoch {epoch}/{self.total_epochs}  {shown}  "
            f"{module.train_seconds:.1f} s  {speed:.1f}k samples/s per cell  eta {eta:.0f} s"
        )


def _train(members: list[Member], cfg: DictConfig) -> dict[int, Result]:
    """Train ``members`` (all at the same epoch) as one fused model; a Result per member index."""
    first, total = members[0], cfg.trainer.max_epochs
    trainer = make_trainer(cfg, max_epochs=total - first.epochs_done)
    device = trainer.strategy.root_device
    train_split, test_split = data.load(cfg.data.root, cfg.data.download, cfg.data.train_subset, device)
    batch_size = cfg.data.batch_size
    sgd = [
        IndexBatches(train_split, batch_size, shuffle=True, seed=m.cell.cfg.seed, drop_single_tail=True)
        for m in members
    ]
    module = FusedClassifier(
        FusedLeNet([m.net for m in members]),
        [m.net for m in members],
        lrs=[config.effective_lr(m.cell.cfg) for m in members],
        warmup_steps=-(-cfg.warmup_samples // batch_size),
        cosine_steps=total * len(sgd[0]) if cfg.lr_schedule == "cosine" else 0,
        first_step=first.steps_done,
        epoch_offset=first.epochs_done,
    )
    label = f"fused {len(members)} cells bs{batch_size}"
    records = GroupRecords(members, label, total)
    trainer.callbacks += [records, SafeInterrupt()]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    for member in members:
        member.cell.client.set_tag(member.run_id, "device", where)
    per_call = max(1, cfg.data.samples_per_call // batch_size)
    val_batches = IndexBatches(test_split, cfg.data.eval_batch_size, shuffle=False)
    say(f"[{label}] training {', '.join(m.cell.name for m in members)}")
    with ExitStack() as monitors:
        for member in members:
            monitors.enter_context(
                tracking.system_metrics(
                    member.run_id,
                    cfg.tracking.uri,
                    cfg.tracking.system_metrics_s,
                    member.cell.plan.action == "resume",
                )
            )
        try:
            trainer.fit(
                module,
                train_dataloaders=FusedCalls(sgd, per_call, first.epochs_done),
                val_dataloaders=val_batches,
            )
        except Exception as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            for position, member in enumerate(members):
                if module.alive[position] and position not in records.failed:
                    member.cell.client.set_tag(
                        member.run_id, "failure", f"{type(error).__name__}: {reason}"[:400]
                    )
                    tracking.end_run(member.cell.client, member.run_id, "FAILED")
                    records.failed[position] = f"run {member.cell.name} failed: {reason}"
        except BaseException as error:
            interrupted = isinstance(error, KeyboardInterrupt) or trainer.interrupted
            for position, member in enumerate(members):
                if module.alive[position] and position not in records.failed:
                    if interrupted:
                        message = "interrupted (SIGINT): rerun to resume from the last epoch"
                        member.cell.client.set_tag(member.run_id, "failure", message)
                    tracking.end_run(member.cell.client, member.run_id, "KILLED")
            if interrupted:
                raise Interrupted(
                    f"interrupted: fused group ({label}) marked KILLED; rerun to resume"
                ) from None
            raise
    results = {
        members[position].index: Result(members[position].cell.name, "failed", why)
        for position, why in records.failed.items()
    }
    trained = trainer.current_epoch > 0
    for position, member in enumerate(members):
        if member.index in results:
            continue
        final = dict(module.epoch_metrics[position] or {})
        if trained and NORMS[member.cell.cfg.norm.kind].running_statistics:
            net = member.net.to(device)
            net.load_state_dict(module.model.unfused(position))
            evaluated = eval_modes(member.cell.cfg, train_split, test_split, val_batches).evaluate(net)
            _log(member.cell.client, member.run_id, evaluated, total)
            final.update(evaluated)
        tracking.end_run(member.cell.client, member.run_id, "FINISHED")
        resume.remove_checkpoint(member.cell.checkpoints, member.cell.fingerprint)
        outcome = Outcome(member.cell.plan.action, final, member.run_id)
        results[member.index] = Result(member.cell.name, outcome.action, outcome=outcome)
    return results


def fit_group(
    cfgs: Sequence[DictConfig], overrides: Sequence[list[str]], tags: dict[str, str] | None = None
) -> list[Result]:
    """Train cells ``cfgs`` (launched with ``overrides``) as one fused model; what became of each,
    in order. Each cell is skipped, resumed or started as ``run.fit`` would; the ones that train
    must share everything but seed, lr and norm (``normlab.fusion.group_key``)."""
    for cfg in cfgs:
        if not cfg.tracking.uri:
            raise ValueError("fit_group needs cfg.tracking.uri resolved (normlab.config.tracking_uri)")
        config.check_config(cfg)
    cfgs = [cells.canonical(cfg) for cfg in cfgs]
    data.check_root(cfgs[0].data.root)
    quiet_libraries()
    make_trainer(cfgs[0])  # before the store is touched: a missing GPU records nothing
    checkpoints = writable(config.checkpoint_dir(cfgs[0].checkpoint_dir))
    names = [cells.run_name(cfg) for cfg in cfgs]
    fused_with = f"{len(cfgs)} cells: {', '.join(names)}"[:5000]
    results: dict[int, Result] = {}
    members: list[Member] = []
    with ExitStack() as claims:
        for index, cfg in enumerate(cfgs):
            fingerprint = cells.fingerprint(cfg)
            claimed = claims.enter_context(
                locks.hold(resume.claim_path(checkpoints, fingerprint), wait=False)
            )
            cell = open_cell(cfg, fingerprint, checkpoints, claimed, resume.FUSED)
            if cell.plan.action in ("skip", "busy"):
                outcome = skip(cell)
                results[index] = Result(cell.name, outcome.action, outcome=outcome)
                continue
            pl.seed_everything(cfg.seed, workers=False, verbose=False)  # the cell's own init
            net = build_net(cfg)
            try:
                run_id = start(
                    cell, net, list(overrides[index]), {**(tags or {}), FUSED_WITH_TAG: fused_with}
                )
            except RunFailed as refused:
                results[index] = Result(cell.name, "failed", str(refused))
                continue
            members.append(Member(index, cell, run_id, net))
        # Cells at different epochs train as one group per epoch; within it cells of one norm
        # setting sit side by side, so their norms stack (normlab.fused).
        members = sorted(_at_common_epoch(members), key=lambda m: (m.epochs_done, str(m.cell.cfg.norm)))
        for _, same_epoch in groupby(members, key=lambda m: m.epochs_done):
            results.update(_train(list(same_epoch), cfgs[0]))
    return [results[index] for index in range(len(cfgs))]
