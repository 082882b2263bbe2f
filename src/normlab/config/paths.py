"""Where the project and its outputs are: the checkout, its config and study folders, the
tracking store and the checkpoints (each asked here, and resolved once by each entry point)."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[3]
CONF_DIR = PROJECT_ROOT / "conf"
EXPERIMENTS_DIR = PROJECT_ROOT / "experiments"
GROUPS = ("data", "model", "norm", "optimizer", "trainer", "setup", "experiment", "profile", "launcher")


def tracking_uri(configured: str | None = None) -> str:
    """``configured``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<project root>/mlflow.db``.
    Each entry point resolves it once and passes the result down."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"


CHECKPOINTS_ENV_VAR = "NORMLAB_CHECKPOINTS"


def checkpoint_dir(configured: str | None) -> Path:
    """``configured``, else ``$NORMLAB_CHECKPOINTS``, else ``<project root>/checkpoints``."""
    if configured:
        return Path(configured)
    return Path(os.environ.get(CHECKPOINTS_ENV_VAR) or PROJECT_ROOT / "checkpoints")


def group_options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))
