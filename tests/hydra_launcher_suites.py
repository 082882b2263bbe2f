"""Hydra's own launcher contract: the suites hydra's joblib and submitit launchers pass, run on the
pool launcher the way their plugins parametrize them (a task may be any callable: a closure, an
object; each job gets its config, its working dir and its return value).

Not collected with the rest (no ``test_`` prefix): ``tests/test_pool_launcher_conformance.py`` runs
this file in a pytest process of its own, since the suites read process-wide state (the working
directory, Hydra's singletons) that other tests of one worker change."""

import pytest
from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher
from hydra.test_utils.launcher_common_tests import IntegrationTestSuite, LauncherTestSuite

from hydra_plugins.normlab_pool.pool_launcher import PoolLauncher


def test_discovery() -> None:
    assert PoolLauncher.__name__ in [cls.__name__ for cls in Plugins.instance().discover(Launcher)]


@pytest.mark.parametrize("launcher_name, overrides", [("pool", ["hydra.launcher.cpu_jobs=2"])])
class TestPoolLauncher(LauncherTestSuite):
    pass


@pytest.mark.parametrize(
    "task_launcher_cfg, extra_flags",
    [
        pytest.param(
            {},
            ["-m", "hydra/job_logging=disabled", "hydra/launcher=pool", "hydra.launcher.cpu_jobs=2"],
            id="pool",
        )
    ],
)
class TestPoolLauncherIntegration(IntegrationTestSuite):
    pass
