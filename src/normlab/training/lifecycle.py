"""The one lifecycle of a cell's run, for a solo cell and for each cell of a fused group alike.

1. ``claim``: hold the cell's lock and plan, before anything is loaded: skip (a FINISHED run),
   busy (another process holds it), resume (a KILLED run with a checkpoint) or new
   (``normlab.tracking.resume``).
2. ``skip``: a finished cell counts in this grid and shows its current label; its metrics.
3. ``start``: a new MLflow run, or the killed one reopened; a refused cell is recorded FAILED.
   The ``CellRun`` it returns records each epoch once (``EpochRecorder``) and ends the run.
4. ``recording``: around training, whatever stops it ends each live run exactly once: an
   exception as FAILED with the reason, Ctrl-C as KILLED (resumable), anything else KILLED; a
   store that stopped answering, KILLED where it can still be written, else left RUNNING for the
   next run to close (``store.StoreLost``; the checkpoint is kept).
5. ``CellRun.finish``: FINISHED, its checkpoint dropped; the cell's ``Outcome``.

A fused group is K cells going through these steps (``normlab.fused.run``): K claims, K starts, one
``recording`` over the K runs, K finishes.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import torch
from mlflow.tracking import MlflowClient

from normlab.config import cells
from normlab.config.cell import CellSpec
from normlab.config.console import first_line, say
from normlab.config.rules import ConfigError
from normlab.tracking import checkpoints, locks, resume, store
from normlab.tracking.epochs import EpochRecorder
from normlab.tracking.names import (
    FAILURE_TAG,
    FINGERPRINT_TAG,
    GRIDS_TAG,
    KIND_TAG,
    PARENT_TAG,
    SEED_TAG,
    STATUS_TAG,
)


class RunFailed(RuntimeError):
    """Training raised (or the cell was refused); the run is recorded as FAILED with a ``failure``
    tag saying why."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM during training; the run is recorded as KILLED, with the signal,
    and resumes on the next run of the cell. ``signal_name`` gives the process its exit code."""

    def __init__(self, message: str, signal_name: str = "SIGINT") -> None:
        super().__init__(message)
        self.signal_name = signal_name


class Outcome(NamedTuple):
    action: str  # what was done with the cell: "new" (trained), "resume", "skip" or "busy" (resume.Plan)
    metrics: dict[str, float]  # the run's final metrics
    run_id: str  # the MLflow run that holds them


def writable(folder: Path) -> Path:
    """``folder``, created, once a file could be written in it (checkpoints go there every epoch)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise ConfigError(f"checkpoint_dir={folder} is not writable ({error.strerror or error})") from None
    return folder


@dataclass(frozen=True)
class OpenCell:
    """A cell opened in its study's store, with what ``resume.plan_cell`` decided to do with it."""

    spec: CellSpec
    client: MlflowClient
    experiment: str
    plan: resume.Plan
    checkpoint_name: str  # checkpoints.SOLO, or checkpoints.FUSED in a fused group

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def checkpoint(self) -> Path:
        return checkpoints.checkpoint_path(
            self.spec.tracking.checkpoints, self.spec.fingerprint, self.checkpoint_name
        )

    @property
    def resuming(self) -> bool:
        return self.plan.action == "resume"


@contextmanager
def claim(spec: CellSpec, checkpoint_name: str = checkpoints.SOLO) -> Iterator[OpenCell]:
    """The cell's claim, held for the block (of two processes given one cell, one trains it), and
    its plan: busy when another process holds the claim."""
    folder = spec.tracking.checkpoints
    with locks.hold(checkpoints.claim_path(folder, spec.fingerprint), wait=False) as claimed:
        client, experiment = store.open_store(spec.tracking.uri, spec.tracking.study)
        cell = OpenCell(spec, client, experiment, resume.BUSY, checkpoint_name)
        if claimed:
            plan = resume.plan_cell(
                client, experiment, spec.fingerprint, cell.checkpoint, spec.tracking.force
            )
            cell = replace(cell, plan=plan)
        say(f"[{cell.name}] {cell.plan.action}: {cell.plan.reason}")
        yield cell


def skip(cell: OpenCell) -> Outcome:
    """A finished cell: count it in this grid, show it as configured now (label, published
    figures), and return its metrics. A busy one: nothing to return yet."""
    if cell.plan.action == "busy":
        return Outcome("busy", {}, cell.plan.run_id or "")
    assert cell.plan.run_id is not None
    finished = cell.client.get_run(cell.plan.run_id)
    store.join_grid(cell.client, finished, cell.spec.tracking.grid)
    for key, value in cells.presentation_tags(cell.spec.cfg).items():
        if finished.data.tags.get(key) != value:
            cell.client.set_tag(cell.plan.run_id, key, value)
    return Outcome("skip", dict(finished.data.metrics), cell.plan.run_id)


@dataclass
class CellRun:
    """A cell's MLflow run while it trains: its epochs recorded once each, and its end."""

    cell: OpenCell
    run_id: str
    recorder: EpochRecorder
    ended: str | None = field(default=None)  # the status once the run is ended

    @property
    def name(self) -> str:
        return self.cell.name

    def log_epoch(self, metrics: dict[str, float], epoch: int) -> None:
        self.recorder.log(metrics, epoch)

    def system_metrics(self) -> AbstractContextManager[None]:
        tracking = self.cell.spec.tracking
        return store.system_metrics(self.run_id, tracking.uri, tracking.system_metrics_s, self.cell.resuming)

    def record_device(self, device: torch.device) -> None:
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        self.cell.client.set_tag(self.run_id, "device", where)

    def _end(self, status: str, why: str | None = None) -> None:
        if why is not None:
            self.cell.client.set_tag(self.run_id, FAILURE_TAG, why[:400])
        store.end_run(self.cell.client, self.run_id, status)
        self.ended = status

    def fail(self, kind: str, reason: str) -> str:
        """Record FAILED, tagged ``<kind>: <reason>`` (the error's type, ``Diverged``, ``Refused``);
        the sentence a sweep lists the cell with."""
        self._end("FAILED", f"{kind}: {reason}")
        return f"run {self.name} failed: {reason}"

    def kill(self, signal_name: str | None) -> None:
        """Record KILLED; where a signal (or the store's loss) interrupted training, tagged with it."""
        why = f"interrupted ({signal_name}): rerun to resume from the last epoch" if signal_name else None
        self._end("KILLED", why)

    def finish(self, metrics: dict[str, float]) -> Outcome:
        """Mark the run FINISHED, drop its checkpoint, and return its final metrics. A store gone
        since the last epoch raises StoreLost, the checkpoint kept (a rerun resumes at the end)."""
        try:
            self._end("FINISHED")
        except Exception as error:  # sqlite, HTTP: each store fails its own way
            raise _lost([self], f"run {self.name}", _gone(self.cell.spec.tracking.uri, error)) from None
        checkpoints.remove_checkpoint(self.cell.spec.tracking.checkpoints, self.cell.spec.fingerprint)
        return Outcome(self.cell.plan.action, metrics, self.run_id)


def cell_tags(spec: CellSpec) -> dict[str, str]:
    """What a new run of the cell is tagged with, for the UI and the report to find it by."""
    cfg = spec.cfg
    return {
        KIND_TAG: "cell",
        "study": spec.tracking.study,
        "model": cfg.model.name,
        "norm": spec.norm,
        "batch_size": str(spec.data.batch_size),
        **({"momentum": str(cfg.norm.momentum)} if "momentum" in cfg.norm else {}),
        "lr": str(cfg.optimizer.lr),
        SEED_TAG: str(spec.seed),
        FINGERPRINT_TAG: spec.fingerprint,
        **cells.presentation_tags(cfg),
    }


def start(cell: OpenCell, net: torch.nn.Module, overrides: list[str], tags: dict[str, str]) -> CellRun:
    """A new run of the cell (a stale checkpoint removed first), or its killed run reopened. A
    refused cell is recorded as FAILED with the reason, and raises RunFailed."""
    spec, client = cell.spec, cell.client
    if cell.resuming:
        run_id = cell.plan.run_id
        assert run_id is not None
        before = client.get_run(run_id).data.tags
        client.update_run(run_id, status="RUNNING")
        moved = {}
        parent, earlier = tags.get(PARENT_TAG), before.get(PARENT_TAG)
        if parent and earlier and parent != earlier:  # nested under the sweep resuming it, said so
            moved = {"previous_parent": earlier}
            say(f"[{cell.name}] moves from sweep run {earlier} to {parent}")
        for key, value in {**store.process_tags(), STATUS_TAG: "running", **tags, **moved}.items():
            client.set_tag(run_id, key, value)
        if FAILURE_TAG in before:  # why it stopped is no longer true
            client.delete_tag(run_id, FAILURE_TAG)
        return CellRun(cell, run_id, EpochRecorder(client, run_id, resumed=True))
    checkpoints.remove_checkpoint(spec.tracking.checkpoints, spec.fingerprint)  # a stale one must not resume
    run_tags = {
        **cell_tags(spec),
        STATUS_TAG: "running",
        "device": "pending",
        # Trainable parameters: what removing the bias before BN or fixing gamma and beta saves.
        "parameters": str(sum(p.numel() for p in net.parameters() if p.requires_grad)),
        **({GRIDS_TAG: spec.tracking.grid} if spec.tracking.grid else {}),
        **tags,
    }
    run_id = store.start_run(client, cell.experiment, cell.name, spec.cfg, overrides, run_tags)
    run = CellRun(cell, run_id, EpochRecorder(client, run_id, resumed=False))
    if spec.refusal:  # recorded, so the table says why the cell has no number
        run.fail("Refused", spec.refusal)
        raise RunFailed(f"run {cell.name} refused: {spec.refusal}")
    return run


def _gone(uri: str, error: Exception) -> str:
    """Why the store took no write: a server that does not answer, else ``error``."""
    down = store.server_problem(uri) if store.is_server(uri) else None
    return down or f"cannot write to {uri} ({first_line(error)})"


def _lost(runs: Sequence[CellRun], label: str, why: str) -> store.StoreLost:
    """What to raise when the store is gone mid-training: its runs ended KILLED where it can still
    be written (a server back by now), else left RUNNING for the next run to close."""
    uri = runs[0].cell.spec.tracking.uri
    if not (store.is_server(uri) and store.server_problem(uri)):
        try:
            for run in runs:
                if run.ended is None:
                    run.kill("tracking store lost")
        except Exception:  # as feared: nothing more can be written
            pass
    ended = all(run.ended for run in runs)
    fate = "marked KILLED" if ended else "left RUNNING: the next run of the cell closes it"
    return store.StoreLost(
        f"{why}: {label} stopped, {fate}; its checkpoint is kept: rerun once the store is back to resume"
    )


@dataclass
class Stopped:
    """What ``recording`` found: each run that training ended, by its position, with the sentence
    and the error (the group's error, for a fused group)."""

    failed: dict[int, str] = field(default_factory=dict)
    error: BaseException | None = None


@contextmanager
def recording(
    runs: Sequence[CellRun], label: str, interrupted: Callable[[], str | None]
) -> Iterator[Stopped]:
    """Training of ``runs`` in the block: an exception ends every run not yet ended (a diverged
    cell of a group was) FAILED with its reason and is swallowed (``Stopped`` says which); Ctrl-C
    or SIGTERM (``interrupted`` names the signal where Lightning's state says it stopped for one)
    ends them KILLED and raises Interrupted; anything else ends them KILLED and propagates."""
    stopped = Stopped()
    try:
        yield stopped
    except store.StoreLost as lost:  # the server watch found it gone mid-epoch (``tracking.watch``)
        raise _lost(runs, label, str(lost)) from None
    except Exception as error:
        stopped.error = error
        uri = runs[0].cell.spec.tracking.uri
        down = store.server_problem(uri) if store.is_server(uri) else None
        if down:  # the error is the store's own (an epoch's metrics not taken)
            raise _lost(runs, label, down) from None
        try:
            for position, run in enumerate(runs):
                if run.ended is None:
                    stopped.failed[position] = run.fail(type(error).__name__, first_line(error))
        except Exception as write_error:  # the store takes no writes (e.g. locked past its timeout)
            raise _lost(runs, label, _gone(uri, write_error)) from None
    except BaseException as error:
        signal_name = interrupted() or ("SIGINT" if isinstance(error, KeyboardInterrupt) else None)
        for run in runs:
            if run.ended is None:
                run.kill(signal_name)
        if signal_name:
            message = f"interrupted ({signal_name}): {label} marked KILLED; rerun to resume"
            raise Interrupted(message, signal_name) from None
        raise
