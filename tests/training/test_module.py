"""The Lightning module's training path: several SGD batches per call are exactly single calls."""

import math
from functools import partial

import pytest
import pytorch_lightning as pl
import torch

from normlab.config.budgets import LrSchedule
from normlab.config.rules import divergence
from normlab.data.batches import IndexBatches, SGDCalls
from normlab.data.fashion_mnist import Split
from normlab.layers.registry import norm_factory
from normlab.models import LeNet
from normlab.training.inputs import QUIET_TRAINER
from normlab.training.module import Classifier, Diverged


def _train(per_call: int, batch_size: int = 8, warmup_steps: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    split = Split(
        torch.rand(101, 1, 28, 28, generator=generator), torch.randint(0, 10, (101,), generator=generator)
    )
    torch.manual_seed(0)
    module = Classifier(
        LeNet(norm_factory("scratch")),
        partial(torch.optim.SGD, lr=0.5),
        schedule=LrSchedule("constant", warmup_steps=warmup_steps, total_steps=0),
    )
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, **QUIET_TRAINER)
    batches = IndexBatches(split, batch_size, shuffle=True, seed=0, drop_single_tail=True)
    trainer.fit(
        module,
        train_dataloaders=SGDCalls(batches, per_call),
        val_dataloaders=IndexBatches(split, 50, shuffle=False),
    )
    metrics = {
        key: torch.as_tensor(trainer.callback_metrics[key]) for key in ("train/loss", "train/acc", "val/acc")
    }
    metrics["lr"] = torch.as_tensor(trainer.optimizers[0].param_groups[0]["lr"])
    return {**module.net.state_dict(), **metrics}


def test_several_batches_per_call_equal_single_calls() -> None:
    single, grouped = _train(per_call=1), _train(per_call=5)
    assert single.keys() == grouped.keys() and "train/loss" in single
    for key in single:
        torch.testing.assert_close(grouped[key], single[key], rtol=0, atol=0, msg=key)


def test_warm_up_ramps_the_lr_step_by_step() -> None:
    """2 epochs of 13 steps at batch 8 (100 samples, a single tail dropped): after 26 steps of a
    30-step ramp the lr is 0.5 * 27 / 30; a ramp shorter than training ends at the full lr, and
    several batches per call still equal single calls."""
    assert _train(per_call=1, warmup_steps=30)["lr"].item() == pytest.approx(0.5 * 27 / 30)
    assert _train(per_call=1, warmup_steps=10)["lr"].item() == pytest.approx(0.5)
    single, grouped = _train(per_call=1, warmup_steps=30), _train(per_call=4, warmup_steps=30)
    for key in single:
        torch.testing.assert_close(grouped[key], single[key], rtol=0, atol=0, msg=key)


def test_mixed_precision_is_refused() -> None:
    module = Classifier(LeNet(norm_factory("none")), partial(torch.optim.SGD, lr=0.1))
    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", precision="bf16-mixed", logger=False, **QUIET_TRAINER
    )
    split = Split(torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,)))
    with pytest.raises(ValueError, match="float32 on one device"):
        trainer.fit(module, train_dataloaders=SGDCalls(IndexBatches(split, 4, shuffle=False), 1))


class _NaNWhenEvaluated(torch.nn.Module):
    """Trains like LeNet, but evaluates to NaN: a validation loss that is not finite."""

    def __init__(self) -> None:
        super().__init__()
        self.net = LeNet(norm_factory("none"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        return logits if self.training else logits * float("nan")


def _fit_on_random_images(net: torch.nn.Module, lr: float, images: int) -> None:
    """Two epochs of batch 8 over random images (training and validation alike)."""
    module = Classifier(net, partial(torch.optim.SGD, lr=lr))
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, **QUIET_TRAINER)
    split = Split(torch.rand(images, 1, 28, 28), torch.randint(0, 10, (images,)))
    trainer.fit(
        module,
        train_dataloaders=SGDCalls(IndexBatches(split, 8, shuffle=False), 1),
        val_dataloaders=IndexBatches(split, 8, shuffle=False),
    )


def test_a_nan_validation_loss_is_a_divergence() -> None:
    with pytest.raises(Diverged, match=r"diverged at epoch 1 \(val loss nan\)"):
        _fit_on_random_images(_NaNWhenEvaluated(), lr=0.1, images=16)


def test_divergence_is_one_rule_non_finite_or_above_twice_guessing_from_epoch_two() -> None:
    assert divergence({"train/loss": math.nan, "val/loss": 0.5}, 1) == "diverged at epoch 1 (train loss nan)"
    assert divergence({"train/loss": 0.5, "val/loss": math.inf}, 3) == "diverged at epoch 3 (val loss inf)"
    # The first epoch's average includes the start, where a large lr spikes and recovers.
    assert divergence({"train/loss": 1.8e5, "val/loss": 0.5}, 1) is None
    assert divergence({"train/loss": 1.8e5}, 2) == (
        "diverged at epoch 2 (training loss 1.8e+05 > 2 ln 10 = 4.61, twice guessing's)"
    )
    assert divergence({"train/loss": 2 * math.log(10)}, 5) is None  # at the bound: not above it
    assert divergence({"train/loss": 0.3, "val/loss": 9.0}, 5) is None  # a bad test loss is not divergence
