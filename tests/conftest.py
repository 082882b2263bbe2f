"""Shared fixtures: the real config, composed, and a temporary store; no test writes into the
checkout (checkpoints, claims and the default store go to a temporary folder)."""

from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import DictConfig

from normlab.config import compose
from normlab.config.paths import CHECKPOINTS_ENV_VAR


@pytest.fixture(autouse=True)
def outputs_outside_the_checkout(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checkpoints and claims (``checkpoint_dir=null``) and the default store (no
    ``MLFLOW_TRACKING_URI``) of every test, and of the processes it starts, in a temporary folder."""
    folder = tmp_path_factory.mktemp("outputs")
    monkeypatch.setenv(CHECKPOINTS_ENV_VAR, str(folder / "checkpoints"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")


@pytest.fixture
def store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def compose_config() -> Callable[[list[str]], DictConfig]:
    return compose
