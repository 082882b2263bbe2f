"""The Hydra entry point: ``python -m normlab.train [overrides]`` trains one cell, ``-m`` sweeps.

Everything it does beyond reading the command line is elsewhere: the config's rules in
``normlab.config``, the cell's identity in ``normlab.cells``, training it in ``normlab.run``,
the sweep's parent run and summary in ``normlab.sweep``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from normlab import cells, config, sweep
from normlab.config import CONF_DIR, ConfigError
from normlab.data import DataError
from normlab.run import PARENT_TAG, Interrupted, RunFailed, fit
from normlab.tracking import StoreError


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    hydra_config = HydraConfig.get()
    job_dir = Path(hydra_config.runtime.output_dir)
    cfg.tracking.uri = config.tracking_uri(cfg.tracking.uri)  # resolved once, here, for the whole run
    cell = cells.run_name(cells.canonical(cfg))
    multirun = hydra_config.mode == RunMode.MULTIRUN
    parent = sweep.parent_run_id(Path(hydra_config.sweep.dir)) if multirun else None
    tags = {PARENT_TAG: parent} if parent else {}
    try:
        outcome = fit(cfg, list(hydra_config.overrides.task), tags)
    except (DataError, ConfigError, StoreError, RunFailed) as error:
        # Bad input (nothing recorded: exit 2) or a failed run (recorded FAILED: exit 1). In a
        # sweep the cell is listed as failed and the sweep goes on; its summary sets the exit status.
        print(f"error: {error}", file=sys.stderr)
        sweep.record_outcome(job_dir, cell, "failed", str(error))
        if multirun:
            return float("nan")
        raise SystemExit(1 if isinstance(error, RunFailed) else 2) from None
    except Interrupted as interruption:
        print(interruption, file=sys.stderr)
        sweep.record_outcome(job_dir, cell, "failed", str(interruption))
        raise SystemExit(130) from None  # the shell's code for a SIGINT
    sweep.record_outcome(job_dir, cell, outcome.action)
    return outcome.metrics.get("val/acc", float("nan"))


def cli() -> None:
    problem = config.unknown_choice(sys.argv[1:]) or config.unknown_key(sys.argv[1:])
    if problem:
        print(problem, file=sys.stderr)
        raise SystemExit(2)
    main()


if __name__ == "__main__":
    cli()
