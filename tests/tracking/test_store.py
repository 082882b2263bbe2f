"""The store's experiments: made once per study, with the host that made them, so that a study used
through a tracking server from another host says where its artifacts go."""

import logging
import platform
from pathlib import Path

import pytest

from normlab.tracking import store


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
