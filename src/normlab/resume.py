"""Rerunning a sweep: skip finished cells, clean up runs whose process died, resume killed ones.

A cell is identified by its config fingerprint (``tracking.fingerprint``: the resolved config
less where things are recorded). Before a cell trains, ``plan_cell`` looks at the study's runs
with that fingerprint:

- a FINISHED one: skip the cell (unless ``force=true``);
- a RUNNING one whose process is gone (same host, dead pid): mark it KILLED;
- a RUNNING one whose process lives (or lives on another host): busy, it is being trained now;
- a KILLED one with a per-epoch checkpoint: resume it, into the same MLflow run;
- otherwise (none, FAILED, KILLED before its first checkpoint): a new run.
"""

from __future__ import annotations

import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytorch_lightning as pl
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from normlab import tracking


@dataclass(frozen=True)
class Plan:
    action: Literal["skip", "busy", "resume", "new"]  # busy: being trained by another process now
    reason: str  # one line for the console
    run_id: str | None = None


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def is_orphaned(run: Run) -> bool:
    """A RUNNING run whose training process died on this host (killed, crashed, machine rebooted)."""
    tags = run.data.tags
    pid = tags.get("pid", "")
    return tags.get("host") == platform.node() and pid.isdigit() and not process_alive(int(pid))


BUSY = Plan("busy", "being trained now by another process of this machine")


def claim_path(checkpoint_dir: Path, fingerprint: str) -> Path:
    """The lock a process holds while it plans and trains the cell (``normlab.locks``): two sweeps
    of one study never train a cell twice; the second finds it busy, or finished."""
    return checkpoint_dir / "claims" / f"{fingerprint}.lock"


# A cell's checkpoint: Lightning's of a solo run, or the cell's own state in a fused group
# (normlab.fused_run). Each path resumes only its own; the other's means a new run.
SOLO, FUSED = "last.ckpt", "fused.ckpt"


def checkpoint_path(checkpoint_dir: Path, fingerprint: str, name: str = SOLO) -> Path:
    return checkpoint_dir / fingerprint / name


def remove_checkpoint(checkpoint_dir: Path, fingerprint: str) -> None:
    shutil.rmtree(checkpoint_dir / fingerprint, ignore_errors=True)


def plan_cell(
    client: MlflowClient, experiment_id: str, fingerprint: str, checkpoint: Path, force: bool
) -> Plan:
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.config_fingerprint = '{fingerprint}'",
        order_by=["attributes.start_time DESC"],
    )
    status = {run.info.run_id: run.info.status for run in runs}  # kept current, not read again
    for run in runs:
        if status[run.info.run_id] == "RUNNING" and is_orphaned(run):
            client.set_tag(run.info.run_id, "failure", "process died (found on rerun)")
            tracking.end_run(client, run.info.run_id, "KILLED")
            status[run.info.run_id] = "KILLED"
    finished = [run for run in runs if status[run.info.run_id] == "FINISHED"]
    if finished and not force:
        return Plan("skip", f"finished as run {finished[0].info.run_id}", finished[0].info.run_id)
    running = [run for run in runs if status[run.info.run_id] == "RUNNING"]
    if running and not force:
        where = f"{running[0].data.tags.get('host', '?')} pid {running[0].data.tags.get('pid', '?')}"
        return Plan("busy", f"running now as run {running[0].info.run_id} ({where})", running[0].info.run_id)
    killed = [run for run in runs if status[run.info.run_id] == "KILLED"]
    if killed and checkpoint.exists() and not force:
        return Plan(
            "resume", f"resuming run {killed[0].info.run_id} from {checkpoint}", killed[0].info.run_id
        )
    return Plan("new", "forced" if force and runs else "new")


class EpochCheckpoint(pl.Callback):
    """Saves the whole training state after every epoch (after validation and its metrics), written
    to a temporary file and renamed, so a kill mid-write never leaves a torn checkpoint."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".partial")
        trainer.save_checkpoint(partial)
        os.replace(partial, self.path)
