"""The pool launcher: slot planning, and a real sweep over fake GPUs that never overbooks one."""

import itertools
from pathlib import Path

import pytest

from hydra_plugins.normlab_pool.pool_launcher import plan_slots, visible_gpus
from tests.helpers import cell_runs, run_sweep


def test_gpu_slots_are_a_pool_of_jobs_per_gpu() -> None:
    slots = plan_slots(["0", "1", "2"], jobs_per_gpu=2, cores=12)
    assert sorted(s.gpu for s in slots) == ["0", "0", "1", "1", "2", "2"]
    assert {s.threads for s in slots} == {2}  # 6 jobs x 2 threads = 12 cores
    # Round-robin order, so a sweep shorter than the pool still spreads over every GPU first.
    assert [s.gpu for s in slots[:3]] == ["0", "1", "2"]


@pytest.mark.parametrize(
    ("cores", "cpu_jobs", "threads", "expected"),
    [(2, None, None, [(None, 1)] * 2), (2, 1, None, [(None, 2)]), (16, None, 4, [(None, 4)] * 4)],
)
def test_cpu_slots_never_oversubscribe_cores(cores, cpu_jobs, threads, expected) -> None:
    slots = plan_slots([], jobs_per_gpu=4, cores=cores, cpu_jobs=cpu_jobs, threads=threads)
    # compared as tuples: Hydra's plugin scan may import the module a second time (another Slot class)
    assert [(s.gpu, s.threads) for s in slots] == expected
    assert len(slots) * slots[0].threads <= cores


def test_visible_gpus_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,2")
    assert visible_gpus() == ["0", "2"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert visible_gpus() == []


@pytest.mark.slow
def test_sweep_over_two_fake_gpus_pins_each_run_and_never_overbooks(tmp_path: Path) -> None:
    """CUDA_VISIBLE_DEVICES=0,1 on a CPU machine: two slots pinned to "0" and "1" (training falls back
    to the CPU); 4 cells; runs on the same GPU must not overlap in time (jobs_per_gpu=1)."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    arguments = [
        "hydra/launcher=pool",
        "hydra.launcher.jobs_per_gpu=1",
        "study=pool_test",
        "norm=none,scratch",
        "seed=0,1",
        "data.train_subset=256",
        "data.test_subset=1000",
        "trainer.max_epochs=1",
        "trainer.accelerator=cpu",
        "eval.precise_samples=128",
    ]
    result = run_sweep(arguments, store, tmp_path, CUDA_VISIBLE_DEVICES="0,1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[sweep] 4/4 done (0 failed)" in result.stdout + result.stderr

    runs = cell_runs(store, "pool_test")
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    by_gpu: dict[str, list] = {}
    for run in runs:
        by_gpu.setdefault(run.data.tags["cuda_visible_devices"], []).append(run.info)
    assert set(by_gpu) == {"0", "1"}
    for infos in by_gpu.values():
        infos.sort(key=lambda info: info.start_time)
        for earlier, later in itertools.pairwise(infos):
            assert earlier.end_time <= later.start_time  # one cell at a time per GPU
