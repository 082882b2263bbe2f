"""The cell lifecycle: each epoch's metrics reach MLflow exactly once, whatever the moment of a kill."""

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from normlab.config import compose
from normlab.tracking import checkpoints, store
from normlab.tracking.store import StoreLost
from normlab.training.lifecycle import Interrupted
from normlab.training.solo import fit
from tests.helpers import QUICK

SPEED = ("time/", "perf/", "system/")  # seconds and machine load differ between any two runs


def _values(store: str, run_id: str) -> dict[str, list[tuple[int, float]]]:
    client = MlflowClient(store)
    keys = [k for k in client.get_run(run_id).data.metrics if not k.startswith(SPEED)]
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key)) for key in keys}


@pytest.mark.slow
def test_a_solo_run_killed_between_an_epochs_metrics_and_its_checkpoint_records_that_epoch_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def cell(name: str) -> list[str]:
        store = f"tracking.uri=sqlite:///{tmp_path / name}.db"
        return [*QUICK, "norm=scratch", "trainer.max_epochs=3", store, f"checkpoint_dir={tmp_path / name}"]

    expected = fit(compose(cell("uninterrupted")), [])
    write, calls = checkpoints.write, []

    def killed_before_the_second_checkpoint(*args: object, **kwargs: object) -> None:
        calls.append(args)
        if len(calls) == 2:  # epoch 2's metrics are in MLflow, its checkpoint not yet written
            raise KeyboardInterrupt
        write(*args, **kwargs)  # type: ignore[arg-type]

    with monkeypatch.context() as patched:
        patched.setattr(checkpoints, "write", killed_before_the_second_checkpoint)
        for name in ("killed", "cut_short"):
            calls.clear()
            with pytest.raises(Interrupted):
                fit(compose(cell(name)), [])
    resumed = fit(compose(cell("killed")), [])
    assert resumed.action == "resume"
    recorded = _values(f"sqlite:///{tmp_path}/killed.db", resumed.run_id)
    assert recorded == _values(f"sqlite:///{tmp_path}/uninterrupted.db", expected.run_id)
    for key in ("train/loss", "train/acc", "val/loss", "val/acc", "lr"):
        assert [step for step, _ in recorded[key]] == [1, 2, 3], key

    # Its checkpoint cut short (a disk that filled up): set aside, and the cell trains anew, to the
    # same numbers; the killed run stays KILLED, nothing is left RUNNING.
    (cut,) = (tmp_path / "cut_short").glob("*/last.ckpt")
    cut.write_bytes(cut.read_bytes()[:1000])
    anew = fit(compose(cell("cut_short")), [])
    assert anew.action == "new"
    assert {k: v for k, v in anew.metrics.items() if not k.startswith(SPEED)} == {
        k: v for k, v in expected.metrics.items() if not k.startswith(SPEED)
    }
    assert (tmp_path / "cut_short" / "unreadable" / f"{cut.parent.name}-last.ckpt").exists()
    client = MlflowClient(f"sqlite:///{tmp_path}/cut_short.db")
    runs = client.search_runs([client.get_experiment_by_name("adhoc").experiment_id])
    assert sorted(run.info.status for run in runs) == ["FINISHED", "KILLED"]


def test_a_store_gone_after_the_last_epoch_keeps_the_checkpoint_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's end cannot be written (the store went away after the last epoch): StoreLost in
    one sentence, the run left RUNNING for the next run to close, its checkpoint kept."""
    uri = f"sqlite:///{tmp_path}/gone.db"

    def gone(*args: object) -> None:
        raise RuntimeError("(sqlite3.OperationalError) unable to open database file")

    monkeypatch.setattr(store, "end_run", gone)
    with pytest.raises(StoreLost) as lost:
        fit(compose([*QUICK, f"tracking.uri={uri}", f"checkpoint_dir={tmp_path / 'ck'}"]), [])
    assert str(lost.value).startswith(f"cannot write to {uri} ((sqlite3.OperationalError) unable to open")
    assert "left RUNNING: the next run of the cell closes it" in str(lost.value)
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("adhoc").experiment_id])
    assert run.info.status == "RUNNING"
    assert list((tmp_path / "ck").glob("*/last.ckpt"))
