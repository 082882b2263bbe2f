"""Addresses in the MLflow UI that land where a user wants to be: a study's cells in the chart view,
their seeds grouped by setup (one line per setup with its min-max band), in model-training mode.

MLflow 3 opens experiments in its GenAI mode unless the address says ``workflowType=machine_learning``.
The address keeps ``compareRunsMode`` (table or chart) but not the rest of the view (the search, the
grouping, the charts' filter): those travel as a *shared view*, an experiment tag
``mlflow.sharedViewState.<key>`` holding the view as JSON, named by ``viewStateShareKey=<key>`` (what
the UI's own Share button writes). ``make ui`` writes that tag and prints one address per study
(``normlab.ui``).
"""

from __future__ import annotations

import json

from mlflow.tracking import MlflowClient

from normlab.tracking.names import KIND_TAG

DEFAULT_BASE = "http://127.0.0.1:5000"
SHARED_VIEW_TAG = "mlflow.sharedViewState."  # MLflow 3.17's prefix for a shared view's experiment tag
SETUPS_VIEW = "normlab-setups"  # our shared view's key
# The cells (not the sweeps' parent runs, which have no setup), seeds averaged per setup with their
# min-max band, the charts narrowed to the test accuracy (per epoch, and budget/val/acc per budget).
SETUPS_VIEW_STATE = {
    "searchFilter": f"tags.{KIND_TAG} = 'cell'",
    "orderByKey": "attributes.start_time",
    "orderByAsc": False,
    "groupBy": {"aggregateFunction": "average", "groupByKeys": [{"mode": "tag", "groupByData": "setup"}]},
    "chartsSearchFilter": "val/acc",
}


def runs_page(experiment_id: str, base: str = DEFAULT_BASE) -> str:
    """The study's runs table, in model-training mode."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def setups_chart(client: MlflowClient, experiment_id: str, base: str = DEFAULT_BASE) -> str:
    """The study's cells in the chart view, grouped by setup: its shared view written as the
    experiment's tag, and the address that opens it."""
    client.set_experiment_tag(experiment_id, SHARED_VIEW_TAG + SETUPS_VIEW, json.dumps(SETUPS_VIEW_STATE))
    return f"{runs_page(experiment_id, base)}&compareRunsMode=CHART&viewStateShareKey={SETUPS_VIEW}"


def study_pages(uri: str, base: str = DEFAULT_BASE) -> list[tuple[str, str]]:
    """(study, the address of its cells' chart view by setup) for every experiment in the store but
    MLflow's empty Default."""
    client = MlflowClient(uri)
    return sorted(
        (experiment.name, setups_chart(client, experiment.experiment_id, base))
        for experiment in client.search_experiments()
        if experiment.name != "Default"
    )
