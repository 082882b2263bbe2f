"""The value rules of a config: each key's allowed values, checked before anything is loaded or
recorded, and the lr a cell trains at."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from omegaconf import DictConfig, ListConfig, OmegaConf

from normlab.data.fashion_mnist import TEST_SIZE, TRAIN_SIZE
from normlab.layers.registry import NORMS
from normlab.models.lenet import NORM_IN, POSITIONS


class ConfigError(ValueError):
    """A config value out of its range; the message names the key, the value and what is allowed."""


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# key -> (what is allowed, test), for keys present in the config (a norm without running
# statistics has no momentum). Checked before anything is loaded or recorded.
RULES: dict[str, tuple[str, Callable[[object], bool]]] = {
    "data.batch_size": ("an integer >= 1", lambda v: _integer(v) and v >= 1),
    "data.eval_batch_size": ("an integer >= 1", lambda v: _integer(v) and v >= 1),
    "data.samples_per_call": ("an integer >= 1", lambda v: _integer(v) and v >= 1),
    "data.train_subset": (
        f"null or an integer in 1..{TRAIN_SIZE}",
        lambda v: v is None or (_integer(v) and 1 <= v <= TRAIN_SIZE),
    ),
    "data.test_subset": (
        f"null or an integer in 1..{TEST_SIZE}",
        lambda v: v is None or (_integer(v) and 1 <= v <= TEST_SIZE),
    ),
    "study": ("a name (text; quote a number: study=\"'123'\")", lambda v: isinstance(v, str) and v != ""),
    "optimizer.lr": ("a finite number > 0", lambda v: _number(v) and 0 < v < math.inf),
    "optimizer.momentum": (
        "a finite number >= 0 (SGD's; 0: none)",
        lambda v: _number(v) and 0 <= v < math.inf,
    ),
    "optimizer.weight_decay": ("a finite number >= 0", lambda v: _number(v) and 0 <= v < math.inf),
    "model.norm_position": (" or ".join(POSITIONS), lambda v: v in POSITIONS),
    "model.norm_in": (", ".join(NORM_IN[:-1]) + " or " + NORM_IN[-1], lambda v: v in NORM_IN),
    "model.bias_before_norm": ("true or false", lambda v: isinstance(v, bool)),
    "model.conv1_padding": ("an integer >= 0", lambda v: _integer(v) and v >= 0),
    "norm.momentum": (
        "null (cumulative average) or a number in [0, 1]",
        lambda v: v is None or (_number(v) and 0 <= v <= 1),
    ),
    "norm.eps": ("a number > 0", lambda v: _number(v) and v > 0),
    "norm.affine": ("true or false", lambda v: isinstance(v, bool)),
    "norm.num_groups": ("an integer >= 1", lambda v: _integer(v) and v >= 1),
    "norm.virtual_batch_size": ("null or an integer >= 1", lambda v: v is None or (_integer(v) and v >= 1)),
    "norm.r_max": ("a number >= 1 (1: no correction of the scale)", lambda v: _number(v) and v >= 1),
    "norm.d_max": ("a number >= 0 (0: no correction of the shift)", lambda v: _number(v) and v >= 0),
    "norm.hold_steps": ("an integer >= 0", lambda v: _integer(v) and v >= 0),
    "norm.warmup_steps": ("an integer >= 0", lambda v: _integer(v) and v >= 0),
    "norm.learned_eps": ("true or false", lambda v: isinstance(v, bool)),
    "norm.learned_eps_start": ("a number >= 0", lambda v: _number(v) and v >= 0),
    "model.weight_standardization": ("true or false", lambda v: isinstance(v, bool)),
    "trainer.max_epochs": ("an integer >= 1", lambda v: _integer(v) and v >= 1),
    "lr_scaling": ("constant or linear", lambda v: v in ("constant", "linear")),
    "lr_factor": ("a finite number > 0", lambda v: _number(v) and 0 < v < math.inf),
    "warmup_samples": ("an integer >= 0", lambda v: _integer(v) and v >= 0),
    "lr_schedule": ("constant, cosine or wsd", lambda v: v in ("constant", "cosine", "wsd")),
    "budget.ladder": (
        "a list of fractions in (0, 1] of the largest budget, e.g. [0.25, 0.5, 1.0]",
        lambda v: isinstance(v, ListConfig) and len(v) > 0 and all(_number(f) and 0 < f <= 1 for f in v),
    ),
    "budget.cooldown": (
        "a number in (0, 1): the decay's share of a budget",
        lambda v: _number(v) and 0 < v < 1,
    ),
    "budget.min_steps": ("an integer >= 0 (SGD steps)", lambda v: _integer(v) and v >= 0),
    "eval.precise_samples": ("an integer >= 1", lambda v: _integer(v) and v >= 1),
    # Seeds weights (torch takes < 2**32 via Lightning) and the SeedSequence of the data orders (>= 0).
    "seed": ("an integer in 0..4294967295", lambda v: _integer(v) and 0 <= v < 2**32),
    "force": ("true or false", lambda v: isinstance(v, bool)),
    "fuse": ("auto, true or false", lambda v: v == "auto" or isinstance(v, bool)),
    "tracking.system_metrics_s": ("a number > 0 (seconds)", lambda v: _number(v) and v > 0),
}
_ABSENT = object()
# Twice the cross-entropy of guessing one of 10 classes (2 ln 10 = 4.61): a net whose training loss
# stays above it is worse than guessing, not slow (``divergence``).
DIVERGED_LOSS = 2 * math.log(10)
# Lightning Trainer arguments normlab sets itself: a user's value would clash with its own (a TypeError
# inside Lightning) or fight the mechanism that does the job, so each is refused naming that mechanism.
PLATFORM_TRAINER = {
    "enable_progress_bar": "normlab prints one line per epoch and a [sweep] line per cell",
    "enable_checkpointing": "normlab checkpoints every epoch itself, for resume (checkpoint_dir=)",
    "enable_model_summary": "the results page gives each setup's parameter count",
    "num_sanity_val_steps": "normlab evaluates after every epoch, in every eval mode",
    "logger": "normlab records every run in MLflow itself (tracking.uri=)",
    "callbacks": "normlab attaches its own (progress, checkpoints, interrupts)",
    "max_steps": "the budget is trainer.max_epochs, with budget.min_steps as a floor in SGD steps",
}


def divergence(metrics: Mapping[str, float], epoch: int) -> str | None:
    """Why a run diverged, judged from an epoch's metrics (epoch 1 = after the first), or None.
    One rule for the run (it ends FAILED, a fused cell masked), the sweep and the results page:

    - a training or test loss that is NaN or infinite, at any epoch;
    - from the second epoch on, a training loss above DIVERGED_LOSS. The first epoch's average
      includes the start, where a few steps at a large lr (batch 1 to 8, lr 0.9) spike above it
      and recover; a run of one epoch is judged by the first rule only."""
    for stage in ("train", "val"):
        loss = metrics.get(f"{stage}/loss", 0.0)
        if not math.isfinite(loss):
            return f"diverged at epoch {epoch} ({stage} loss {loss})"
    loss = metrics.get("train/loss", 0.0)
    if epoch >= 2 and loss > DIVERGED_LOSS:
        bound = f"2 ln 10 = {DIVERGED_LOSS:.2f}, twice guessing's"
        return f"diverged at epoch {epoch} (training loss {loss:.4g} > {bound})"
    return None


def refusal(key: str, value: object) -> str | None:
    """Why ``key=value`` is not allowed (naming both and what is), or None."""
    allowed, ok = RULES[key]
    return None if ok(value) else f"{key}={value!r} is not allowed; it must be {allowed}"


def check_config(cfg: DictConfig) -> None:
    """Raise ConfigError naming the first key whose value is out of range, and what is allowed,
    or a norm option its kind does not take (``norm=group +norm.momentum=0.1``)."""
    for key in RULES:
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        problem = None if value is _ABSENT else refusal(key, value)
        if problem:
            raise ConfigError(problem)
    for key in cfg.get("trainer") or {}:
        if key in PLATFORM_TRAINER:
            raise ConfigError(f"trainer.{key} is set by normlab, not by you: {PLATFORM_TRAINER[key]}")
    norm = NORMS[cfg.norm.kind]
    if (
        norm.includes_activation()
        and cfg.model.get("norm_position", "before_activation") != "before_activation"
    ):
        raise ConfigError(
            f"norm={cfg.norm.kind} includes its activation (it replaces norm and sigmoid): "
            "model.norm_position must be before_activation"
        )
    known = norm.options()
    for option in cfg.norm:
        if option not in ("_target_", "kind", *known):
            options = ", ".join(known) or "none"
            raise ConfigError(
                f"norm.{option} is not an option of norm kind {cfg.norm.kind!r}; its options: {options}"
            )


def effective_lr(cfg: DictConfig) -> float:
    """``optimizer.lr``, scaled by batch_size / 256 when ``lr_scaling=linear`` (lr is the batch-256
    rate), times ``lr_factor`` (a check of the scaled lr: is it the finding?)."""
    lr = cfg.optimizer.lr * cfg.data.batch_size / 256 if cfg.lr_scaling == "linear" else cfg.optimizer.lr
    factor = cfg.get("lr_factor", 1.0)
    return lr if factor == 1.0 else lr * factor
