"""Hydra's basic sweeper, plus fused training: the cells of each batch that ``normlab.fused.plan``
groups (``fuse=auto|true|false``) become one job. Such a job's overrides are what its cells share
plus ``fuse_group=<file>``; the file (in the sweep folder) lists each cell's overrides and config,
and the job trains them with ``normlab.fused.run.fit_group``. Any launcher runs the jobs: the pool
gives each group a slot, SLURM a job of its own.

Select it with ``hydra/sweeper=fusing`` (the default, conf/config.yaml).
"""

# No `from __future__ import annotations`: Hydra's dataclass configs need real types (see normlab_pool).
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)


@dataclass
class FusingSweeperConf:
    _target_: str = "hydra_plugins.normlab_fusing.fusing_sweeper.FusingSweeper"
    max_batch_size: Optional[int] = None  # noqa: UP045
    params: Optional[dict[str, str]] = None  # noqa: UP045


ConfigStore.instance().store(group="hydra/sweeper", name="fusing", node=FusingSweeperConf, provider="normlab")


def cell_config(config: DictConfig) -> DictConfig:
    """A cell's config as its task would receive it: without the ``hydra`` node."""
    cell = config.copy()
    with open_dict(cell):
        del cell["hydra"]
    return cell


def shared_overrides(cells: Sequence[Sequence[str]]) -> list[str]:
    """The overrides every cell of a group has (the job's own, shown in logs and job folders)."""
    return [override for override in cells[0] if all(override in other for other in cells[1:])]


class FusingSweeper(BasicSweeper):
    def get_job_batch(self) -> Sequence[Sequence[str]]:
        from normlab.fused import plan as fusion  # imports torch: not before Hydra needs it

        batch = super().get_job_batch()
        assert self.config is not None and self.hydra_context is not None
        loader = self.hydra_context.config_loader
        configs = [cell_config(loader.load_sweep_config(self.config, list(cell))) for cell in batch]
        folder = Path(str(self.config.hydra.sweep.dir)).resolve() / "fused"
        jobs: list[list[str]] = []
        for members in fusion.plan_groups(configs):
            if len(members) == 1:
                jobs.append(list(batch[members[0]]))
                continue
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"batch{self.batch_index}-group{len(jobs)}.yaml"
            cells = [{"overrides": list(batch[i]), "config": configs[i]} for i in members]
            OmegaConf.save(OmegaConf.create({"cells": cells}), path)
            jobs.append([*shared_overrides([batch[i] for i in members]), f"fuse_group='{path}'"])
        fused = sum(len(job) > 0 and job[-1].startswith("fuse_group=") for job in jobs)
        if fused:
            log.info(f"Fused training: {len(batch)} cells as {len(jobs)} jobs ({fused} fused groups)")
        return jobs
