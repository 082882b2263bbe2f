"""The project's paths, composing its Hydra config outside ``@hydra.main``, and the value rules.

Everything that asks "where is the project", "what does the config say" or "is this value
allowed" asks here: the entry points (train, rerun, report, bench) and the tests.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Callable
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from normlab.data import TRAIN_SIZE
from normlab.norms import NORMS

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = PROJECT_ROOT / "conf"
EXPERIMENTS_DIR = PROJECT_ROOT / "experiments"
GROUPS = ("data", "model", "norm", "optimizer", "trainer", "setup", "experiment", "profile", "launcher")

# ${floordiv:${data.batch_size},8}: the GN paper's per-device batch of 8 simulated devices.
OmegaConf.register_new_resolver("floordiv", lambda a, b: int(a) // int(b), replace=True)
# ${pid:}: the launching process, so that two sweeps started in the same second get two folders
# (cached like Hydra's ${now:}: a sweep's jobs see the value their launcher resolved).
OmegaConf.register_new_resolver("pid", os.getpid, use_cache=True, replace=True)


def compose(overrides: list[str] | None = None, hydra_config: bool = False) -> DictConfig:
    """The config as ``python -m normlab.train <overrides>`` would see it (``hydra_config``: with
    its ``hydra:`` node, for launcher and sweep settings)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=overrides or [], return_hydra_config=hydra_config)


def tracking_uri(configured: str | None = None) -> str:
    """``configured``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<project root>/mlflow.db``.
    Each entry point resolves it once and passes the result down."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"


def checkpoint_dir(configured: str | None) -> Path:
    return Path(configured) if configured else PROJECT_ROOT / "checkpoints"


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


def _keys(node: object, prefix: str = "") -> list[str]:
    """Every key path of a composed config, nodes included (``norm``, ``norm.eps``, ...)."""
    if not isinstance(node, dict):
        return []
    paths = []
    for key, value in node.items():
        paths += [f"{prefix}{key}", *_keys(value, f"{prefix}{key}.")]
    return paths


def unknown_key(arguments: list[str]) -> str | None:
    """One sentence for the first ``key=value`` argument whose key the config does not have
    (Hydra's "not in struct" block), or a ``+key`` that is a near-miss of one it has (which would
    train silently with the intended key at its default), with the closest known key; else None."""
    overrides = [
        a
        for a in arguments  # Hydra's own keys and group paths (hydra/launcher=...) are Hydra's to check
        if "=" in a and not a.startswith(("-", "~", "hydra.", "+hydra.")) and "/" not in a.partition("=")[0]
    ]
    chosen = []
    for argument in overrides:  # the group choices decide which keys exist
        key, _, value = argument.partition("=")
        if key in GROUPS and "(" not in value:
            chosen.append(f"{key}={value.split(',')[0]}")
    try:
        known = _keys(OmegaConf.to_container(compose(chosen)))
    except Exception:  # a bad group choice: unknown_choice and Hydra report it
        return None
    for argument in overrides:
        key = argument.partition("=")[0]
        added = key.startswith("+")
        key = key.lstrip("+")
        parents = {key.rsplit(".", depth)[0] for depth in range(1, key.count(".") + 1)}
        if key in GROUPS or key in known or (added and parents & set(known)):
            continue  # known, or a new key added under a known node
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.8)
        if added and not close:
            continue  # a new key, on purpose
        hint = f"did you mean {close[0]!r}?" if close else f"add a new key with +{key}=..."
        return f"error: unknown key {key!r}; {hint}"
    return None


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
    "study": ("a name (text; quote a number: study=\"'123'\")", lambda v: isinstance(v, str) and v != ""),
    "optimizer.lr": ("a finite number > 0", lambda v: _number(v) and 0 < v < math.inf),
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
    "warmup_samples": ("an integer >= 0", lambda v: _integer(v) and v >= 0),
    "lr_schedule": ("constant or cosine", lambda v: v in ("constant", "cosine")),
    "eval.precise_samples": ("an integer >= 1", lambda v: _integer(v) and v >= 1),
    # Seeds weights (torch takes < 2**32 via Lightning) and the SeedSequence of the data orders (>= 0).
    "seed": ("an integer in 0..4294967295", lambda v: _integer(v) and 0 <= v < 2**32),
    "force": ("true or false", lambda v: isinstance(v, bool)),
    "fuse": ("auto, true or false", lambda v: v == "auto" or isinstance(v, bool)),
    "tracking.system_metrics_s": ("a number > 0 (seconds)", lambda v: _number(v) and v > 0),
}
_ABSENT = object()


def check_config(cfg: DictConfig) -> None:
    """Raise ConfigError naming the first key whose value is out of range, and what is allowed,
    or a norm option its kind does not take (``norm=group +norm.momentum=0.1``)."""
    for key, (allowed, ok) in RULES.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is not _ABSENT and not ok(value):
            raise ConfigError(f"{key}={value!r} is not allowed; it must be {allowed}")
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
    """``optimizer.lr``, scaled by batch_size / 256 when ``lr_scaling=linear`` (lr is the batch-256 rate)."""
    if cfg.lr_scaling == "linear":
        return cfg.optimizer.lr * cfg.data.batch_size / 256
    return cfg.optimizer.lr
