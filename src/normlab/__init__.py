"""normlab: an experiment platform for comparing normalization setups (see README.md and
docs/architecture.md)."""

import os

# An offline lab sends nothing: MLflow's usage telemetry is off in every process normlab runs
# (the Makefile exports the same for `mlflow ui` and `mlflow server`). A user's explicit choice wins.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
