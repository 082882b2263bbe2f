"""How much of the machine other work took while the bench measured: the bench's noise gauge.

The load average is no gauge for a bench that keeps the cores busy itself: it counts the bench's
own threads, and it trails the last minutes (a build just before the bench reads as load).
``psutil.cpu_times`` counts every core's busy time (Linux: ``/proc/stat``), and our process's
``cpu_times`` our own CPU time (this process and the children it has waited for): busy time minus
ours is what other processes took, and the hypervisor's ``steal`` what the host's other guests
took (the time this VM was runnable but not run; 0 where the platform does not count it).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import psutil

BUSY_FIELDS = ("user", "nice", "system", "irq", "softirq", "steal")  # idle and iowait are not busy
QUIET_SHARE = 0.05  # others may use 5% of the cores' time and the bench still reads as quiet


@dataclass(frozen=True)
class CpuSample:
    """Cumulative CPU seconds, all cores together: busy (steal included), stolen, and ours."""

    busy: float
    steal: float
    ours: float
    wall: float  # a monotonic clock


@dataclass(frozen=True)
class Share:
    """What others took between two samples, as fractions of the cores' time (cores x wall)."""

    others: float  # other processes and the host's other guests (steal)
    steal: float  # the host's other guests alone
    others_seconds: float
    cores: int
    seconds: float

    @property
    def quiet(self) -> bool:
        return self.others <= QUIET_SHARE


def sample() -> CpuSample | None:
    """Now's cumulative counts, or None where psutil cannot read them."""
    try:
        cores, mine = psutil.cpu_times(), psutil.Process().cpu_times()
    except (psutil.Error, OSError):
        return None
    return CpuSample(
        busy=sum(getattr(cores, field, 0.0) for field in BUSY_FIELDS),  # a field the platform lacks: 0
        steal=getattr(cores, "steal", 0.0),
        ours=mine.user + mine.system + mine.children_user + mine.children_system,
        wall=time.monotonic(),
    )


def share(before: CpuSample, after: CpuSample, cores: int | None = None) -> Share:
    """What others took of ``cores`` (default: all of this machine's) between two samples."""
    cores = cores or os.cpu_count() or 1
    seconds = max(after.wall - before.wall, 1e-9)
    others = max((after.busy - before.busy) - (after.ours - before.ours), 0.0)
    steal = max(after.steal - before.steal, 0.0)
    capacity = cores * seconds
    return Share(others / capacity, steal / capacity, others, cores, seconds)


def note(measured: Share) -> str:
    """One line for the bench's page: how much others took, and whether the ratios can be trusted."""
    verdict = (
        "quiet"
        if measured.quiet
        else "BUSY: other work shared the cores; the ratios above may mislead, rerun on a quiet machine"
    )
    return (
        f"other work while the bench ran: {100 * measured.others:.1f}% of {measured.cores} cores' time "
        f"over {measured.seconds / 60:.0f} min (host steal {100 * measured.steal:.1f}%): {verdict}"
    )
