"""The Hydra entry point: ``python -m normlab.train [overrides]`` trains one cell, ``-m`` sweeps.

Everything it does beyond reading the command line is elsewhere: what a cell is in
``normlab.config``, training it in ``normlab.training.solo`` (a fused job: ``normlab.fused.run``),
the sweep's parent run and summary in ``normlab.sweep``.
"""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from normlab import config
from normlab.config import cells
from normlab.config.console import say
from normlab.config.paths import CONF_DIR
from normlab.config.rules import ConfigError
from normlab.data.fashion_mnist import DataError
from normlab.tracking.names import PARENT_TAG

# MLflow (1.5 s of imports: ``sweep``, ``store``, ``lifecycle``) loads where a job runs, Lightning
# (3 s) where a cell trains: a refusal of bad input (``cli``) answers in 2 s instead of 8.


def fused_group(job_dir: Path, group_file: str, tags: dict[str, str]) -> float:
    """A sweep job of fused cells (the sweeper's ``fuse_group`` file): each cell's outcome into
    the job folder; the mean test accuracy of the cells that have one."""
    cfgs, overrides = [], []
    for entry in OmegaConf.load(group_file).cells:
        # Its own root: interpolations such as ${data.batch_size} resolve within the cell's config.
        cell_cfg = OmegaConf.create(OmegaConf.to_container(entry.config))
        OmegaConf.set_struct(cell_cfg, True)  # as Hydra hands a task its config
        cell_cfg.tracking.uri = config.tracking_uri(cell_cfg.tracking.uri)
        cfgs.append(cell_cfg)
        overrides.append(list(entry.overrides))
    names = [cells.run_name(cells.canonical(cfg)) for cfg in cfgs]
    from normlab import sweep
    from normlab.fused.run import fit_group
    from normlab.tracking.store import StoreError, StoreLost
    from normlab.training.lifecycle import Interrupted

    try:
        results = fit_group(cfgs, overrides, tags)
    except (DataError, ConfigError, StoreError, StoreLost) as error:
        say(f"error: {error}", logging.ERROR)
        sweep.record_outcomes(job_dir, [(name, "failed", str(error)) for name in names])
        return float("nan")
    except Interrupted as interruption:
        say(str(interruption), logging.WARNING)
        sweep.record_outcomes(job_dir, [(name, "failed", str(interruption)) for name in names])
        raise SystemExit(128 + signal.Signals[interruption.signal_name]) from None  # the shell's code
    sweep.record_outcomes(job_dir, [(r.name, r.status, r.reason) for r in results])
    for result in results:  # the job's log file keeps each cell's outcome (the console has its lines)
        reason = f": {result.reason}" if result.reason else ""
        say(f"[{result.name}] outcome: {result.status}{reason}", logging.DEBUG)
    accuracies = [
        r.outcome.metrics["val/acc"] for r in results if r.outcome and "val/acc" in r.outcome.metrics
    ]
    return sum(accuracies) / len(accuracies) if accuracies else float("nan")


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    from normlab import sweep

    hydra_config = HydraConfig.get()
    job_dir = Path(hydra_config.runtime.output_dir)
    multirun = hydra_config.mode == RunMode.MULTIRUN
    parent = sweep.parent_run_id(Path(hydra_config.sweep.dir)) if multirun else None
    tags = {PARENT_TAG: parent} if parent else {}
    if cfg.fuse_group:
        return fused_group(job_dir, cfg.fuse_group, tags)
    cfg.tracking.uri = config.tracking_uri(cfg.tracking.uri)  # resolved once, here, for the whole run
    cell = cells.run_name(cells.canonical(cfg))
    from normlab.tracking.store import StoreError, StoreLost
    from normlab.training.lifecycle import Interrupted, RunFailed
    from normlab.training.solo import fit

    try:
        outcome = fit(cfg, list(hydra_config.overrides.task), tags)
    except (DataError, ConfigError, StoreError, RunFailed, StoreLost) as error:
        # Bad input (nothing recorded: exit 2), a failed run (recorded FAILED: exit 1) or a store
        # lost mid-run (StoreLost.EXIT_CODE: rerun to resume). In a sweep the cell is listed as
        # failed and the sweep goes on; its summary sets the exit status.
        say(f"error: {error}", logging.ERROR)
        sweep.record_outcome(job_dir, cell, "failed", str(error))
        if multirun:
            return float("nan")
        codes = {RunFailed: 1, StoreLost: StoreLost.EXIT_CODE}
        raise SystemExit(codes.get(type(error), 2)) from None
    except Interrupted as interruption:
        say(str(interruption), logging.WARNING)
        sweep.record_outcome(job_dir, cell, "failed", str(interruption))
        raise SystemExit(128 + signal.Signals[interruption.signal_name]) from None  # the shell's code
    sweep.record_outcome(job_dir, cell, outcome.action)
    accuracy = outcome.metrics.get("val/acc", float("nan"))
    say(f"[{cell}] outcome: {outcome.action}, val/acc {accuracy:.4f}, run {outcome.run_id}", logging.DEBUG)
    return outcome.metrics.get("val/acc", float("nan"))


def cli() -> None:
    problem = config.command_line_problem(sys.argv[1:])
    if problem:
        print(problem, file=sys.stderr)
        raise SystemExit(2)
    main()


if __name__ == "__main__":
    cli()
