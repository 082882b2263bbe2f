"""launcher=slurm and launcher=submitit_local: hydra-submitit-launcher, configured from conf/launcher/."""

from pathlib import Path

import pytest

from normlab.config.compose import compose
from tests.helpers import cell_runs, run_sweep


def _launcher(overrides: list[str]) -> dict:
    return dict(compose(overrides, hydra_config=True).hydra.launcher)


def test_slurm_launcher_takes_its_settings_from_config() -> None:
    launcher = _launcher(["launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=30"])
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert launcher["partition"] == "gpu" and launcher["timeout_min"] == 30
    assert launcher["gpus_per_node"] == 1 and launcher["array_parallelism"] == 64


def test_default_launcher_is_the_pool() -> None:
    assert _launcher([])["_target_"].endswith("PoolLauncher")
    assert _launcher(["launcher=submitit_local"])["_target_"].endswith("submitit_launcher.LocalLauncher")


@pytest.mark.slow
@pytest.mark.parametrize("fuse", ["false", "true"], ids=["alone", "fused"])
def test_submitit_local_sweep_records_every_cell(tmp_path: Path, fuse: str) -> None:
    """Two cells through submitit's local executor (the SLURM code path without a cluster); the store
    is created once by the PrepareStore callback before the jobs start. Fused, both cells are one
    job (one SLURM job per group)."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    arguments = [
        "launcher=submitit_local",
        "study=submitit_test",
        "norm=none,native",
        "data.train_subset=256",
        "data.test_subset=1000",
        "trainer.max_epochs=1",
        "trainer.accelerator=cpu",
        "eval.precise_samples=128",
        f"fuse={fuse}",
    ]
    result = run_sweep(arguments, store, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = cell_runs(store, "submitit_test")
    assert sorted(r.data.tags["norm"] for r in runs) == ["native", "none"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    jobs = list((tmp_path / "multirun" / ".submitit").glob("*/*_result.pkl"))  # submitit ran them
    assert len(jobs) == (1 if fuse == "true" else 2)
    assert all(("fused_with" in r.data.tags) == (fuse == "true") for r in runs)
