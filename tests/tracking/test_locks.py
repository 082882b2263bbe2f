"""The cross-process lock (filelock's flock): one holder at a time, free again when its holder is
killed, and the lock file kept (another process may hold it open)."""

import multiprocessing as mp
import os
import signal
from pathlib import Path
from typing import Any

from normlab.tracking import locks


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
