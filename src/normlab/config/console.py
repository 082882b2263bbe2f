"""How a cell reports: every line (epochs, budgets, outcome, errors) goes through ``logging``, logger
"normlab". In a Hydra job (conf/hydra/job_logging/normlab.yaml) it reaches the console as before, the
message alone on stderr through rich, and the job's log file in its folder with time and level.
Outside one (a test, ``normlab.rerun``) nothing has configured logging: the console handler is added
on the first line, so nothing a user would have seen is lost."""

from __future__ import annotations

import logging

from rich.console import Console
from rich.text import Text

log = logging.getLogger("normlab")


class ConsoleHandler(logging.Handler):
    """A record's message alone, printed by rich to stderr, soft-wrapped: long lines stay whole
    (rich's ``RichHandler`` lays messages out in columns that wrap at 80 characters off a
    terminal) and "[cell]" prefixes are text, not markup."""

    def __init__(self, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.console = Console(stderr=True, highlight=False, soft_wrap=True)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console.print(Text(self.format(record)))
        except Exception:  # logging's contract: a handler reports its own failure, never raises
            self.handleError(record)


def first_line(error: BaseException, limit: int | None = None) -> str:
    """An error as one line of a report: its message's first line (at most ``limit`` characters),
    else its type's name."""
    lines = str(error).strip().splitlines()
    return lines[0][:limit] if lines else type(error).__name__


def say(message: str, level: int = logging.INFO) -> None:
    """One line of a cell's report, through logger "normlab"."""
    if not log.handlers and log.getEffectiveLevel() > level:  # logging not configured (no Hydra job)
        log.addHandler(ConsoleHandler())
        log.setLevel(logging.INFO)
        log.propagate = False
    log.log(level, message)
