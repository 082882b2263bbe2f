"""The Hydra entry point: ``python -m normlab.train [overrides]`` trains one LeNet, ``-m`` sweeps.

Flow: check the choices -> load and verify data -> build net and module -> MLflow run -> fit.
"""

from __future__ import annotations

import copy
import logging
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from normlab import data, resume, sweep, tracking
from normlab.data import DataError, IndexBatches
from normlab.evalmodes import EvalModes
from normlab.module import Classifier
from normlab.progress import EpochProgress
from normlab.tracking import StoreError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
# ${floordiv:${data.batch_size},8}: the GN paper's per-device batch of 8 simulated devices.
OmegaConf.register_new_resolver("floordiv", lambda a, b: int(a) // int(b), replace=True)
GROUPS = ("data", "model", "norm", "optimizer", "trainer", "setup", "experiment", "profile", "launcher")


def group_options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))


def unknown_choice(arguments: list[str]) -> str | None:
    """One sentence for the first ``group=option`` argument naming no option, else None.

    Hydra's own message for this is a dozen lines; a typo deserves one.
    """
    for argument in arguments:
        key, _, value = argument.lstrip("+~").partition("=")
        if key not in GROUPS or not value or "(" in value:  # glob(...), choice(...): Hydra expands them
            continue
        known = group_options(key)
        for option in value.split(","):  # a sweep lists several
            if option not in known and option != "null":
                noun = "norm kind" if key == "norm" else key
                return f"error: unknown {noun} {option!r}; valid: {', '.join(known)}"
    return None


class ConfigError(ValueError):
    """A config value out of its range; the message names the key, the value and what is allowed."""


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# key -> (what is allowed, test). Checked before anything is loaded or recorded.
RULES: dict[str, tuple[str, Callable[[object], bool]]] = {
    "data.batch_size": ("an integer >= 1", lambda v: _integer(v) and v >= 1),
    "data.eval_batch_size": ("an integer >= 1", lambda v: _integer(v) and v >= 1),
    "data.samples_per_call": ("an integer >= 1", lambda v: _integer(v) and v >= 1),
    "data.train_subset": (
        f"null or an integer in 1..{data.TRAIN_SIZE}",
        lambda v: v is None or (_integer(v) and 1 <= v <= data.TRAIN_SIZE),
    ),
    "optimizer.lr": ("a number > 0", lambda v: _number(v) and v > 0),
    "norm.momentum": (
        "null (cumulative average) or a number in [0, 1]",
        lambda v: v is None or (_number(v) and 0 <= v <= 1),
    ),
    "norm.eps": ("a number > 0", lambda v: _number(v) and v > 0),
    "trainer.max_epochs": ("an integer >= 1", lambda v: _integer(v) and v >= 1),
    "lr_scaling": ("constant or linear", lambda v: v in ("constant", "linear")),
    "warmup_samples": ("an integer >= 0", lambda v: _integer(v) and v >= 0),
    "lr_schedule": ("constant or cosine", lambda v: v in ("constant", "cosine")),
    "eval.precise_samples": ("an integer >= 1", lambda v: _integer(v) and v >= 1),
    # Seeds weights (torch takes < 2**32 via Lightning) and the SeedSequence of the data orders (>= 0).
    "seed": ("an integer in 0..4294967295", lambda v: _integer(v) and 0 <= v < 2**32),
    "force": ("true or false", lambda v: isinstance(v, bool)),
    "tracking.system_metrics_s": ("a number > 0 (seconds)", lambda v: _number(v) and v > 0),
}


def check_config(cfg: DictConfig) -> None:
    """Raise ConfigError naming the first key whose value is out of range, and what is allowed."""
    for key, (allowed, ok) in RULES.items():
        value = OmegaConf.select(cfg, key)
        if not ok(value):
            raise ConfigError(f"{key}={value!r} is not allowed; it must be {allowed}")


def canonical(cfg: DictConfig) -> DictConfig:
    """The cell as it trains. Ghost BN whose virtual batch holds the whole SGD batch *is* BN (the
    scratch layer, number for number), so it is named, fingerprinted and trained as ``scratch``
    (once: a sweep listing both skips the second); batch renorm's virtual batch likewise drops."""
    norm = cfg.norm
    virtual = norm.get("virtual_batch_size")
    if virtual is None or virtual < cfg.data.batch_size:
        return cfg
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        if norm.kind == "ghost":
            kept = {key: norm[key] for key in ("_target_", "momentum", "eps")}
            cfg.norm = {**kept, "kind": "scratch"}
        else:
            cfg.norm.virtual_batch_size = None
    return cfg


def refusal(cfg: DictConfig) -> str | None:
    """Why a cell would measure nothing, or None. Batch renorm with statistics over one sample in
    FC layers: x - mean is 0 there, so a layer outputs weight * d + bias with d a constant for the
    gradient; nothing below it learns, and any accuracy above chance is a random-feature model's."""
    if cfg.norm.kind != "batch_renorm" or cfg.model.get("norm_in", "all") not in ("all", "fc"):
        return None
    statistics_batch = min(cfg.data.batch_size, cfg.norm.get("virtual_batch_size") or cfg.data.batch_size)
    if statistics_batch > 1:
        return None
    return (
        "batch renorm over 1 sample in FC layers passes no gradient below them "
        "(x - mean = 0; r, d are constants): the conv layers would keep their random weights"
    )


class RunFailed(RuntimeError):
    """Training raised; the run is recorded as FAILED with a ``failure`` tag saying why."""


# Our EpochProgress replaces Lightning's per-step bar; no checkpoints or summaries in the hot path.
QUIET_TRAINER = dict(
    enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0
)


def effective_lr(cfg: DictConfig) -> float:
    """``optimizer.lr``, scaled by batch_size / 256 when ``lr_scaling=linear`` (lr is the batch-256 rate)."""
    if cfg.lr_scaling == "linear":
        return cfg.optimizer.lr * cfg.data.batch_size / 256
    return cfg.optimizer.lr


def build_net(cfg: DictConfig) -> torch.nn.Module:
    """The configured model with the configured norm (``model.name`` labels runs; it is no argument)."""
    return instantiate({k: v for k, v in cfg.model.items() if k != "name"}, norm=instantiate(cfg.norm))


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Outcome(NamedTuple):
    action: str  # what fit did with the cell: "new" (trained), "resume", or "skip" (see normlab.resume)
    metrics: dict[str, float]  # the run's final metrics
    run_id: str  # the MLflow run that holds them


def fit(cfg: DictConfig, overrides: list[str], tags: dict[str, str] | None = None) -> Outcome:
    """Train one run as configured, record it in MLflow, and return what it did and its final metrics.

    A cell that already has a FINISHED run is skipped (its metrics are returned), a killed one
    resumes from its last epoch checkpoint into the same run (``normlab.resume``). ``tags`` go on
    a new run (its sweep's parent run, the run it reruns).
    """
    check_config(cfg)
    cfg = canonical(cfg)
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # start/stop lines per run
    # Both concern Lightning internals we do not use (per-step logging, its pytree helper).
    warnings.filterwarnings("ignore", message=".*log_every_n_steps.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    pl.seed_everything(cfg.seed, workers=False, verbose=False)
    train_split, test_split = data.load(cfg.data.root, cfg.data.download, cfg.data.train_subset)

    name = tracking.run_name(cfg)
    client, experiment = tracking.open_store(cfg.tracking.uri, cfg.study)
    fingerprint = tracking.fingerprint(cfg)
    checkpoints = Path(cfg.checkpoint_dir or tracking.PROJECT_ROOT / "checkpoints")
    checkpoint = resume.checkpoint_path(checkpoints, fingerprint)
    plan = resume.plan_cell(client, experiment, fingerprint, checkpoint, bool(cfg.force))
    _say(f"[{name}] {plan.action}: {plan.reason}")
    if plan.action == "skip":
        finished = client.get_run(plan.run_id)
        tracking.join_grid(client, finished, cfg.report.get("grid"))
        return Outcome("skip", dict(finished.data.metrics), plan.run_id)
    net = build_net(cfg)
    if plan.action == "resume":
        run_id = plan.run_id
        client.update_run(run_id, status="RUNNING")
        for key, value in {**tracking.process_tags(), "status": "running"}.items():
            client.set_tag(run_id, key, value)
    else:
        resume.remove_checkpoint(checkpoints, fingerprint)  # a stale one must not be resumed by this run
        # Trainable parameters: what removing the bias before BN or fixing gamma and beta saves.
        parameters = str(sum(p.numel() for p in net.parameters() if p.requires_grad))
        extra_tags = {**(tags or {}), "parameters": parameters}
        run_id = tracking.start_run(client, cfg, overrides, device="pending", extra_tags=extra_tags)
        refused = refusal(cfg)
        if refused:  # recorded, so the table says why the cell has no number
            client.set_tag(run_id, "failure", f"Refused: {refused}")
            tracking.end_run(client, run_id, "FAILED")
            raise RunFailed(f"run {name} refused: {refused}")

    logger = tracking.EpochMLFlowLogger(
        experiment_name=cfg.study, tracking_uri=tracking.tracking_uri(cfg.tracking.uri), run_id=run_id
    )
    trainer = pl.Trainer(**cfg.trainer, logger=logger, **QUIET_TRAINER)
    device = trainer.strategy.root_device
    client.set_tag(run_id, "device", torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu")
    train_split = data.Split(train_split.images.to(device), train_split.labels.to(device))
    test_split = data.Split(test_split.images.to(device), test_split.labels.to(device))
    batch_size = cfg.data.batch_size
    train_batches = IndexBatches(
        train_split,
        batch_size,
        shuffle=True,
        seed=cfg.seed,
        drop_single_tail=True,
        group=max(1, cfg.data.samples_per_call // batch_size),
    )
    steps_per_epoch = -(-train_batches.size // batch_size)
    module = Classifier(
        net,
        optimizer=instantiate(cfg.optimizer, lr=effective_lr(cfg)),
        batch_size=batch_size,
        warmup_steps=-(-cfg.warmup_samples // batch_size),
        cosine_steps=cfg.trainer.max_epochs * steps_per_epoch if cfg.lr_schedule == "cosine" else 0,
    )
    trainer.callbacks += [
        EpochProgress(name),
        resume.EpochCheckpoint(checkpoint),
        # Batches as large as the training ones, for the evaluations that use batch statistics.
        EvalModes(
            IndexBatches(train_split, batch_size, shuffle=True, seed=cfg.seed, stream=data.PRECISE_BN_SAMPLE),
            IndexBatches(test_split, batch_size, shuffle=False),
            precise_samples=cfg.eval.precise_samples,
        ),
    ]
    uri = tracking.tracking_uri(cfg.tracking.uri)
    try:
        with tracking.system_metrics(run_id, uri, cfg.tracking.system_metrics_s, plan.action == "resume"):
            trainer.fit(
                module,
                train_dataloaders=train_batches,
                val_dataloaders=IndexBatches(test_split, cfg.data.eval_batch_size, shuffle=False),
                ckpt_path=checkpoint if plan.action == "resume" else None,
            )
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        client.set_tag(run_id, "failure", f"{type(error).__name__}: {reason}"[:400])
        tracking.end_run(client, run_id, "FAILED")
        raise RunFailed(f"run {name} failed: {reason}") from error
    except BaseException:  # interrupted: the run did not finish; its checkpoint lets a rerun resume it
        tracking.end_run(client, run_id, "KILLED")
        raise
    tracking.end_run(client, run_id, "FINISHED")  # Lightning's logger would say FINISHED without the tag
    resume.remove_checkpoint(checkpoints, fingerprint)
    final = {key: float(value) for key, value in trainer.callback_metrics.items()}
    return Outcome(plan.action, final, run_id)


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    hydra_config = HydraConfig.get()
    job_dir = Path(hydra_config.runtime.output_dir)
    cell = tracking.run_name(canonical(cfg))
    multirun = hydra_config.mode == RunMode.MULTIRUN
    parent = sweep.parent_run_id(Path(hydra_config.sweep.dir)) if multirun else None
    tags = {"mlflow.parentRunId": parent} if parent else {}  # the UI nests the run under its sweep
    try:
        outcome = fit(cfg, list(hydra_config.overrides.task), tags)
    except (DataError, ConfigError, StoreError) as error:
        print(f"error: {error}", file=sys.stderr)
        sweep.record_outcome(job_dir, cell, "failed", str(error))
        raise SystemExit(2) from None
    except RunFailed as error:
        print(f"error: {error}", file=sys.stderr)
        sweep.record_outcome(job_dir, cell, "failed", str(error))
        if multirun:
            return float("nan")  # recorded as FAILED; the sweep goes on and its summary lists the cell
        raise SystemExit(1) from None
    sweep.record_outcome(job_dir, cell, outcome.action)
    return outcome.metrics.get("val/acc", float("nan"))


def cli() -> None:
    problem = unknown_choice(sys.argv[1:])
    if problem:
        print(problem, file=sys.stderr)
        raise SystemExit(2)
    main()
    if sweep.FAILED_CELLS:  # set by the SweepSummary callback at the end of a multirun
        raise SystemExit(1)


if __name__ == "__main__":
    cli()
