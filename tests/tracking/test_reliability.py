"""Reliability: a sweep killed twice with SIGKILL finishes on rerun with the metrics of an uninterrupted one;
8 processes log to one SQLite store at once; the same config and seed give the same metrics."""

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from normlab.tracking import store as tracking
from normlab.tracking.names import FUSED_WITH_TAG
from normlab.training.solo import fit
from tests.helpers import QUICK, cell_runs, log_epochs, run_sweep

# Two cells that train fused (fuse=true, plain SGD) and two alone (SGD momentum: not fusable), in one
# sweep: both resume paths, killed at whatever moment, in one run of the test.
CELLS = [
    "study=kill_test",
    "norm=scratch,native",
    "optimizer.momentum=0,0.5",
    "optimizer.lr=0.2",
    "fuse=true",
    "data.train_subset=1024",
    "data.test_subset=1000",
    "data.batch_size=32",
    "trainer.max_epochs=3",
    "trainer.accelerator=cpu",
    "eval.precise_samples=320",
    "hydra.launcher.cpu_jobs=2",
]
COMPARED = ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_precise", "val/acc_batchstats")


def _sweep(store: str, workdir: Path, name: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "normlab.train", "-m", *CELLS,
               f"checkpoint_dir={workdir / 'checkpoints'}", f"hydra.sweep.dir={workdir / name}"]  # fmt: skip
    log = open(workdir / f"{name}.log", "w")  # noqa: SIM115 (closed with the process)
    env = {**os.environ, "MLFLOW_TRACKING_URI": store}
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _kill_after_a_checkpoint(process: subprocess.Popen, checkpoints: Path, newer_than: float) -> None:
    """SIGKILL the whole sweep (launcher and workers) once an epoch checkpoint newer than ``newer_than``
    exists: mid-run, after at least one epoch of this attempt."""
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if any(p.stat().st_mtime > newer_than for p in checkpoints.glob("*/*.ckpt")):
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return
        time.sleep(0.02)
    pytest.fail(f"no checkpoint appeared before the sweep ended (exit {process.poll()})")


def _history(store: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in MlflowClient(store).get_metric_history(run_id, key))


def _runs(store: str) -> list:
    return cell_runs(store, "kill_test")


@pytest.mark.slow
def test_sweep_killed_twice_resumes_to_the_uninterrupted_metrics(tmp_path: Path) -> None:
    killed_store = f"sqlite:///{tmp_path / 'killed.db'}"
    checkpoints = tmp_path / "checkpoints"
    for attempt in ("first", "second"):
        started = time.time()
        _kill_after_a_checkpoint(_sweep(killed_store, tmp_path, attempt), checkpoints, started)
    # killed processes leave RUNNING runs; a rerun marks those it cannot resume KILLED
    assert {r.info.status for r in _runs(killed_store)} <= {"RUNNING", "KILLED"}
    final = _sweep(killed_store, tmp_path, "final")
    assert final.wait(timeout=300) == 0, (tmp_path / "final.log").read_text()[-3000:]
    log = (tmp_path / "final.log").read_text()
    assert "resume: resuming run" in log and "[sweep] 4 cells:" in log and "0 failed" in log

    reference_store = f"sqlite:///{tmp_path / 'reference.db'}"
    (tmp_path / "ref").mkdir()
    reference = _sweep(reference_store, tmp_path / "ref", "uninterrupted")
    assert reference.wait(timeout=300) == 0, (tmp_path / "ref" / "uninterrupted.log").read_text()[-3000:]

    def cell(run: object) -> tuple[str, str]:
        return run.data.tags["norm"], run.data.params["optimizer.momentum"]

    killed, expected = _runs(killed_store), {cell(r): r for r in _runs(reference_store)}
    assert len(expected) == 4
    for key in expected:
        runs = [r for r in killed if cell(r) == key]
        assert sorted(r.info.status for r in runs).count("FINISHED") == 1, [r.info.status for r in runs]
        finished = next(r for r in runs if r.info.status == "FINISHED")
        for metric in COMPARED:
            assert finished.data.metrics[metric] == expected[key].data.metrics[metric], (key, metric)
        # every epoch recorded once, equal to the uninterrupted run's, whenever the kills came
        for metric in COMPARED:
            ours = _history(killed_store, finished.info.run_id, metric)
            assert ours == _history(reference_store, expected[key].info.run_id, metric), (key, metric)
            assert len({step for step, _ in ours}) == len(ours), (key, metric, ours)
        # plain SGD fused, momentum alone
        assert (FUSED_WITH_TAG in finished.data.tags) == (key[1] == "0"), key
    assert not list(checkpoints.glob("*/*.ckpt"))  # removed once their runs finished
    # The two killed sweeps' parent runs were closed by the final one; resumed runs keep no stale failure.
    client = MlflowClient(killed_store)
    experiment = client.get_experiment_by_name("kill_test").experiment_id
    parents = client.search_runs([experiment], filter_string="tags.kind = 'sweep'")
    assert sorted(run.info.status for run in parents) == ["FINISHED", "KILLED", "KILLED"]
    assert all("failure" not in r.data.tags for r in killed if r.info.status == "FINISHED")


@pytest.mark.slow
def test_eight_writers_to_one_sqlite_store_lose_nothing(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client, experiment = tracking.open_store(store, "concurrency")  # created once, before the writers
    run_ids = [client.create_run(experiment).info.run_id for _ in range(8)]
    context = mp.get_context("spawn")
    writers = [context.Process(target=log_epochs, args=(store, run_id, 40)) for run_id in run_ids]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
    assert [writer.exitcode for writer in writers] == [0] * 8  # no "database is locked"
    for run_id in run_ids:
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        for i in range(7):
            history = client.get_metric_history(run_id, f"m{i}")
            assert sorted(m.step for m in history) == list(range(1, 41))


@pytest.mark.slow
def test_same_config_and_seed_give_identical_metrics(compose_config, tmp_path: Path) -> None:
    results = []
    for attempt in ("a", "b"):
        overrides = [*QUICK, "norm=scratch", f"tracking.uri=sqlite:///{tmp_path / attempt}.db",
                     f"checkpoint_dir={tmp_path / attempt}"]  # fmt: skip
        results.append(fit(compose_config(overrides), []).metrics)
    for key in ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_precise", "val/acc_batchstats"):
        assert results[0][key] == results[1][key], key


@pytest.mark.slow
def test_failed_cell_sweep_goes_on_exits_1_and_a_rerun_skips_the_finished(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    arguments = [
        "study=fail_test",
        "norm=native,scratch",
        "data.batch_size=1",
        "data.train_subset=32",
        "data.test_subset=1000",
        "trainer.max_epochs=1",
        "trainer.accelerator=cpu",
        "eval.precise_samples=128",
        "hydra.launcher.cpu_jobs=1",
        f"checkpoint_dir={tmp_path / 'checkpoints'}",
    ]
    first = run_sweep(arguments, store, tmp_path)
    assert first.returncode == 1, first.stderr[-3000:]
    out = first.stdout + first.stderr
    assert "[sweep] 2 cells: 1 trained, 0 resumed, 0 skipped (already finished), 1 failed" in out
    assert "failed native-bs1-m0.1-lr0.9-s0: run native-bs1-m0.1-lr0.9-s0 failed: Expected" in out

    again = run_sweep(arguments, store, tmp_path)
    out = again.stdout + again.stderr
    assert again.returncode == 1 and "0 trained, 0 resumed, 1 skipped (already finished), 1 failed" in out
    assert "[scratch-bs1-m0.1-lr0.9-s0] skip: finished as run" in out
    runs = cell_runs(store, "fail_test")
    assert sorted(r.info.status for r in runs) == ["FAILED", "FAILED", "FINISHED"]  # failed cells rerun
