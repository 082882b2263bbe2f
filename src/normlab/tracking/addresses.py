"""Addresses in the MLflow UI that land where a user wants to be: a study's runs, in model-training
mode. MLflow 3 opens experiments in its GenAI mode (traces, token costs) unless the address says
``workflowType=machine_learning``; ``make ui`` prints one such address per study (``normlab.ui``).
"""

from __future__ import annotations

from mlflow.tracking import MlflowClient

DEFAULT_BASE = "http://127.0.0.1:5000"


def runs_page(experiment_id: str, base: str = DEFAULT_BASE) -> str:
    """The study's runs table, in model-training mode."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def study_pages(uri: str, base: str = DEFAULT_BASE) -> list[tuple[str, str]]:
    """(study, its runs page) for every experiment in the store but MLflow's empty Default."""
    experiments = MlflowClient(uri).search_experiments()
    return sorted(
        (experiment.name, runs_page(experiment.experiment_id, base))
        for experiment in experiments
        if experiment.name != "Default"
    )
