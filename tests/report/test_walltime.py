"""The "Wall time" section of RESULTS.md (normlab.walltime): the latest whole-study sweep of each
kind, fused and alone, and their ratio, read from sweep runs recorded in MLflow."""

from pathlib import Path

from mlflow.tracking import MlflowClient

from normlab.report import walltime
from normlab.tracking.names import FUSED_WITH_TAG, PARENT_TAG

MINUTE_MS = 60_000
EPOCH_MS = 1_795_000_000_000  # a start time in 2026 (MLflow reads 0 as "now")


def _sweep(
    client: MlflowClient, experiment: str, start_min: int, minutes: float, cells: int, fused: int
) -> None:
    """A FINISHED sweep run that started at minute ``start_min`` and its ``cells`` cell runs, the
    first ``fused`` of them trained in a fused group."""
    start = EPOCH_MS + start_min * MINUTE_MS
    sweep = client.create_run(
        experiment, start_time=start, tags={"kind": "sweep"}, run_name=f"sweep at {start_min}"
    )
    for index in range(cells):
        tags = {"kind": "cell", PARENT_TAG: sweep.info.run_id, "git_commit": "abc", "machine": "vm"}
        if index < fused:
            tags[FUSED_WITH_TAG] = f"{fused} cells"
        cell = client.create_run(experiment, start_time=start, tags=tags)
        client.set_terminated(cell.info.run_id, end_time=start + MINUTE_MS)
    client.set_terminated(sweep.info.run_id, end_time=start + int(minutes * MINUTE_MS))


def test_the_latest_sweep_of_each_kind_gives_the_ratio(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("study")
    # Recorded in this order; the store returns runs newest first.
    _sweep(client, experiment, 0, 13.6, cells=4, fused=3)  # an older fused sweep
    _sweep(client, experiment, 20, 24.0, cells=4, fused=0)  # alone
    _sweep(client, experiment, 50, 10.0, cells=4, fused=3)  # the latest fused sweep
    _sweep(client, experiment, 70, 1.0, cells=2, fused=2)  # a partial rerun: not the whole study
    page = "\n".join(walltime.section("study", uri))
    assert "| sweep at 20 | 24.0 min | 4 | 0 |" in page
    assert "| sweep at 50 | 10.0 min | 4 | 3 |" in page
    assert "sweep at 0 " not in page and "sweep at 70" not in page
    assert "Fused training made the study **2.4x** faster." in page


def test_no_ratio_without_a_sweep_alone(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("study")
    _sweep(client, experiment, 0, 10.0, cells=2, fused=2)
    page = "\n".join(walltime.section("study", uri))
    assert "No whole-study sweep with `fuse=false` is recorded: no ratio." in page
    assert walltime.section("another study", uri) == []
