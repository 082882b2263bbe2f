"""The config as ``python -m normlab.train`` composes it, outside ``@hydra.main``, and the
one-sentence refusals of command-line overrides naming no option or no key."""

from __future__ import annotations

import difflib

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from normlab.config.paths import CONF_DIR, GROUPS, group_options


def compose(overrides: list[str] | None = None, hydra_config: bool = False) -> DictConfig:
    """The config as ``python -m normlab.train <overrides>`` would see it (``hydra_config``: with
    its ``hydra:`` node, for launcher and sweep settings)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=overrides or [], return_hydra_config=hydra_config)


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
