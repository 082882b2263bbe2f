"""What a cell of a study is: its canonical config, its identity, its names, and cells we refuse.

- ``fingerprint``: what a run computes, the resolved config less where it is recorded and how it
  is presented. Resume and skip find a cell's runs by it (``normlab.tracking.resume``).
- ``setup_name`` and the seed: what a results table counts. One run per (setup, seed), the
  newest finished one (``normlab.report.page``): after a config change the setup's new runs replace
  its old ones instead of adding seeds.
- ``run_name``: how the UI's run list tells cells apart.
"""

from __future__ import annotations

import copy
import hashlib
import json

from omegaconf import DictConfig, OmegaConf, open_dict

from normlab.layers.registry import NORMS

# Keys that say where results go, how they are presented or how cells are scheduled (fused or
# alone: the same numbers), not what is computed: left out of the fingerprint, so fixing a label or
# recording elsewhere trains nothing again.
NOT_FINGERPRINTED = (
    "tracking",
    "checkpoint_dir",
    "force",
    "report",
    "label",
    "reference",
    "fuse",
    "fuse_group",
)
# The tags that identify a table's sample: one run per (setup, seed).
TABLE_IDENTITY = ("setup", "seed")


def canonical(cfg: DictConfig) -> DictConfig:
    """The cell as it trains. A norm whose virtual batch holds the whole SGD batch (or is null: the
    batch) is plain batch statistics: ghost BN then *is* BN (``NormKind.whole_batch_kind``: the
    scratch layer, number for number), so it is named, fingerprinted and trained as that kind
    (once: a sweep listing both skips the second); the virtual batch of the other kinds that take
    one (batch renorm, EvoNorm-B0, switchable) likewise drops."""
    norm = cfg.norm
    whole = NORMS[norm.kind].whole_batch_kind
    virtual = norm.get("virtual_batch_size")
    if virtual is not None and virtual < cfg.data.batch_size:
        return cfg  # statistics over true virtual batches
    if virtual is None and whole is None:
        return cfg  # nothing virtual

    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        if whole is not None:  # its options where the whole-batch kind takes them, else their defaults
            options = {**NORMS[whole].defaults(), **{k: norm[k] for k in NORMS[whole].options() if k in norm}}
            cfg.norm = {"_target_": norm._target_, **options, "kind": whole}
        else:
            cfg.norm.virtual_batch_size = None
    return cfg


def statistics_batch(cfg: DictConfig) -> int:
    """What the cell's norm takes its statistics over: its virtual batch where smaller, else the batch."""
    return min(cfg.data.batch_size, cfg.norm.get("virtual_batch_size") or cfg.data.batch_size)


def refusal(cfg: DictConfig) -> str | None:
    """Why a cell would measure nothing, or None: a kind whose statistics batch in FC layers is
    below the smallest it learns from (``NormKind.refused_below``: batch renorm over one sample;
    any accuracy above chance would be a random-feature model's)."""
    kind = NORMS[cfg.norm.kind]
    in_fc_layers = cfg.model.get("norm_in", "all") in ("all", "fc")
    if kind.refused_below is None or not in_fc_layers or statistics_batch(cfg) >= kind.smallest_batch:
        return None
    return kind.refused_below


# Options added after runs were recorded, at the value that computes what those runs computed:
# left out of the fingerprint there, so adding an option retrains nothing.
ADDED_AT_NEUTRAL = {
    ("lr_factor",): 1.0,
    ("model", "weight_standardization"): False,
    ("budget", "ladder"): [1.0],  # one budget: the run's own end
    ("budget", "cooldown"): 0.2,  # read by lr_schedule=wsd only, which came with it
    ("budget", "min_steps"): 0,
    ("data", "test_subset"): None,  # all 10,000 test images
}


def fingerprint(cfg: DictConfig) -> str:
    """A short hash of what a run computes (the resolved config less ``NOT_FINGERPRINTED`` and
    ``ADDED_AT_NEUTRAL`` options at their neutral value)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)
    for key, neutral in ADDED_AT_NEUTRAL.items():
        if len(key) == 1:  # a top-level option
            if resolved.get(key[0], neutral) == neutral:
                resolved.pop(key[0], None)
            continue
        section, option = key
        if section in resolved and resolved[section].get(option, neutral) == neutral:
            resolved[section].pop(option, None)
            if not resolved[section]:
                del resolved[section]
    kept = {key: value for key, value in resolved.items() if key not in NOT_FINGERPRINTED}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]


def run_name(cfg: DictConfig) -> str:
    """``<norm>[-vb<virtual batch>][-ws]-bs<batch>[-m<momentum>]-lr<lr>[x<lr_factor>]-s<seed>``: what
    tells cells apart in the UI's run list (the model is a tag and part of the setup name). Norms
    without running statistics have no momentum, and their names none."""
    virtual = cfg.norm.get("virtual_batch_size")
    kind = cfg.norm.kind + (f"-vb{virtual}" if virtual is not None else "")
    kind += "-ws" if cfg.model.get("weight_standardization") else ""
    momentum = f"-m{cfg.norm.momentum}" if "momentum" in cfg.norm else ""
    factor = cfg.get("lr_factor", 1.0)
    checked = "" if factor == 1.0 else f"x{factor}"
    return f"{kind}-bs{cfg.data.batch_size}{momentum}-lr{cfg.optimizer.lr}{checked}-s{cfg.seed}"


def setup_name(cfg: DictConfig) -> str:
    """What a results table groups seeds by: ``label`` if set, else ``<model>-`` + the run name
    without the seed."""
    if cfg.get("label"):
        return str(cfg.label)
    return f"{cfg.model.name}-" + run_name(cfg).removesuffix(f"-s{cfg.seed}")


def presentation_tags(cfg: DictConfig) -> dict[str, str]:
    """The tags a table reads for how it shows a cell: its setup name and the published figures
    beside it. Tags, not params, so that a skipped cell takes a corrected label (params are
    immutable in MLflow)."""
    reference = cfg.get("reference") or {}
    return {"setup": setup_name(cfg), **{f"reference.{key}": str(value) for key, value in reference.items()}}
