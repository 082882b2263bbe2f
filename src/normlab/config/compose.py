"""The config as ``python -m normlab.train`` composes it, outside ``@hydra.main``, and the
one-sentence refusals of a command line: an argument Hydra cannot read, a value out of its range
(one every cell of a sweep shares: once for the sweep), a config file that is not YAML, an option or
a key that does not exist. They answer before Lightning or MLflow load and before anything is
recorded."""

from __future__ import annotations

import difflib
from pathlib import Path

import yaml
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra._internal.utils import get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException
from omegaconf import DictConfig, OmegaConf

from normlab.config.paths import CONF_DIR, GROUPS, PROJECT_ROOT, group_options
from normlab.config.rules import RULES, refusal


def compose(overrides: list[str] | None = None, hydra_config: bool = False) -> DictConfig:
    """The config as ``python -m normlab.train <overrides>`` would see it (``hydra_config``: with
    its ``hydra:`` node, for launcher and sweep settings)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=overrides or [], return_hydra_config=hydra_config)


def command_line_problem(arguments: list[str]) -> str | None:
    """The first problem of ``python -m normlab.train <arguments>`` as one line, else None."""
    return (
        unreadable_argument(arguments)
        or unknown_choice(arguments)
        or bad_value(arguments)
        or unknown_key(arguments)
    )


def _overrides(arguments: list[str]) -> list[str]:
    """The overrides among ``arguments`` (Hydra's flags, such as ``-m`` or ``--cfg job``, aside)."""
    try:
        return list(get_args_parser().parse_args(arguments).overrides)
    except SystemExit:  # a flag Hydra does not know: Hydra's own usage line says so
        return []


def unreadable_argument(arguments: list[str]) -> str | None:
    """One sentence for an argument Hydra's override grammar cannot read (``data.batch_size``
    without ``=``); Hydra's own message is a block with a link."""
    for argument in _overrides(arguments):
        try:
            OverridesParser.create().parse_overrides([argument])
        except OverrideParseException as error:
            why = str(error).splitlines()[1] if len(str(error).splitlines()) > 1 else str(error)
            return f"error: cannot read the argument {argument!r} ({why}); write key=value, e.g. seed=1"
    return None


def bad_value(arguments: list[str]) -> str | None:
    """One sentence for the first value on the command line that its key's rule refuses
    (``config.rules.RULES``). A value every cell of a sweep shares is checked once, before the
    sweep starts (``-m fuse=maybe seed=0,1``: one refusal, not one failure per cell); a list of
    values is checked cell by cell, where a bad cell fails alone and the sweep goes on."""
    for override in OverridesParser.create().parse_overrides(_overrides(arguments)):
        key = override.key_or_group
        if override.is_delete() or override.is_sweep_override() or key not in RULES:
            continue
        value = override.value()
        if isinstance(value, str) and "${" in value:
            continue  # an interpolation: checked once composed
        problem = refusal(key, OmegaConf.create({"value": value}).value)
        if problem:
            return f"error: {problem}"
    return None


def yaml_problem(error: BaseException | None) -> str | None:
    """One sentence naming the config file that is not valid YAML, and its line, where composing
    raised for one (Hydra's own report is a traceback of ~90 lines); else None."""
    while error is not None:
        mark = getattr(error, "problem_mark", None)
        if isinstance(error, yaml.MarkedYAMLError) and mark is not None:
            path = Path(mark.name)
            shown = path.relative_to(PROJECT_ROOT) if path.is_relative_to(PROJECT_ROOT) else path
            return f"error: {shown}, line {mark.line + 1}: not valid YAML ({error.problem})"
        error = error.__cause__ or error.__context__
    return None


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
    except Exception as error:  # a file that is not YAML, said here; else Hydra reports what it is
        return yaml_problem(error)
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
