"""A tracking server watched while a cell trains: its loss noticed within seconds, not at the
epoch's end, where MLflow's client would retry its writes for minutes.

A thread asks the server's ``/health`` every ``WATCH_INTERVAL_S``; the first time it does not
answer, ``on_lost`` gets the sentence saying so (``training.interrupt.SafeInterrupt.stop``: training
stops at its next safe point, as for Ctrl-C). A SQLite store is a file: nothing to watch.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from normlab.tracking.store import is_server, server_problem

WATCH_INTERVAL_S = 5.0


@contextmanager
def watch_server(
    uri: str, on_lost: Callable[[str], None], interval_s: float = WATCH_INTERVAL_S
) -> Iterator[None]:
    """For the block: ``on_lost(<why>)`` once, from a thread, if the server at ``uri`` stops answering."""
    if not is_server(uri):
        yield
        return
    done = threading.Event()

    def watch() -> None:
        while not done.wait(interval_s):
            problem = server_problem(uri)
            if problem and not done.is_set():
                on_lost(problem)
                return

    thread = threading.Thread(target=watch, name="normlab-server-watch", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
