"""The store's experiments: made once per study, with the host that made them, so that a study used
through a tracking server from another host says where its artifacts go."""

import logging
import platform
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from normlab.tracking import store
from normlab.tracking.monitor import SteadyMonitor


def test_a_study_made_over_sqlite_elsewhere_says_where_its_artifacts_go(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client, experiment = store.open_store(f"sqlite:///{tmp_path / 'mlflow.db'}", "study")
    found = client.get_experiment(experiment)
    assert found.tags[store.HOST_TAG] == platform.node()
    assert found.artifact_location == (tmp_path / "mlruns" / "study").as_uri()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="normlab"):
        store._say_where_artifacts_go(client, experiment, "study")  # made here: nothing to say
        client.set_experiment_tag(experiment, store.HOST_TAG, "login-node")
        store._say_where_artifacts_go(client, experiment, "study")
    (record,) = [record for record in caplog.records if record.name == "normlab"]
    assert record.getMessage().startswith(
        f"note: study 'study' keeps its artifacts at {found.artifact_location} on login-node;"
    )


def test_the_epoch_logger_leaves_the_runs_status_to_normlab(tmp_path: Path) -> None:
    """Lightning finalizes its logger at teardown ("success", "failed"); MLFlowLogger would set the
    run's status there, behind normlab's back. Ours logs epochs and nothing else."""
    from normlab.tracking.epochs import EpochRecorder
    from normlab.training.logger import EpochLogger

    client, experiment = store.open_store(f"sqlite:///{tmp_path / 'mlflow.db'}", "study")
    run_id = client.create_run(experiment).info.run_id
    logger = EpochLogger(EpochRecorder(client, run_id, resumed=False))
    logger.log_metrics({"val/acc": 0.5, "epoch": 0})
    for status in ("failed", "success"):
        logger.finalize(status)
        assert client.get_run(run_id).info.status == "RUNNING"
    assert [m.step for m in client.get_metric_history(run_id, "val/acc")] == [1]


def test_a_store_locked_by_another_writer_is_waited_for(tmp_path: Path) -> None:
    """Locked for 12 s by another writer (beyond sqlite's own 5 s), a process opening the store says
    so once and waits, then goes on."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store.open_store(uri, "first")  # the store exists
    connection = sqlite3.connect(tmp_path / "mlflow.db", isolation_level=None)
    connection.execute("BEGIN EXCLUSIVE")
    started = time.monotonic()
    opener = subprocess.Popen(
        [sys.executable, "-c", f"from normlab.tracking import store; store.open_store({uri!r}, 'second')"],
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(12)
    connection.execute("COMMIT")
    connection.close()
    _, err = opener.communicate(timeout=120)
    assert opener.returncode == 0, err
    assert f"the tracking store {uri} is locked by another writer: waiting up to 60 s" in err
    assert time.monotonic() - started > 12


def test_system_metrics_outlast_a_store_that_fails_for_a_while(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client, experiment = store.open_store(uri, "metrics")
    run_id = client.create_run(experiment).info.run_id
    monitor = SteadyMonitor(run_id, sampling_interval=0.2, tracking_uri=uri)
    write, failures = monitor.mlflow_logger.client.log_batch, [1, 2, 3]

    def locked_three_times(*args: object, **kwargs: object) -> None:
        if failures:
            failures.pop()
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        write(*args, **kwargs)

    monkeypatch.setattr(monitor.mlflow_logger, "_should_flush", lambda: True)  # every sample written
    monkeypatch.setattr(monitor.mlflow_logger.client, "log_batch", locked_three_times)
    with caplog.at_level(logging.INFO, logger="normlab"):
        monitor.start()
        time.sleep(2.0)
        monitor.finish()
    said = [r.getMessage() for r in caplog.records if r.name == "normlab"]
    assert said[:2] == [
        "system metrics: cannot write to the store ((sqlite3.OperationalError) database is locked); "
        "sampling on",
        "system metrics: the store takes writes again",
    ]
    steps = [m.step for m in client.get_metric_history(run_id, "system/cpu_utilization_percentage")]
    assert len(steps) >= 5 and steps == sorted(set(steps))  # sampled on, each step once
