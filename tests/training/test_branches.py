"""Budgets from one run (lr_schedule=wsd, budget.ladder): a branch at budget b is a run whose largest
budget is b (weights, buffers, metrics), solo and fused; a run killed mid-branch or mid-trunk ends
with every budget's metrics once, equal to an uninterrupted run."""

from functools import partial
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from mlflow.tracking import MlflowClient

from normlab.config.budgets import LrSchedule, ladder
from normlab.config.compose import compose
from normlab.data.batches import IndexBatches, SGDCalls
from normlab.data.fashion_mnist import Split
from normlab.fused import run as fused_run
from normlab.fused.run import fit_group
from normlab.layers.registry import norm_factory
from normlab.models import LeNet
from normlab.tracking.names import BUDGET_PREFIX
from normlab.training import solo
from normlab.training.branches import Forks, solo_branch
from normlab.training.inputs import QUIET_TRAINER
from normlab.training.lifecycle import Interrupted
from normlab.training.module import Classifier

# 512 images at batch 32: 16 steps an epoch; budgets of 2 and 4 epochs (32 and 64 steps), the
# smaller one forked at step 26 (its decay: the last 6 steps), in the trunk's second epoch.
SMALL = [
    "study=budgets",
    "data.train_subset=512",
    "data.test_subset=1000",
    "data.batch_size=32",
    "trainer.accelerator=cpu",
    "eval.precise_samples=256",
    "optimizer.lr=0.3",
    "warmup_samples=256",
    "lr_schedule=wsd",
]
LADDER = ["trainer.max_epochs=4", "budget.ladder=[0.5,1.0]"]
SHORT = ["trainer.max_epochs=2"]
SPEED = ("time/", "perf/")  # seconds differ between any two runs


def _values(store: str, run_id: str) -> dict[str, list[tuple[int, float]]]:
    client = MlflowClient(store)
    keys = [k for k in client.get_run(run_id).data.metrics if not k.startswith(("system/", *SPEED))]
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key)) for key in keys}


def _budgets(values: dict[str, list[tuple[int, float]]], epochs: int) -> dict[str, float]:
    return {
        key: v
        for key, steps in values.items()
        if key.startswith(BUDGET_PREFIX)
        for s, v in steps
        if s == epochs
    }


def _overrides(tmp_path: Path, store: str, *extra: str) -> list[str]:
    return [
        *SMALL,
        *extra,
        f"tracking.uri=sqlite:///{tmp_path / store}.db",
        f"checkpoint_dir={tmp_path / store}",
    ]


def _store(tmp_path: Path, store: str) -> str:
    return f"sqlite:///{tmp_path / store}.db"


# --- the branch itself: weights, buffers, optimizer state --------------------------------------


def _split() -> Split:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(160, 1, 28, 28, generator=generator, dtype=torch.float64)
    return Split(images, torch.randint(0, 10, (160,), generator=generator))


def _classifier(schedule: LrSchedule) -> Classifier:
    torch.manual_seed(0)
    net = LeNet(norm_factory("scratch", momentum=0.3)).double()
    return Classifier(net, partial(torch.optim.SGD, lr=0.2, momentum=0.9), schedule=schedule)


def _fit(module: Classifier, epochs: int, batches: IndexBatches) -> None:
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, **QUIET_TRAINER)
    trainer.fit(
        module, train_dataloaders=SGDCalls(batches, 3), val_dataloaders=IndexBatches(batches.split, 80, False)
    )


def test_a_branch_is_the_run_whose_largest_budget_it_is() -> None:
    """float64, SGD with momentum (its state copied), scratch BN (its running statistics): the
    branch at 2 of 4 epochs equals a 2-epoch run, weights and buffers, to 1e-10 (bitwise here)."""
    split = _split()
    batches = lambda: IndexBatches(split, 16, shuffle=True, seed=3, drop_single_tail=True)  # noqa: E731
    steps_per_epoch = len(batches())
    trunk_schedule = LrSchedule("wsd", warmup_steps=4, total_steps=4 * steps_per_epoch)
    small = ladder(trunk_schedule, (2, 4), steps_per_epoch, 160)[0]
    assert steps_per_epoch < small.fork_step < small.steps  # forked inside the trunk's second epoch

    trunk, trunk_batches, branched = _classifier(trunk_schedule), batches(), {}

    def branch(budget) -> None:
        rest = trunk_batches.steps(budget.fork_step, budget.steps - budget.fork_step)
        optimizer = trunk.trainer.optimizers[0]
        net = solo_branch(trunk.net, optimizer, trunk.optimizer_factory, budget, trunk_schedule, rest)
        branched.update(net.state_dict())

    trunk.after_step = Forks([small], lambda budget: False, branch)
    _fit(trunk, 4, trunk_batches)
    alone = _classifier(trunk_schedule.for_budget(small.steps))
    _fit(alone, 2, batches())
    expected = alone.net.state_dict()
    assert branched.keys() == expected.keys() and any("running_var" in key for key in expected)
    for key, value in expected.items():
        torch.testing.assert_close(branched[key], value, rtol=0, atol=1e-10, msg=key)
    moved = [key for key in expected if not torch.equal(trunk.net.state_dict()[key], value)]
    assert moved, "the trunk trained on past the fork"


# --- the platform: solo and fused cells, their recorded budgets, resume -------------------------


@pytest.mark.slow
def test_solo_and_fused_budgets_equal_runs_of_that_budget(tmp_path: Path) -> None:
    """Every budget/* metric a run with the ladder records at 2 of its 4 epochs equals, bitwise
    (float32, CPU), the one a 2-epoch run records at its end; solo and as a fused group of two."""
    ladder_run = solo.fit(compose(o := _overrides(tmp_path, "solo_ladder", *LADDER)), o)
    short_run = solo.fit(compose(o := _overrides(tmp_path, "solo_short", *SHORT)), o)
    ladder_values = _values(_store(tmp_path, "solo_ladder"), ladder_run.run_id)
    short_values = _values(_store(tmp_path, "solo_short"), short_run.run_id)
    at_two = _budgets(ladder_values, 2)
    assert {
        "budget/val/acc",
        "budget/val/acc_precise",
        "budget/val/acc_batchstats",
        "budget/steps",
    } <= at_two.keys()
    assert at_two == _budgets(short_values, 2)
    assert at_two["budget/steps"] == 32 and _budgets(ladder_values, 4)["budget/steps"] == 64
    # the trunk's last epoch, logged through Lightning in float32, is its own budget's result
    assert ladder_values["val/acc"][-1][1] == pytest.approx(
        _budgets(ladder_values, 4)["budget/val/acc"], abs=1e-6
    )

    cells = (["norm=scratch", "seed=1"], ["norm=group", "seed=2"])
    groups = {}
    for name, extra in (("fused_ladder", LADDER), ("fused_short", SHORT)):
        overrides = [_overrides(tmp_path, name, *extra, *cell) for cell in cells]
        groups[name] = fit_group([compose(o) for o in overrides], overrides)
    for ours, theirs in zip(groups["fused_ladder"], groups["fused_short"], strict=True):
        assert ours.outcome is not None and theirs.outcome is not None
        mine = _budgets(_values(_store(tmp_path, "fused_ladder"), ours.outcome.run_id), 2)
        assert "budget/val/acc" in mine
        assert mine == _budgets(_values(_store(tmp_path, "fused_short"), theirs.outcome.run_id), 2), ours.name


class _Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so the run is recorded KILLED, not FAILED."""


def _once(function, after: bool = False):
    """``function`` that dies (``_Killed``) the first time it is called: before it runs, or after."""
    calls = []

    def dying(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1 and not after:
            raise _Killed
        result = function(*args, **kwargs)
        if len(calls) == 1:
            raise _Killed
        return result

    return dying


@pytest.mark.slow
@pytest.mark.parametrize("where", ["mid-branch", "mid-trunk after the branch", "fused mid-branch"])
def test_a_run_killed_mid_branch_or_mid_trunk_ends_as_uninterrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Killed inside the branch (nothing of its budget recorded) or right after the branch recorded
    its budget (before the epoch's checkpoint: the resumed trunk replays the fork and must not
    branch again), the rerun ends with every metric of every budget once, equal to an
    uninterrupted run."""
    fused = where.startswith("fused")
    cells = (["norm=scratch", "seed=1"], ["norm=none", "seed=2"]) if fused else (["norm=scratch", "seed=1"],)

    def train(store: str) -> list[str]:
        overrides = [_overrides(tmp_path, store, *LADDER, *cell) for cell in cells]
        if fused:
            results = fit_group([compose(o) for o in overrides], overrides)
            return [r.outcome.run_id for r in results if r.outcome is not None]
        return [solo.fit(compose(overrides[0]), overrides[0]).run_id]

    expected = train("uninterrupted")
    with monkeypatch.context() as patched:
        if fused:
            patched.setattr(fused_run, "fused_branch", _once(fused_run.fused_branch))
        elif where == "mid-branch":
            patched.setattr(solo, "solo_branch", _once(solo.solo_branch))
        else:
            patched.setattr(solo, "record_budget", _once(solo.record_budget, after=True))
        with pytest.raises(Interrupted):
            train("killed")
    resumed = train("killed")
    assert len(resumed) == len(expected) == len(cells)
    for ours, theirs in zip(resumed, expected, strict=True):
        recorded = _values(_store(tmp_path, "killed"), ours)
        for key, values in recorded.items():
            steps = [step for step, _ in values]
            assert len(steps) == len(set(steps)), (key, steps)  # once per epoch and budget
        assert {2, 4} <= {step for step, _ in recorded["budget/val/acc"]}
        assert recorded == _values(_store(tmp_path, "uninterrupted"), theirs)
