"""Rerunning a sweep: skip finished cells, clean up runs whose process died, resume killed ones.

A cell is identified by its config fingerprint (``normlab.config.cells.fingerprint``: the resolved config
less where things are recorded). Before a cell trains, ``plan_cell`` looks at the study's runs
with that fingerprint:

- a FINISHED one: skip the cell (unless ``force=true``);
- a RUNNING one whose process is gone (same host, dead pid or a pid reused since): mark it KILLED;
- a RUNNING one whose process lives (or lives on another host): busy, it is being trained now;
- a KILLED one with a per-epoch checkpoint that can be read: resume it, into the same MLflow run;
- otherwise (none, FAILED, KILLED before its first checkpoint or with an unreadable one, set
  aside): a new run.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import psutil
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from normlab.tracking import checkpoints, store
from normlab.tracking.names import FAILURE_TAG, FINGERPRINT_TAG, HOST_TAG, PID_STARTED_TAG

START_TOLERANCE_S = 0.05  # psutil's start times come in clock ticks (1/100 s on Linux)


@dataclass(frozen=True)
class Plan:
    action: Literal["skip", "busy", "resume", "new"]  # busy: being trained by another process now
    reason: str  # one line for the console
    run_id: str | None = None


def process_alive(pid: int, started: float | None = None) -> bool:
    """Whether process ``pid`` lives; where ``started`` (its start time) is known, a process with
    that pid but another start time is a reuse of the pid, and the one we asked about is dead."""
    try:
        process = psutil.Process(pid)
        return started is None or abs(process.create_time() - started) < START_TOLERANCE_S
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # exists, owned by someone else
        return True


def is_orphaned(run: Run) -> bool:
    """A RUNNING run whose training process died on this host (killed, crashed, machine rebooted)."""
    tags = run.data.tags
    pid, started = tags.get("pid", ""), tags.get(PID_STARTED_TAG)
    alive = pid.isdigit() and process_alive(int(pid), float(started) if started else None)
    return tags.get(HOST_TAG) == platform.node() and not alive


BUSY = Plan("busy", "being trained now by another process of this machine")


def plan_cell(
    client: MlflowClient, experiment_id: str, fingerprint: str, checkpoint: Path, force: bool
) -> Plan:
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.{FINGERPRINT_TAG} = '{fingerprint}'",
        order_by=["attributes.start_time DESC"],
    )
    status = {run.info.run_id: run.info.status for run in runs}  # kept current, not read again
    for run in runs:
        if status[run.info.run_id] == "RUNNING" and is_orphaned(run):
            client.set_tag(run.info.run_id, FAILURE_TAG, "process died (found on rerun)")
            store.end_run(client, run.info.run_id, "KILLED")
            status[run.info.run_id] = "KILLED"
    finished = [run for run in runs if status[run.info.run_id] == "FINISHED"]
    if finished and not force:
        return Plan("skip", f"finished as run {finished[0].info.run_id}", finished[0].info.run_id)
    running = [run for run in runs if status[run.info.run_id] == "RUNNING"]
    if running and not force:
        where = f"{running[0].data.tags.get('host', '?')} pid {running[0].data.tags.get('pid', '?')}"
        return Plan("busy", f"running now as run {running[0].info.run_id} ({where})", running[0].info.run_id)
    killed = [run for run in runs if status[run.info.run_id] == "KILLED"]
    if killed and not force:
        found = checkpoints.resumable(checkpoint)
        if found:
            return Plan("resume", f"resuming run {killed[0].info.run_id} from {found}", killed[0].info.run_id)
    return Plan("new", "forced" if force and runs else "new")
