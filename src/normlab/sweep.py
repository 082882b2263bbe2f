"""Around a sweep (Hydra callbacks, any launcher): prepare the store before its jobs, sum up after.

Before the jobs, the store, the study's experiment and the sweep's parent MLflow run are created
once; the parent's id goes into the sweep folder, where each job reads it and nests its run under
it. Each job writes ``outcome.json`` into its Hydra job folder (trained, resumed, skipped or
failed); the summary reads them from the sweep folder, so it works for the pool, submitit and
SLURM alike, and is logged with the parent run.
"""

from __future__ import annotations

import atexit
import datetime as dt
import json
import signal
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.normlab_pool.pool_launcher import INTERRUPTION_FILE
from normlab.config.cells import canonical, run_name
from normlab.config.console import first_line
from normlab.config.paths import tracking_uri
from normlab.tracking import resume
from normlab.tracking.names import FAILURE_TAG, KIND_TAG
from normlab.tracking.store import StoreError, end_run, open_store, process_tags

OUTCOME_FILE = "outcome.json"
PARENT_RUN_FILE = "parent_run_id"


def record_outcomes(job_dir: Path, outcomes: list[tuple[str, str, str]]) -> None:
    """A job's (cell, status, reason) per cell: one cell, or a fused group's."""
    job_dir.mkdir(parents=True, exist_ok=True)
    records = [{"cell": cell, "status": status, "reason": reason} for cell, status, reason in outcomes]
    (job_dir / OUTCOME_FILE).write_text(json.dumps(records))


def record_outcome(job_dir: Path, cell: str, status: str, reason: str = "") -> None:
    record_outcomes(job_dir, [(cell, status, reason)])


def read_outcomes(sweep_dir: Path) -> tuple[list[dict[str, str]], list[str]]:
    """The outcomes of a sweep's cells, and the job folders that have none (their process died)."""
    outcomes, missing = [], []
    for job_dir in sorted(p.parent.parent for p in sweep_dir.glob("*/.hydra/overrides.yaml")):
        path = job_dir / OUTCOME_FILE
        if path.exists():
            recorded = json.loads(path.read_text())
            outcomes.extend(recorded if isinstance(recorded, list) else [recorded])
        else:
            missing += [f"{job_dir.name} ({cell})" for cell in _job_cells(job_dir)] or [job_dir.name]
    return outcomes, missing


def _job_cells(job_dir: Path) -> list[str]:
    """The cells of a fused group's job (its ``fuse_group`` file); [] for a job of one cell."""
    overrides = [str(o) for o in OmegaConf.load(job_dir / ".hydra" / "overrides.yaml")]
    files = [o.removeprefix("fuse_group=").strip("'\"") for o in overrides if o.startswith("fuse_group=")]
    if not files or not Path(files[0]).exists():
        return []
    return [run_name(canonical(entry.config)) for entry in OmegaConf.load(files[0]).cells]


def summary(outcomes: list[dict[str, str]], missing: list[str]) -> tuple[str, list[str]]:
    """One line of counts, then a line per failed cell; and the failed cells."""
    statuses = ("new", "resume", "skip", "busy")
    counts = {status: sum(o["status"] == status for o in outcomes) for status in statuses}
    failed = [f"{o['cell']}: {o['reason']}" for o in outcomes if o["status"] == "failed"]
    failed += [f"job {name}: no outcome (its process died)" for name in missing]
    head = (
        f"[sweep] {len(outcomes) + len(missing)} cells: {counts['new']} trained, {counts['resume']} resumed, "
        f"{counts['skip']} skipped (already finished), "
        + (f"{counts['busy']} skipped (running elsewhere), " if counts["busy"] else "")
        + f"{len(failed)} failed"
    )
    return "\n".join([head, *(f"  failed {line}" for line in failed)]), failed


def close_dead_sweeps(client: MlflowClient, experiment: str) -> list[str]:
    """Mark KILLED the parent runs left RUNNING by sweeps whose process died on this host (killed,
    interrupted, crashed: their summary never ran); their ids."""
    running = client.search_runs(
        [experiment], filter_string=f"tags.{KIND_TAG} = 'sweep' and attributes.status = 'RUNNING'"
    )
    dead = [run for run in running if resume.is_orphaned(run)]
    for run in dead:
        client.set_tag(run.info.run_id, FAILURE_TAG, "sweep process died (found by a later sweep)")
        end_run(client, run.info.run_id, "KILLED")
    return [run.info.run_id for run in dead]


def start_parent_run(config: DictConfig) -> str:
    """Create the store, the study's experiment and the sweep's parent run (named after the study
    and the start time); write its id into the sweep folder for the jobs. Its id. Parent runs of
    dead sweeps of the study are closed first."""
    client, experiment = open_store(tracking_uri(config.tracking.uri), config.study)
    for run_id in close_dead_sweeps(client, experiment):
        print(f"[sweep] run {run_id} of an earlier sweep whose process died: marked KILLED", flush=True)
    sweep_dir = Path(config.hydra.sweep.dir).resolve()
    tags = {
        KIND_TAG: "sweep",
        "status": "running",
        "study": config.study,
        "sweep_dir": str(sweep_dir),
        **process_tags(),  # host and pid: a later sweep can tell a dead one
        "sweep_overrides": " ".join(config.hydra.overrides.task)[:5000],
    }
    name = f"{config.study} {dt.datetime.now():%Y-%m-%d %H:%M:%S}"
    run_id = client.create_run(experiment, run_name=name, tags=tags).info.run_id
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / PARENT_RUN_FILE).write_text(run_id)
    atexit.register(close_if_running, client, run_id)
    return run_id


def close_if_running(client: MlflowClient, run_id: str) -> None:
    """At the sweep process's exit: a parent run still RUNNING was interrupted (Ctrl-C, an
    exception) before its summary; mark it KILLED. (SIGKILL leaves it to the next sweep.) Best
    effort: a store gone at exit leaves it to the next sweep too."""
    try:
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_tag(run_id, FAILURE_TAG, "sweep interrupted before its summary")
            end_run(client, run_id, "KILLED")
    except Exception:  # any store error at exit: nothing more to do here
        pass


def parent_run_id(sweep_dir: Path) -> str | None:
    """The id of the sweep's parent run, for a job of that sweep (None if it has none)."""
    path = sweep_dir.resolve() / PARENT_RUN_FILE
    return path.read_text().strip() if path.exists() else None


class PrepareStore(Callback):
    """Create the store, the study's experiment and the sweep's parent run once, before any
    launcher starts jobs: first-time SQLite migrations run by several processes at once race."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            start_parent_run(config)
        except StoreError as error:  # no cell could be recorded: the sweep stops before its jobs
            print(f"error: {error}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None  # Hydra turns a callback's exception into a warning


class SweepSummary(Callback):
    """After a sweep: what was trained, resumed, skipped and failed, printed and logged with the
    parent run (FINISHED, or FAILED when a cell failed); failures make the exit status 1 (this
    callback is the last thing Hydra runs in a sweep)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        text, failed = summary(*read_outcomes(sweep_dir))
        interruption = _interruption(sweep_dir)
        if interruption:
            text += (
                f"\n[sweep] interrupted ({interruption['signal']}): {interruption['not_started']} cells not "
                "started; rerun the same command to resume"
            )
        print(text, flush=True)
        run_id = parent_run_id(sweep_dir)
        if run_id:
            try:
                client, _ = open_store(tracking_uri(config.tracking.uri), config.study)
                client.log_text(run_id, text + "\n", "sweep_summary.txt")
                end_run(client, run_id, "KILLED" if interruption else "FAILED" if failed else "FINISHED")
            except Exception as error:  # the store is gone: the next sweep of the study closes the run
                reason = first_line(error, 200)
                print(f"[sweep] its run {run_id} stays open ({reason}); the next sweep closes it", flush=True)
                failed = failed or [reason]
        if interruption:
            raise SystemExit(128 + signal.Signals[interruption["signal"]])  # the shell's code for it
        if failed:
            raise SystemExit(1)


def _interruption(sweep_dir: Path) -> dict[str, Any] | None:
    """The signal that stopped the sweep's launcher, and how many cells it never started (the pool
    launcher's record; other launchers leave none)."""
    path = sweep_dir / INTERRUPTION_FILE
    return json.loads(path.read_text()) if path.exists() else None
