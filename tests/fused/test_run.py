"""Fused training of a sweep's cells (normlab.fused.run, normlab.fused.plan): each cell of a fused group
is the run it would be alone (name, params, tags, metrics, fingerprint), float32 metrics within
0.005 of training alone, a diverging cell fails alone, and sweeps group cells as fuse= says."""

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from normlab.config.compose import compose
from normlab.fused import plan as fusion
from normlab.fused import run as fused_run
from normlab.fused.run import fit_group
from normlab.tracking.names import FUSED_WITH_TAG
from normlab.training.lifecycle import Interrupted
from normlab.training.solo import fit
from tests.helpers import cell_runs, run_sweep

SMALL = [
    "study=fused",
    "data.train_subset=1024",
    "data.test_subset=1000",
    "data.batch_size=8",
    "trainer.max_epochs=2",
    "trainer.accelerator=cpu",
    "eval.precise_samples=256",
    "optimizer.lr=0.05",
]
# Every fusable kind, with the options and seeds differing between cells. Ghost BN over virtual
# batches of 2-4 amplifies float32 rounding: alone, 1 vs 2 torch threads (another summation order)
# move its final metrics by 0.01-0.1 here (x - mean of 2 samples is +-their half-difference), so
# its metrics are not compared; float64 shows it fused equal to alone at rounding level (test_fused).
GHOST = ["norm=ghost", "seed=5", "norm.virtual_batch_size=4"]
CELLS = [["norm=none", "seed=0"], ["norm=scratch", "seed=1"], ["norm=native", "seed=2", "norm.momentum=0.3"],
         ["norm=group", "seed=3", "optimizer.lr=0.1"], ["norm=layer", "seed=4"], GHOST,
         ["norm=scratch", "seed=6"]]  # fmt: skip
FINAL = ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_precise", "val/acc_batchstats")
# Tags that say when or in which process a run was recorded, not what it is.
PROCESS_TAGS = {
    *("pid", "pid_started", "mlflow.source.name", "mlflow.user", "mlflow.source.type"),
    "mlflow.source.git.commit",
}


def _cells(cells: list[list[str]], tmp_path: Path, store: str) -> list[tuple]:
    overrides = [[*SMALL, *cell, f"tracking.uri=sqlite:///{tmp_path / store}.db",
                  f"checkpoint_dir={tmp_path / store}"] for cell in cells]  # fmt: skip
    return [compose(o) for o in overrides], overrides


def _values(client: MlflowClient, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Every value of every metric of the run (system metrics aside), by step."""
    keys = [k for k in client.get_run(run_id).data.metrics if not k.startswith("system/")]
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key)) for key in keys}


def _history(client: MlflowClient, run_id: str) -> dict[str, list[int]]:
    keys = [k for k in client.get_run(run_id).data.metrics if not k.startswith("system/")]
    return {key: sorted(m.step for m in client.get_metric_history(run_id, key)) for key in keys}


@pytest.mark.slow
def test_each_fused_cell_is_the_run_it_would_be_alone(tmp_path: Path) -> None:
    fused = fit_group(*_cells(CELLS, tmp_path, "fused"))
    alone = [fit(cfg, overrides) for cfg, overrides in zip(*_cells(CELLS, tmp_path, "alone"), strict=True)]
    assert [r.status for r in fused] == ["new"] * len(CELLS)
    fused_client = MlflowClient(f"sqlite:///{tmp_path}/fused.db")
    alone_client = MlflowClient(f"sqlite:///{tmp_path}/alone.db")
    for result, solo, cell in zip(fused, alone, CELLS, strict=True):
        assert result.outcome is not None
        ours, theirs = fused_client.get_run(result.outcome.run_id), alone_client.get_run(solo.run_id)
        assert ours.info.run_name == theirs.info.run_name == result.name
        assert ours.info.status == theirs.info.status == "FINISHED"
        params = {k: v for k, v in ours.data.params.items() if k not in ("tracking.uri", "checkpoint_dir")}
        assert params == {k: v for k, v in theirs.data.params.items() if k in params}
        assert ours.data.params.keys() == theirs.data.params.keys()
        assert ours.data.tags[FUSED_WITH_TAG].startswith(f"{len(CELLS)} cells: ")
        tags = {k: v for k, v in ours.data.tags.items() if k not in PROCESS_TAGS | {FUSED_WITH_TAG}}
        assert tags == {k: v for k, v in theirs.data.tags.items() if k not in PROCESS_TAGS}
        assert _history(fused_client, ours.info.run_id) == _history(alone_client, theirs.info.run_id)
        for key in FINAL:  # float32, summed in another order: equal to rounding, which training amplifies
            if key in solo.metrics:
                if cell is not GHOST:
                    assert abs(result.outcome.metrics[key] - solo.metrics[key]) <= 0.005, (result.name, key)
                assert ours.data.metrics[key] == result.outcome.metrics[key]


@pytest.mark.slow
def test_a_diverging_cell_fails_alone_and_the_group_trains_on(tmp_path: Path) -> None:
    """One cell's loss turns NaN (lr inf in float32), another's stays finite but far above twice
    guessing's (``rules.divergence``): each fails alone, in its epoch; the third trains on as alone."""
    cells = [["norm=none", "seed=0", "optimizer.lr=1e39"], ["norm=scratch", "seed=1"],
             ["norm=none", "seed=2", "optimizer.lr=30"]]  # fmt: skip
    results = fit_group(*_cells(cells, tmp_path, "fused"))
    solo = fit(*[part[1] for part in _cells(cells, tmp_path, "alone")])
    assert results[0].status == "failed" and "diverged at epoch 1 (train loss nan)" in results[0].reason
    assert results[2].status == "failed" and "diverged at epoch 2 (training loss" in results[2].reason
    assert results[1].status == "new" and results[1].outcome is not None
    for key in FINAL:
        assert abs(results[1].outcome.metrics[key] - solo.metrics[key]) <= 0.005, key
    client = MlflowClient(f"sqlite:///{tmp_path}/fused.db")
    failed = {r.info.run_name: r for r in cell_runs(f"sqlite:///{tmp_path}/fused.db", "fused")
              if r.info.status == "FAILED"}  # fmt: skip
    assert failed.keys() == {results[0].name, results[2].name}
    nan, finite = failed[results[0].name], failed[results[2].name]
    assert nan.data.tags["failure"].startswith("Diverged: diverged at epoch 1")
    assert finite.data.tags["failure"].startswith("Diverged: diverged at epoch 2 (training loss")
    assert client.get_metric_history(nan.info.run_id, "val/acc") == []  # its NaN epoch is not logged
    assert [m.step for m in client.get_metric_history(finite.info.run_id, "val/acc")] == [1]


def test_fuse_auto_groups_small_batches_by_everything_but_seed_lr_and_norm() -> None:
    def cell(*overrides: str) -> object:
        return compose(["trainer.accelerator=cpu", *overrides])

    cfgs = [
        cell("norm=none", "data.batch_size=8", "seed=0"),
        cell("norm=group", "data.batch_size=8", "seed=1", "optimizer.lr=0.3"),
        cell("norm=none", "data.batch_size=8", "seed=2", "trainer.max_epochs=3"),  # another budget
        cell("norm=batch_renorm", "data.batch_size=8"),  # not a fusable kind
        cell("norm=scratch", "data.batch_size=256", "seed=0"),  # auto: batch 256 pays on no CPU
        cell("norm=scratch", "data.batch_size=256", "seed=1"),
        cell("norm=scratch", "data.batch_size=8", "seed=3", "optimizer.momentum=0.9"),  # not plain SGD
        cell("norm=scratch", "data.batch_size=8", "seed=4", "label=x", "report.grid=y"),  # presentation only
    ]
    groups = fusion.plan_groups(cfgs)
    assert groups[0] == [1, 0, 7]  # sorted by norm setting: norms of one setting stack
    assert sorted(groups[1:]) == [[2], [3], [4], [5], [6]]
    fused = [cell("norm=scratch", "data.batch_size=256", f"seed={s}", "fuse=true") for s in range(3)]
    assert fusion.plan_groups(fused) == [[0, 1, 2]]
    never = [cell("norm=none", "data.batch_size=8", f"seed={s}", "fuse=false") for s in range(2)]
    assert fusion.plan_groups(never) == [[0], [1]]
    many = [cell("norm=none", "data.batch_size=8", f"seed={s}") for s in range(20)]
    assert sorted(len(group) for group in fusion.plan_groups(many, max_cells=16)) == [10, 10]


@pytest.mark.slow
def test_a_sweep_runs_each_fused_group_as_one_job(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # An interpolation in a cell's config (as norm_batch's GN protocol has) resolves within the cell.
    alone = 2 * fusion.AUTO_MAX_BATCH["cpu"]  # a batch size fuse=auto trains alone on CPU
    arguments = [*SMALL, "study=fused_sweep", "norm=none,scratch", "seed=0,1", f"data.batch_size=8,{alone}",
                 "eval.precise_samples=${data.batch_size}", "hydra.launcher.cpu_jobs=2",
                 f"checkpoint_dir={tmp_path / 'checkpoints'}"]  # fmt: skip
    sweep = run_sweep(arguments, store, tmp_path)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    assert "8 cells as 5 jobs (1 fused groups)" in sweep.stderr + sweep.stdout
    assert "[sweep] 8 cells: 8 trained" in sweep.stdout
    runs = cell_runs(store, "fused_sweep")
    assert len(runs) == 8 and {r.info.status for r in runs} == {"FINISHED"}
    fused = sorted(r.info.run_name for r in runs if FUSED_WITH_TAG in r.data.tags)
    assert fused == [
        "none-bs8-lr0.05-s0",
        "none-bs8-lr0.05-s1",
        "scratch-bs8-m0.1-lr0.05-s0",
        "scratch-bs8-m0.1-lr0.05-s1",
    ]
    again = run_sweep(arguments, store, tmp_path)  # every cell finished: skipped, fused or not
    assert "[sweep] 8 cells: 0 trained, 0 resumed, 8 skipped" in again.stdout, again.stdout[-2000:]


class _Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so the group records its cells KILLED, not FAILED."""


@pytest.mark.slow
@pytest.mark.parametrize(("killed_at", "cut_short"), [(1, False), (2, False), (2, True)])
def test_a_group_killed_while_writing_its_checkpoints_resumes_as_if_uninterrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, killed_at: int, cut_short: bool
) -> None:
    """Killed after one cell's checkpoint of epoch ``killed_at`` and before the other's (one cell
    resumable and one new, or both resumable an epoch apart), the rerun trains both cells as one
    group again and ends with the metrics of an uninterrupted group, bitwise, each epoch of each
    metric recorded once (the epoch the group replays is not logged again). ``cut_short``: the
    newest checkpoint cannot be read (a disk that filled up): it is set aside and its cell resumes
    from the one before, the other cell is not held back."""
    cells = [
        [*cell, "trainer.max_epochs=3"] for cell in (["norm=scratch", "seed=1"], ["norm=native", "seed=2"])
    ]
    expected = fit_group(*_cells(cells, tmp_path, "uninterrupted"))
    written = fused_run.save_checkpoint

    def save_then_die(member: fused_run.Member, state: dict, epochs: int, steps: int) -> None:
        written(member, state, epochs, steps)
        if epochs == killed_at:  # the epoch's first checkpoint
            raise _Killed

    with monkeypatch.context() as patched:
        patched.setattr(fused_run, "save_checkpoint", save_then_die)
        with pytest.raises(Interrupted):
            fit_group(*_cells(cells, tmp_path, "killed"))
    if cut_short:
        (newest,) = [
            path
            for path in (tmp_path / "killed").glob("*/fused.ckpt")
            if path.with_suffix(".previous").exists()
        ]
        newest.write_bytes(newest.read_bytes()[:1000])
    resumed = fit_group(*_cells(cells, tmp_path, "killed"))
    if cut_short:
        assert (tmp_path / "killed" / "unreadable" / f"{newest.parent.name}-fused.ckpt").exists()
    assert sorted(r.status for r in resumed) == ["new" if killed_at == 1 else "resume", "resume"]
    killed_client = MlflowClient(f"sqlite:///{tmp_path}/killed.db")
    uninterrupted_client = MlflowClient(f"sqlite:///{tmp_path}/uninterrupted.db")
    for ours, theirs in zip(resumed, expected, strict=True):
        assert ours.outcome is not None and theirs.outcome is not None
        for key in FINAL:
            assert ours.outcome.metrics[key] == theirs.outcome.metrics[key], (ours.name, key)
        recorded = _values(killed_client, ours.outcome.run_id)
        for key, values in recorded.items():
            steps = [step for step, _ in values]
            assert len(steps) == len(set(steps)), (ours.name, key, steps)  # one value per epoch
        speed = ("time/", "perf/")  # seconds differ between any two runs
        wanted = _values(uninterrupted_client, theirs.outcome.run_id)
        assert {k: v for k, v in recorded.items() if not k.startswith(speed)} == {
            k: v for k, v in wanted.items() if not k.startswith(speed)
        }
