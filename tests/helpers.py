"""Helpers the tests share: the shrunk overrides of a quick CPU run, a sweep run as a user runs it."""

import os
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

QUICK = [
    "data.train_subset=2048",
    "data.test_subset=1000",
    "data.batch_size=64",
    "trainer.max_epochs=2",
    "trainer.accelerator=cpu",
]


def run_sweep(arguments: list[str], store: str, workdir: Path, **env: str) -> subprocess.CompletedProcess:
    """``python -m normlab.train -m ...`` as a user runs it, into ``store``, outputs under ``workdir``."""
    command = [
        sys.executable,
        "-m",
        "normlab.train",
        "-m",
        *arguments,
        f"hydra.sweep.dir={workdir / 'multirun'}",
    ]
    environment = {**os.environ, "MLFLOW_TRACKING_URI": store, **env}
    return subprocess.run(command, capture_output=True, text=True, env=environment, cwd=workdir)


def cell_runs(store: str, study: str) -> list:
    """The study's training runs (a sweep's parent run left out)."""
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name(study).experiment_id
    return client.search_runs([experiment], filter_string="tags.kind = 'cell'")


def log_epochs(store: str, run_id: str, epochs: int) -> None:
    """A writer process of the concurrency test: ``epochs`` epochs of 7 metrics, then FINISHED (here,
    not in the test module: a spawned process imports this module, and it loads no Lightning)."""
    from normlab.tracking import store as tracking
    from normlab.tracking.epochs import EpochRecorder

    client = MlflowClient(store)
    recorder = EpochRecorder(client, run_id, resumed=False)
    for epoch in range(epochs):
        recorder.log({f"m{i}": epoch + i / 10 for i in range(7)}, epoch + 1)
    tracking.end_run(client, run_id, "FINISHED")
