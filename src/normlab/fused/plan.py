"""Which cells of a sweep train together as one fused model (``fuse=auto|true|false``).

Cells fuse when they differ only in seed, lr and norm: same model, data, batch size, epochs,
schedule and evaluation (``group_key``), a norm kind whose fused training is tested equal to
training alone (``NormKind.fuses``, tests/fused/test_model.py) and plain SGD (``fused.FusedSGD``). ``auto``
fuses only at batch sizes where ``make bench`` measured a gain on the device at hand.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from normlab.config import cells
from normlab.layers.registry import NORMS

# What may differ within a group; everything else of the canonical config must be equal.
PER_CELL = (*cells.NOT_FINGERPRINTED, "seed", "norm")
# fuse=auto: the largest batch size at which fusing pays, per device. CPU: where `make bench`
# (experiments/bench/RESULTS-cpu.md) shows the fused speed-up above 1; grouped convolutions are
# slow on CPU at large batches. GPU: a LeNet step leaves a GPU idle at any of these batch sizes
# (HFTA: fusion pays throughout).
AUTO_MAX_BATCH = {"cpu": 32, "cuda": 4096}
MAX_CELLS = 16  # per fused group: larger groups gain little more per cell, and parallel slots stay busy


def device_kind(cfg: DictConfig) -> str:
    """Where the cell would train: "cuda" when its trainer may pick a visible GPU, else "cpu"
    (counted without initializing CUDA: the launcher process must not hold a GPU)."""
    accelerator = str(cfg.trainer.accelerator)
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.device_count() > 0:
        return "cuda"
    return "cpu"


def fusable(cfg: DictConfig) -> bool:
    """Can this cell train within a fused group at all."""
    optimizer = cfg.optimizer
    plain_sgd = optimizer.get("momentum", 0) == 0 and optimizer.get("weight_decay", 0) == 0
    kind = NORMS[cfg.norm.kind]
    # A kind that raises below its smallest batch (torch's BN at one value per channel) would fail the group.
    return (
        kind.fuses
        and cells.statistics_batch(cfg) >= kind.smallest_batch
        and plain_sgd
        and str(cfg.model.get("_target_")) == "normlab.models.LeNet"
        and not cfg.model.get("weight_standardization", False)  # fused convs are plain (normlab.fused)
        and cells.refusal(cfg) is None
    )


def wanted(cfg: DictConfig) -> bool:
    """``fuse=true``: fuse where possible; ``false``: never; ``auto``: where it pays."""
    if cfg.fuse == "auto":
        return cfg.data.batch_size <= AUTO_MAX_BATCH[device_kind(cfg)]
    return bool(cfg.fuse)


def group_key(cfg: DictConfig) -> str:
    """What the cells of one group share: the canonical config less ``PER_CELL`` and the lr."""
    resolved = OmegaConf.to_container(cells.canonical(cfg), resolve=True)
    assert isinstance(resolved, dict)
    shared = {key: value for key, value in resolved.items() if key not in PER_CELL}
    shared["optimizer"] = {key: value for key, value in shared["optimizer"].items() if key != "lr"}
    return hashlib.sha256(json.dumps(shared, sort_keys=True, default=str).encode()).hexdigest()[:16]


def plan_groups(cfgs: Sequence[DictConfig], max_cells: int = MAX_CELLS) -> list[list[int]]:
    """The sweep's cells (indices into ``cfgs``) as jobs: fused groups of 2 to ``max_cells``
    cells, then the cells that train alone, one each. Groups come first, largest first (the
    longest jobs start first), each sorted by norm setting (norms of one setting stack)."""
    by_key: dict[str, list[int]] = {}
    alone: list[list[int]] = []
    for index, cfg in enumerate(cfgs):
        if wanted(cfg) and fusable(cfg):
            by_key.setdefault(group_key(cfg), []).append(index)
        else:
            alone.append([index])
    groups: list[list[int]] = []
    for members in by_key.values():
        members.sort(key=lambda i: str(cells.canonical(cfgs[i]).norm))
        count = -(-len(members) // max_cells)  # as many groups as needed, of about equal size
        chunks = [members[i::count] for i in range(count)] if count > 1 else [members]
        for chunk in chunks:
            (groups if len(chunk) > 1 else alone).append(chunk)
    groups.sort(key=len, reverse=True)
    return groups + alone
