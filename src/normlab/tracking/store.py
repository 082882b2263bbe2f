"""MLflow: the store and a study's experiment, and what every run records when it starts and ends."""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import mlflow
import psutil
import requests
import torch
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from mlflow.tracking.registry import UnsupportedModelRegistryStoreURIException
from omegaconf import DictConfig, OmegaConf

from normlab.config.console import first_line, say
from normlab.config.paths import PROJECT_ROOT
from normlab.tracking import locks
from normlab.tracking.monitor import SteadyMonitor
from normlab.tracking.names import GRIDS_TAG, HOST_TAG, PID_STARTED_TAG, STATUS_TAG


def artifact_location(uri: str, study: str) -> str | None:
    """For a SQLite store, ``<folder of the .db>/mlruns/<study>``: MLflow's default is relative to
    whichever folder the first run started in, so artifacts scattered with the working directory.
    Other stores (a tracking server) decide for themselves (None)."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).parent / "mlruns" / study).as_uri()


# Without it, MLflow 3's UI opens an experiment on its GenAI (traces) pages instead of its runs.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def experiment_id(client: MlflowClient, study: str) -> str:
    """The id of the study's MLflow experiment, created on first use, marked as model training."""
    experiment = client.get_experiment_by_name(study)
    if experiment is None:
        location = artifact_location(client.tracking_uri, study)
        tags = dict([EXPERIMENT_KIND, (HOST_TAG, platform.node())])  # where a file: location lies
        return client.create_experiment(study, artifact_location=location, tags=tags)
    if EXPERIMENT_KIND[0] not in experiment.tags:  # a study recorded before the tag was set
        client.set_experiment_tag(experiment.experiment_id, *EXPERIMENT_KIND)
    return experiment.experiment_id


def all_runs(client: MlflowClient, experiment_id: str) -> list[Run]:
    """Every run of the experiment: ``search_runs`` returns at most 1000 per page."""
    found, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        found += list(page)
        token = page.token
        if not token:
            return found


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``: the resolved config as MLflow params."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


# What a results page writes (experiments/<study>/: RESULTS.md, results.csv, plots) computes nothing:
# a regenerated, not yet committed page leaves the code clean.
GENERATED = ":(exclude,glob)experiments/*/**"


def git_state() -> tuple[str, bool]:
    """(commit, dirty) of the project checkout, generated results pages aside; ("unknown", False)
    outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", GENERATED],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False
    return commit, bool(status.strip())


def machine() -> str:
    """Host, architecture, cores and torch threads: enough to tell which box a number came from."""
    return (
        f"{platform.node()} ({platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads, Python {platform.python_version()}, "
        f"torch {torch.__version__})"
    )


def process_tags() -> dict[str, str]:
    """Where the run's process lives, and when it started: a rerun tells a dead run from one still
    training, also where the pid was since reused by another process (``resume.is_orphaned``)."""
    return {
        HOST_TAG: platform.node(),
        "pid": str(os.getpid()),
        PID_STARTED_TAG: repr(psutil.Process().create_time()),
    }


class StoreError(RuntimeError):
    """The tracking store cannot be opened or written; the message names it and says why."""


class StoreLost(RuntimeError):
    """The tracking store stopped answering while a cell trained; the message names it and says
    why. Its runs stay RUNNING where it cannot be written (the next run of the cell closes them,
    as after a kill) and their checkpoints are kept: a rerun resumes."""

    EXIT_CODE = 75  # EX_TEMPFAIL (sysexits.h): a temporary failure, try again later


# MLflow's client retries a request to a tracking server 7 times over about 4 minutes, each try
# waiting up to 120 s: a server gone mid-run went unnoticed for minutes. normlab's processes retry
# 3 times over about 10 s (a server restarting within that is not noticed at all), each try waiting
# up to 10 s; set these variables to decide otherwise.
# Nor does each run's end print MLflow's "View run ... at <url>" line: normlab says what it did
# with each cell, and `make ui` prints where to look.
for _variable, _value in {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}.items():
    os.environ.setdefault(_variable, _value)

SERVER_TIMEOUT_S = 3  # a tracking server that does not answer its health check in this long is down
# Another writer may hold a SQLite store's lock for a while (a long write, a `sqlite3` shell): a
# process opening the store waits this long before it gives up.
LOCKED_WAIT_S = 60.0


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def server_problem(uri: str) -> str | None:
    """Why the tracking server at ``uri`` is down (no answer to ``/health`` within
    SERVER_TIMEOUT_S), or None: MLflow's own client retries for a while before it gives up."""
    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=SERVER_TIMEOUT_S).raise_for_status()
    except requests.RequestException as error:
        return f"cannot reach the tracking server {uri} within {SERVER_TIMEOUT_S} s ({type(error).__name__})"
    return None


def _open(uri: str, study: str) -> tuple[MlflowClient, str]:
    """The client and the study's experiment; a locked SQLite store is waited for (LOCKED_WAIT_S)."""
    waited_since = None
    while True:
        try:
            client = MlflowClient(uri)
            return client, experiment_id(client, study)
        except UnsupportedModelRegistryStoreURIException:  # MLflow's sentence names its model registry
            scheme = uri.partition("://")[0] if "://" in uri else uri
            raise StoreError(
                f"cannot use the tracking store {uri}: MLflow has no store for {scheme!r}; "
                "use sqlite:///<file> or http(s)://<server>"
            ) from None
        except Exception as error:
            if "database is locked" not in str(error):
                raise
            now = time.monotonic()
            limit = f"{LOCKED_WAIT_S:.0f} s"
            if waited_since is None:
                waited_since = now
                say(f"the tracking store {uri} is locked by another writer: waiting up to {limit}")
            if now - waited_since > LOCKED_WAIT_S:
                raise StoreError(
                    f"cannot use the tracking store {uri}: still locked by another writer after {limit}"
                ) from None
            time.sleep(1.0)


def open_store(uri: str, study: str) -> tuple[MlflowClient, str]:
    """A client of the store at ``uri`` (resolved: ``normlab.config.tracking_uri``) and the study's
    experiment id, or a StoreError in one sentence."""
    if is_server(uri):
        problem = server_problem(uri)
        if problem:
            raise StoreError(problem)
    # Two processes creating one SQLite store (its schema migrations) or one experiment at once
    # race ("duplicate column", "UNIQUE constraint failed"): they take turns.
    database = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
    turns = locks.hold(database.with_name(database.name + ".lock"), wait=True) if database else nullcontext()
    try:
        with turns:
            client, experiment = _open(uri, study)
    except StoreError:
        raise
    except Exception as error:  # sqlite, HTTP and permission errors all arrive as different types
        raise StoreError(f"cannot use the tracking store {uri}: {first_line(error, 200)}") from None
    if database is None:
        _say_where_artifacts_go(client, experiment, study)
    return client, experiment


def _say_where_artifacts_go(client: MlflowClient, experiment: str, study: str) -> None:
    """A study created over SQLite keeps its artifacts in a folder of the store's host: used through
    a tracking server from another host, its runs write them to that path on their own disk."""
    found = client.get_experiment(experiment)
    created_on = found.tags.get(HOST_TAG)
    if found.artifact_location.startswith("file:") and created_on != platform.node():
        say(
            f"note: study {study!r} keeps its artifacts at {found.artifact_location} on "
            f"{created_on or 'the store host'}; this host writes them to that path on its own disk "
            "(README, 'Many hosts share one store', says how to gather them)",
            logging.WARNING,
        )


def grids_of(tagged: object, launched_in: object) -> list[str]:
    """A run's grids: its ``grids`` tag, else the ``report.grid`` param it was launched with."""
    value = tagged if isinstance(tagged, str) and tagged else launched_in
    if not isinstance(value, str) or value == "None":
        return []
    return [grid for grid in value.split("; ") if grid]


def join_grid(client: MlflowClient, run: Run, grid: str | None) -> None:
    """Count a finished run in one more of its study's grids (a grid that lists an existing cell)."""
    grids = grids_of(run.data.tags.get(GRIDS_TAG), run.data.params.get("report.grid"))
    if grid and grid not in grids:
        client.set_tag(run.info.run_id, GRIDS_TAG, "; ".join([*grids, grid]))


def start_run(
    client: MlflowClient,
    experiment: str,
    name: str,
    cfg: DictConfig,
    overrides: list[str],
    tags: dict[str, str],
) -> str:
    """Create run ``name`` in ``experiment`` with ``tags`` plus where it ran (commit, machine,
    threads, process), the resolved config as params and as ``config.yaml``, and the command-line
    overrides as ``overrides.txt``; its id."""
    commit, dirty = git_state()
    where = {
        "git_commit": commit,
        "git_dirty": str(dirty).lower(),
        "machine": machine(),
        # Float sums are reduced in a thread-count-dependent order: a rerun pins the same count.
        "torch_threads": str(torch.get_num_threads()),
        # Which GPU a parallel sweep pinned this run to ("" = all visible / CPU).
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        **process_tags(),
    }
    run_id = client.create_run(experiment, run_name=name, tags={**where, **tags}).info.run_id
    params = flatten(OmegaConf.to_container(cfg, resolve=True))
    params_list = [mlflow.entities.Param(key, value) for key, value in params.items()]
    for start in range(0, len(params_list), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run_id, params=params_list[start : start + 100])
    client.log_text(run_id, OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
    client.log_text(run_id, "\n".join(overrides) + "\n", "overrides.txt")
    return run_id


def end_run(client: MlflowClient, run_id: str, status: str) -> None:
    """Terminate the run as FINISHED, FAILED or KILLED, and mirror it in the ``status`` tag, which
    the UI can show as a column and group by (the run's own status is an attribute it cannot)."""
    client.set_tag(run_id, STATUS_TAG, status.lower())
    client.set_terminated(run_id, status)


@contextmanager
def system_metrics(run_id: str, uri: str, interval_s: float, resumed: bool) -> Iterator[None]:
    """Log CPU, memory, disk, network (and GPU through NVML when present) as ``system/*`` metrics
    of the run every ``interval_s`` seconds while the block runs: Lightning's logger does not.
    A resumed run continues its earlier steps; a store that cannot be written for a while costs
    samples, not the rest of the run (``monitor.SteadyMonitor``)."""
    monitor = SteadyMonitor(run_id, sampling_interval=interval_s, resume_logging=resumed, tracking_uri=uri)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()
