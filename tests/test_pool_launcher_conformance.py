"""The pool launcher keeps Hydra's launcher contract: Hydra's own LauncherTestSuite and
IntegrationTestSuite (``tests/hydra_launcher_suites.py``), run in a pytest process of their own."""

import re
import subprocess
import sys
from pathlib import Path

from normlab.config.paths import PROJECT_ROOT

SUITES = Path(__file__).with_name("hydra_launcher_suites.py")


def test_the_pool_launcher_passes_hydras_launcher_suites() -> None:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-p", "no:cacheprovider", str(SUITES)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:]
    assert re.search(r"\b21 passed\b", result.stdout), result.stdout[-2000:]  # the suites and discovery
