"""What a cell is, read from its config: paths, composing the config, value rules, the cell's
identity and the typed value every later step takes (``cell.CellSpec``).

The resolvers the config files use are registered here, so any process that reads a config of
this project through ``normlab.config`` resolves them.
"""

import os

from omegaconf import OmegaConf

# ${floordiv:${data.batch_size},8}: the GN paper's per-device batch of 8 simulated devices.
OmegaConf.register_new_resolver("floordiv", lambda a, b: int(a) // int(b), replace=True)
# ${pid:}: the launching process, so that two sweeps started in the same second get two folders
# (cached like Hydra's ${now:}: a sweep's jobs see the value their launcher resolved).
OmegaConf.register_new_resolver("pid", os.getpid, use_cache=True, replace=True)

# The package's public names (imported after the resolvers: composing needs them).
from normlab.config.compose import command_line_problem, compose, unknown_choice, unknown_key  # noqa: E402
from normlab.config.paths import (  # noqa: E402
    CONF_DIR,
    EXPERIMENTS_DIR,
    PROJECT_ROOT,
    checkpoint_dir,
    group_options,
    tracking_uri,
)
from normlab.config.rules import RULES, ConfigError, check_config, effective_lr  # noqa: E402

__all__ = [
    "CONF_DIR",
    "EXPERIMENTS_DIR",
    "PROJECT_ROOT",
    "RULES",
    "ConfigError",
    "check_config",
    "command_line_problem",
    "checkpoint_dir",
    "compose",
    "effective_lr",
    "group_options",
    "tracking_uri",
    "unknown_choice",
    "unknown_key",
]
