"""The bench's noise gauge: CPU time that other work took, told apart from our own."""

import os
import subprocess
import sys

import pytest

from normlab.bench import cpu_share
from normlab.bench.cpu_share import CpuSample


def test_share_is_busy_time_minus_ours_over_the_cores_time() -> None:
    before = CpuSample(busy=100.0, steal=1.0, ours=10.0, wall=0.0)
    after = CpuSample(busy=160.0, steal=3.0, ours=60.0, wall=50.0)  # 60 s busy, 50 of them ours
    measured = cpu_share.share(before, after, cores=2)
    assert measured.others_seconds == pytest.approx(10.0)
    assert measured.others == pytest.approx(0.1)  # 10 s of 2 cores x 50 s
    assert measured.steal == pytest.approx(0.02)
    assert not measured.quiet and "BUSY" in cpu_share.note(measured)
    alone = cpu_share.share(before, CpuSample(busy=151.0, steal=1.0, ours=60.0, wall=50.0), cores=2)
    assert alone.quiet and alone.others == pytest.approx(0.01) and "quiet" in cpu_share.note(alone)


def test_a_process_we_did_not_reap_is_other_work_and_one_we_reaped_is_ours() -> None:
    before = cpu_share.sample()
    burn = "import time\nwhile time.process_time() < 0.5: pass"  # 0.5 s of CPU, however long it takes
    child = subprocess.Popen([sys.executable, "-c", burn])
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, but not reaped: not ours yet
    unreaped = cpu_share.sample()
    child.wait()  # reaped: its CPU time is now our children's
    reaped = cpu_share.sample()
    assert before is not None and unreaped is not None and reaped is not None
    others_unreaped = cpu_share.share(before, unreaped).others_seconds
    assert others_unreaped >= 0.4
    assert reaped.ours - unreaped.ours >= 0.4
    assert cpu_share.share(before, reaped).others_seconds <= others_unreaped - 0.3
