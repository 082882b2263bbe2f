"""The lr schedules and the ladder of budgets in steps (normlab.config.budgets), and what a cell's
config may ask of them (normlab.config.cell.read_schedule)."""

import math

import pytest

from normlab.config.budgets import LrSchedule, ladder
from normlab.config.cell import read_cell
from normlab.config.rules import ConfigError


def test_wsd_ramps_holds_then_decays_along_one_minus_sqrt() -> None:
    schedule = LrSchedule("wsd", warmup_steps=10, total_steps=100, cooldown=0.2)
    assert schedule.decay_start == 80
    assert [schedule.factor(s) for s in (0, 9)] == [0.1, 1.0]
    assert all(schedule.factor(s) == 1.0 for s in range(10, 81))
    assert schedule.factor(85) == pytest.approx(1 - math.sqrt(5 / 20))
    assert 0 < schedule.factor(99) < schedule.factor(98) < 1.0
    # a shorter budget decays from the same constant lr: the same factors until its own decay
    short = schedule.for_budget(50)
    assert short.decay_start == 40 and all(short.factor(s) == schedule.factor(s) for s in range(40))


def test_cosine_is_the_half_cosine_after_the_warm_up() -> None:
    schedule = LrSchedule("cosine", warmup_steps=4, total_steps=24)
    assert schedule.factor(4) == 1.0 and schedule.factor(14) == pytest.approx(0.5)
    assert LrSchedule("constant", 0, 0).factor(10**6) == 1.0


def test_the_ladder_forks_each_budget_where_its_decay_starts() -> None:
    budgets = ladder(LrSchedule("wsd", 0, 400), (1, 2, 4), steps_per_epoch=100, samples_per_epoch=6400)
    assert [(b.epochs, b.steps, b.fork_step, b.samples) for b in budgets] == [
        (1, 100, 80, 6400), (2, 200, 160, 12800), (4, 400, 320, 25600)
    ]  # fmt: skip


def _cell(compose_config, *overrides: str):
    return read_cell(compose_config(["tracking.uri=sqlite:////tmp/unused.db", *overrides]))


def test_min_steps_raises_the_epochs_to_whole_budgets(compose_config) -> None:
    """Batch 256 on 60k images: 235 steps an epoch; 2000 steps need 9 epochs, made 12 so that a
    quarter and a half are whole epochs."""
    spec = _cell(compose_config, "data.batch_size=256", "lr_schedule=wsd", "budget.ladder=[0.25,0.5,1.0]",
                 "budget.min_steps=2000", "trainer.max_epochs=4")  # fmt: skip
    assert spec.data.steps_per_epoch == 235
    assert spec.schedule.epochs == 12 and spec.schedule.ladder == (3, 6, 12)
    assert [b.steps for b in spec.schedule.budgets(spec.data)] == [705, 1410, 2820]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["budget.ladder=[0.5,1.0]"], "needs lr_schedule=wsd"),
        (["lr_schedule=wsd", "budget.ladder=[0.5,1.0]", "trainer.max_epochs=2", "warmup_samples=60000"],
         "inside the warm-up"),
        (["lr_schedule=wsd", "budget.ladder=[0.5,1.0]", "trainer.max_epochs=2", "data.train_subset=256"],
         "before any step"),  # one step an epoch: the smallest budget's decay is its only step
        (["lr_schedule=wsd", "budget.ladder=[0,1.0]"], "budget.ladder"),
        (["lr_schedule=wsd", "budget.cooldown=1.5"], "budget.cooldown"),
        (["budget.min_steps=-1"], "budget.min_steps"),
        (["lr_schedule=linear"], "lr_schedule"),
    ],
)  # fmt: skip
def test_budgets_a_cell_cannot_train_are_refused_in_one_sentence(compose_config, overrides, message) -> None:
    with pytest.raises(ConfigError, match=message):
        _cell(compose_config, *overrides)
