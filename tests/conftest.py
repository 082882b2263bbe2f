"""Shared fixtures: the real config, composed, and a temporary store; no test writes into the
checkout (checkpoints, claims and the default store go to a temporary folder)."""

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from normlab.config import compose
from normlab.config.paths import CHECKPOINTS_ENV_VAR


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow (end-to-end) tests first: in ``make test``'s two processes the quick ones then fill
    the gaps instead of two long tests ending the run one after the other."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True, scope="session")
def outputs_outside_the_checkout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """For the whole session (module fixtures included), and the processes it starts: checkpoints
    and claims (``checkpoint_dir=null``), the default store (no ``MLFLOW_TRACKING_URI``) and the
    working folder (MLflow's default artifact root is ``./mlruns``) in a temporary folder."""
    folder = tmp_path_factory.mktemp("outputs")
    if os.environ.get("PYTEST_XDIST_WORKER"):  # two test processes on two cores: one thread each
        torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CHECKPOINTS_ENV_VAR, str(folder / "checkpoints"))
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
        patch.chdir(folder)
        yield


@pytest.fixture
def store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def compose_config() -> Callable[[list[str]], DictConfig]:
    return compose
