"""MLflow's system-metrics monitor, made to outlast a store it cannot write for a while.

MLflow's own loop ends for good at the first failed write or status check (a SQLite store locked
by another writer past its busy timeout, a tracking server restarting), after a traceback. Here a
failed write costs that sample: one line when writes start failing, one when they work again,
and what was not written stays queued in MLflow's batch logger, written with the next sample.
The loop ends when the block that owns it ends (``store.system_metrics``), not by asking the
store whether the run still runs.
"""

from __future__ import annotations

import logging

from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

from normlab.config.console import first_line, say


class SteadyMonitor(SystemMetricsMonitor):
    def monitor(self) -> None:
        failing = False
        while True:
            self.collect_metrics()
            if self._shutdown_event.wait(self.sampling_interval):
                return
            step = self._logging_step
            try:
                self.publish_metrics(self.aggregate_metrics())
            except Exception as error:  # sqlite, HTTP: each store fails its own way
                self._logging_step = step + 1  # the queued sample keeps its step; the next takes a new one
                for monitor in self.monitors:
                    monitor.clear_metrics()
                if not failing:
                    reason = first_line(error, 160)
                    say(f"system metrics: cannot write to the store ({reason}); sampling on", logging.WARNING)
                failing = True
                continue
            if failing:
                say("system metrics: the store takes writes again")
            failing = False
