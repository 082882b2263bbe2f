"""Advisory file locks between the processes of one machine (or of a file system with working
``flock``, as a cluster's shared home usually has): who may create the store, who trains a cell.

The lock files stay (empty) after use: deleting one while another process holds it open would let
two processes lock two different files of the same name.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import filelock


@contextmanager
def hold(path: Path, wait: bool) -> Iterator[bool]:
    """Lock ``path`` (created if missing) for the block: filelock's ``flock``, the file kept, no
    fallback to a lock by the file's existence (a kept file would then stay locked). ``wait``:
    block until it is free, else yield False at once when another process holds it. The lock goes
    with the process, so a killed holder never leaves it taken."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(
        path, blocking=wait, thread_local=False, preserve_lock_file=True, fallback_to_soft=False
    )
    try:
        lock.acquire()
    except filelock.Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()
