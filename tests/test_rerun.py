"""``make rerun RUN_ID=<id>``: the recorded config trained again reproduces the run's final metrics."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from normlab.config.paths import PROJECT_ROOT
from normlab.training.solo import fit
from tests.helpers import QUICK


def _rerun(arguments: list[str], store: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "MLFLOW_TRACKING_URI": store}
    return subprocess.run(arguments, cwd=PROJECT_ROOT, env=environment, capture_output=True, text=True)


@pytest.mark.slow
def test_rerun_reproduces_the_final_metrics_on_cpu(compose_config, store: str, tmp_path: Path) -> None:
    overrides = [*QUICK, "norm=scratch", "seed=5", "eval.precise_samples=256"]
    original = fit(compose_config([*overrides, f"tracking.uri={store}"]), overrides)
    # Recorded as a run before the subpackages would have it: the norm built by normlab.norms.
    client = MlflowClient(store)
    config = Path(client.download_artifacts(original.run_id, "config.yaml", str(tmp_path))).read_text()
    assert "_target_: normlab.layers.norm_factory" in config
    old = config.replace("normlab.layers.norm_factory", "normlab.norms.norm_factory")
    client.log_text(original.run_id, old, "config.yaml")

    result = _rerun(["make", "-s", "rerun", f"RUN_ID={original.run_id}"], store)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reproduced exactly" in result.stdout

    experiment = client.get_experiment_by_name("adhoc").experiment_id
    (again,) = client.search_runs([experiment], filter_string=f"tags.rerun_of = '{original.run_id}'")
    assert again.info.run_id != original.run_id and again.info.status == "FINISHED"
    first = client.get_run(original.run_id).data
    results = [key for key in first.metrics if key.startswith(("train/", "val/"))]
    assert {"train/loss", "val/acc", "val/acc_precise"} <= set(results)
    assert {key: again.data.metrics[key] for key in results} == {key: first.metrics[key] for key in results}
    assert again.data.tags["config_fingerprint"] == first.tags["config_fingerprint"]
    recorded = Path(client.download_artifacts(again.info.run_id, "overrides.txt", str(tmp_path))).read_text()
    assert recorded.split() == overrides  # the original's overrides, logged again


def test_rerun_refuses_unknown_runs_and_sweep_parents(store: str) -> None:
    client = MlflowClient(store)
    experiment = client.create_experiment("some_study")
    parent = client.create_run(experiment, tags={"kind": "sweep"}).info.run_id
    for run_id, message in [("nope", "error: no run 'nope'"), (parent, "is a sweep's parent run")]:
        result = _rerun([sys.executable, "-m", "normlab.rerun", run_id], store)
        assert result.returncode == 2 and message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    missing = _rerun(["make", "-s", "rerun"], store)
    assert missing.returncode != 0 and "usage: make rerun RUN_ID=<run id>" in missing.stdout
