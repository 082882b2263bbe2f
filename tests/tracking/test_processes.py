"""Telling live processes from dead ones: the cross-process lock (filelock's flock: one holder at a
time, free again when its holder is killed, the lock file kept), and a run's pid (psutil)."""

import multiprocessing as mp
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil

from normlab.tracking import locks, resume


def _hold_forever(path: Path, ready: Any) -> None:
    with locks.hold(path, wait=False) as held:
        assert held
        ready.set()
        signal.pause()


def test_a_held_lock_refuses_others_until_its_holder_is_killed(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "cell.lock"
    context = mp.get_context("spawn")
    ready = context.Event()
    holder = context.Process(target=_hold_forever, args=(path, ready))
    holder.start()
    try:
        assert ready.wait(60)
        with locks.hold(path, wait=False) as held:
            assert not held
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.join()
    with locks.hold(path, wait=True) as held:
        assert held
    assert path.exists()


def test_a_pid_reused_by_another_process_reads_dead() -> None:
    """The run's tags hold its process's pid and start time: the same pid with another start time is
    a reuse, and the run's own process is gone."""
    me = psutil.Process()
    assert resume.process_alive(me.pid) and resume.process_alive(me.pid, me.create_time())
    assert not resume.process_alive(me.pid, me.create_time() - 3600)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not resume.process_alive(child.pid)
