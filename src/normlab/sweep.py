"""Around a sweep (Hydra callbacks, any launcher): prepare the store before its jobs, sum up after.

Each job writes ``outcome.json`` into its Hydra job folder (trained, resumed, skipped or failed);
the summary reads them from the sweep folder, so it works for the pool, submitit and SLURM alike.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from normlab.tracking import prepare_store

OUTCOME_FILE = "outcome.json"
# Cells that failed in the last sweep of this process; `normlab.train.cli` exits non-zero when any did.
FAILED_CELLS: list[str] = []


def record_outcome(job_dir: Path, cell: str, status: str, reason: str = "") -> None:
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / OUTCOME_FILE).write_text(json.dumps({"cell": cell, "status": status, "reason": reason}))


def read_outcomes(sweep_dir: Path) -> tuple[list[dict[str, str]], list[str]]:
    """The outcomes of a sweep's jobs, and the job folders that have none (their process died)."""
    outcomes, missing = [], []
    for job_dir in sorted(p.parent.parent for p in sweep_dir.glob("*/.hydra/overrides.yaml")):
        path = job_dir / OUTCOME_FILE
        if path.exists():
            outcomes.append(json.loads(path.read_text()))
        else:
            missing.append(job_dir.name)
    return outcomes, missing


def summary(outcomes: list[dict[str, str]], missing: list[str]) -> tuple[str, list[str]]:
    """One line of counts, then a line per failed cell; and the failed cells."""
    counts = {status: sum(o["status"] == status for o in outcomes) for status in ("new", "resume", "skip")}
    failed = [f"{o['cell']}: {o['reason']}" for o in outcomes if o["status"] == "failed"]
    failed += [f"job {name}: no outcome (its process died)" for name in missing]
    head = (
        f"[sweep] {len(outcomes) + len(missing)} cells: {counts['new']} trained, {counts['resume']} resumed, "
        f"{counts['skip']} skipped (already finished), {len(failed)} failed"
    )
    return "\n".join([head, *(f"  failed {line}" for line in failed)]), failed


class PrepareStore(Callback):
    """Create the store and the study's experiment once, before any launcher starts jobs."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        prepare_store(config)


class SweepSummary(Callback):
    """After a sweep: what was trained, resumed, skipped and failed; failures make the exit status 1."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        text, failed = summary(*read_outcomes(Path(config.hydra.sweep.dir)))
        print(text, flush=True)
        FAILED_CELLS[:] = failed
