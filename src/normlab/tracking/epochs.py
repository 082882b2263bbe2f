"""A run's per-epoch metrics, each (metric, epoch) recorded once, at step = the epoch number.

A killed run resumes from its last checkpoint and replays the epochs after it; a kill that came
after an epoch's metrics reached MLflow but before its checkpoint was written would log that epoch
a second time (and a fused group resumed at a common epoch, more), which a report reads as one
more seed. ``EpochRecorder`` asks MLflow, when a run is reopened, how far each metric got, and
logs only what is new; the values it skips are the ones it would log again (resume is exact).
Solo cells log through it from Lightning (``normlab.training.logger.EpochLogger``), fused ones
directly (``normlab.fused.run``).
"""

from __future__ import annotations

import time

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

SYSTEM_PREFIX = "system/"  # MLflow's system-metrics monitor keeps its own steps


def recorded_steps(client: MlflowClient, run_id: str) -> dict[str, int]:
    """The last step logged for each of the run's metrics (system metrics aside)."""
    keys = [key for key in client.get_run(run_id).data.metrics if not key.startswith(SYSTEM_PREFIX)]
    return {key: max(m.step for m in client.get_metric_history(run_id, key)) for key in keys}


class EpochRecorder:
    """Logs one run's metrics of an epoch in one batch, skipping any (metric, step) the run already
    has: ``resumed`` reads what a run reopened after a kill recorded before it."""

    def __init__(self, client: MlflowClient, run_id: str, resumed: bool) -> None:
        self.client = client
        self.run_id = run_id
        self.recorded = recorded_steps(client, run_id) if resumed else {}

    def log(self, metrics: dict[str, float], step: int) -> None:
        new = {key: float(value) for key, value in metrics.items() if step > self.recorded.get(key, -1)}
        if not new:
            return
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(key, v, now, step) for key, v in new.items()])
        self.recorded.update(dict.fromkeys(new, step))
