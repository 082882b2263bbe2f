"""Advisory file locks between the processes of one machine (or of a file system with working
``flock``, as a cluster's shared home usually has): who may create the store, who trains a cell.

The lock files stay (empty) after use: deleting one while another process holds it open would let
two processes lock two different files of the same name.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def hold(path: Path, wait: bool) -> Iterator[bool]:
    """Lock ``path`` (created if missing) for the block. ``wait``: block until it is free, else
    yield False at once when another process holds it. The lock goes with the process, so a killed
    holder never leaves it taken."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)
