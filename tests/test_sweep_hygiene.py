"""Sweeps that clean up after themselves: bad cells fail alone, concurrent sweeps train each cell
once, Ctrl-C says what happened, an unreachable server fails fast, nothing phones home."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from mlflow.tracking import MlflowClient

from tests.helpers import cell_runs, run_sweep

pytestmark = pytest.mark.slow
SMALL = [
    "data.train_subset=256",
    "data.test_subset=1000",
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "eval.precise_samples=128",
]


def _train(arguments: list[str], store: str, cwd: Path) -> subprocess.Popen:
    environment = {**os.environ, "MLFLOW_TRACKING_URI": store}
    command = [sys.executable, "-m", "normlab.train", *arguments]
    return subprocess.Popen(
        command,
        cwd=cwd,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal gives a command
    )


# One grid with bad cells of several kinds: lr out of range (-1, inf) and a norm option out of range
# (num_groups=0; the lr's rule is checked first), and one good cell.
BAD_GRID = ["norm=group", "norm.num_groups=0,2", "optimizer.lr=-1,inf,0.5"]
MESSAGES = (
    "optimizer.lr=-1 is not allowed",
    "optimizer.lr=inf is not allowed",
    "norm.num_groups=0 is not allowed",
)


def test_bad_cells_of_a_sweep_fail_alone_and_the_sweep_goes_on(tmp_path: Path, store: str) -> None:
    result = run_sweep(["study=bad_cells", *BAD_GRID, *SMALL], store, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "[sweep] 6 cells: 1 trained, 0 resumed, 0 skipped (already finished), 5 failed" in output
    assert all(message in output for message in MESSAGES), output[-3000:]
    assert "died" not in output and "Traceback" not in output
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("bad_cells").experiment_id
    (parent,) = client.search_runs([experiment], filter_string="tags.kind = 'sweep'")
    assert parent.info.status == "FAILED"
    assert [run.info.status for run in cell_runs(store, "bad_cells")] == ["FINISHED"]  # bad ones: no run
    # Each job's log file (Hydra's, in its folder) holds its cell's lines: epochs, outcome, error.
    logs = [path.read_text() for path in sorted((tmp_path / "multirun").glob("*/train.log"))]
    assert len(logs) == 6 and sum("error: " in log for log in logs) == 5
    (good,) = [log for log in logs if "error: " not in log]
    assert "epoch 1/1  train/loss" in good and "outcome: new, val/acc" in good
    assert all(message in "".join(logs) for message in MESSAGES)


def test_two_sweeps_of_one_study_at_once_train_each_cell_once(tmp_path: Path, store: str) -> None:
    grid = ["-m", "study=twice", "norm=none,scratch,native", "seed=0,1", *SMALL, "hydra.launcher.cpu_jobs=1"]
    MlflowClient(store).search_experiments()  # the store exists; its experiment is created by the sweeps
    sweeps = [_train(grid, store, tmp_path) for _ in range(2)]  # the same second: one folder each
    outputs = [sweep.communicate(timeout=600) for sweep in sweeps]
    assert [sweep.returncode for sweep in sweeps] == [0, 0], outputs
    runs = cell_runs(store, "twice")
    assert len(runs) == 6 and {run.info.status for run in runs} == {"FINISHED"}
    assert len({run.data.tags["config_fingerprint"] for run in runs}) == 6
    assert len(list((tmp_path / "multirun" / "twice").iterdir())) == 2
    summaries = "".join(out + err for out, err in outputs)
    trained = [int(line.split(" cells: ")[1].split(" trained")[0]) for line in summaries.splitlines()
               if line.startswith("[sweep] 6 cells:")]  # fmt: skip
    assert sum(trained) == 6, summaries[-3000:]


@pytest.mark.parametrize("sent", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_marks_the_run_killed_and_says_so(
    tmp_path: Path, store: str, sent: signal.Signals
) -> None:
    """Ctrl-C, or SIGTERM (SLURM's preemption, ``timeout``): the run KILLED and tagged with the
    signal, one line saying so, the shell's exit code for it (130, 143)."""
    process = _train(
        ["study=interrupt", "data.train_subset=2048", "data.test_subset=1000", "trainer.max_epochs=200"],
        store,
        tmp_path,
    )
    assert process.stderr is not None
    lines = []
    while not any("epoch 1/200" in line for line in lines):  # a checkpoint exists
        line = process.stderr.readline()
        assert line, "".join(lines)
        lines.append(line)
    process.send_signal(sent)
    _, rest = process.communicate(timeout=60)
    assert process.returncode == 128 + sent, rest[-2000:]
    assert (
        rest.strip()
        .splitlines()[-1]
        .startswith(f"interrupted ({sent.name}): run scratch-bs256-m0.1-lr0.9-s0 marked KILLED")
    )
    (run,) = cell_runs(store, "interrupt")
    assert run.info.status == "KILLED" and run.data.tags["failure"].startswith(f"interrupted ({sent.name})")


def test_a_pool_sweep_stopped_by_ctrl_c_says_so_without_a_traceback(tmp_path: Path, store: str) -> None:
    """Ctrl-C reaches every process of the sweep (the terminal signals its process group): each
    running cell ends KILLED at its safe point, no cell starts after, one line per cell and one for
    the sweep, no traceback, exit 130. (SIGTERM to the launcher alone, which passes it on, was
    checked the same way by hand; one variant keeps CI's time.)"""
    sent, to_group = signal.SIGINT, True
    grid = [
        "-m",
        "study=stop",
        "norm=none,scratch",
        "seed=0,1,2",
        "data.train_subset=2048",
        "data.test_subset=1000",
    ]
    process = _train([*grid, "trainer.max_epochs=200", "hydra.launcher.cpu_jobs=2"], store, tmp_path)
    assert process.stderr is not None
    lines: list[str] = []
    while len({line.split()[0] for line in lines if "epoch 1/200" in line}) < 2:  # both slots train
        line = process.stderr.readline()
        assert line, "".join(lines)
        lines.append(line)
    if to_group:
        os.killpg(process.pid, sent)
    else:
        process.send_signal(sent)
    out, err = process.communicate(timeout=120)
    output = out + "".join(lines) + err
    assert process.returncode == 128 + sent, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert f"[sweep] interrupted ({sent.name}): 4 cells not started" in output
    assert output.count(f"failed none-bs256-lr0.9-s0: interrupted ({sent.name})") == 1
    runs = cell_runs(store, "stop")
    assert len(runs) == 2 and {run.info.status for run in runs} == {"KILLED"}


def test_an_unreachable_tracking_server_fails_fast_in_one_line(tmp_path: Path, store: str) -> None:
    """Within 15 s, and within 10 s of what starting the command takes (the same command failing
    on a bad value, measured alongside, so a loaded machine's slow imports do not count)."""

    def seconds(arguments: list[str], uri: str) -> tuple[float, subprocess.Popen, str]:
        started = time.perf_counter()
        process = _train(arguments, uri, tmp_path)
        _, err = process.communicate(timeout=60)
        return time.perf_counter() - started, process, err

    startup, _, _ = seconds(["data.train_subset=0"], store)
    elapsed, process, err = seconds(
        ["data.train_subset=64", "data.test_subset=1000", "trainer.max_epochs=1"], "http://127.0.0.1:9"
    )
    assert process.returncode == 2 and elapsed - startup < 10 and elapsed < max(15, startup + 10)
    assert err.strip().splitlines() == [
        "error: cannot reach the tracking server http://127.0.0.1:9 within 3 s (ConnectionError)"
    ]


def test_mlflow_telemetry_is_off_in_our_processes() -> None:
    """Without MLFLOW_DISABLE_TELEMETRY in the environment, importing normlab turns it off."""
    check = "from mlflow.telemetry.utils import is_telemetry_disabled as off; print(off())"
    environment = {k: v for k, v in os.environ.items() if k != "MLFLOW_DISABLE_TELEMETRY"}
    code = f"import os, normlab.train; print(os.environ['MLFLOW_DISABLE_TELEMETRY']); {check}"
    result = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True)
    assert result.stdout.split() == ["true", "True"], result.stderr[-2000:]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_tracking_server_lost_mid_run_ends_it_in_seconds_in_one_line(tmp_path: Path) -> None:
    """The server dies during epoch 2: within seconds the run stops at a safe point, says which
    server in one line, exits 75 (rerun to resume), keeps its checkpoint, and is left RUNNING for the
    next run of the cell to close (the store cannot be written)."""
    port, backend = _free_port(), f"sqlite:///{tmp_path / 'server.db'}"
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend, "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while not _answers(uri):
            assert server.poll() is None and time.monotonic() < deadline, "the MLflow server did not start"
            time.sleep(0.5)
        # ~25 epochs of 1-2 s: the loss is found long before the run could end
        arguments = ["study=lost", "data.train_subset=4096", "data.test_subset=1000", "data.batch_size=32",
                     "trainer.max_epochs=25", *SMALL[3:], f"checkpoint_dir={tmp_path}/ck"]  # fmt: skip
        run = _train(arguments, uri, tmp_path)
        assert run.stderr is not None
        lines = [run.stderr.readline()]
        while "epoch 1/25" not in lines[-1]:
            assert lines[-1], "".join(lines)
            lines.append(run.stderr.readline())
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
    killed = time.monotonic()
    _, err = run.communicate(timeout=120)
    assert run.returncode == 75, err
    assert time.monotonic() - killed < 30
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot reach the tracking server {uri} within 3 s"), err
    assert "left RUNNING" in last
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 3, err
    assert list((tmp_path / "ck").glob("*/last.ckpt"))
    (left,) = cell_runs(backend, "lost")
    assert left.info.status == "RUNNING"


def _answers(uri: str) -> bool:
    try:
        return requests.get(f"{uri}/health", timeout=1).ok
    except requests.RequestException:
        return False
