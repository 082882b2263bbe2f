"""Every config group option, experiment and setup composes and instantiates into a working net."""

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hydra.utils import instantiate
from omegaconf import OmegaConf

from normlab.config.cells import run_name
from normlab.config.compose import unknown_choice, yaml_problem
from normlab.config.paths import CONF_DIR, EXPERIMENTS_DIR, group_options
from normlab.config.rules import ConfigError, check_config
from normlab.data.fashion_mnist import DEBIAN_ROOT, FILES
from normlab.layers.registry import NORMS, groups_note
from normlab.models import LeNet
from normlab.training.inputs import build_net

ALL_NORMS = (
    "valid: batch_renorm, evonorm_b0, evonorm_s0, frn, ghost, group, layer, mean_only, native, none, "
    "scratch, switchable, variance_only"
)

EXPERIMENTS = sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml"))


def _build(cfg) -> torch.nn.Module:
    net = build_net(cfg)
    optimizer = instantiate(cfg.optimizer)(net.parameters())
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.param_groups[0]["lr"] == cfg.optimizer.lr
    assert net(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    return net


def test_norm_configs_match_the_registry() -> None:
    assert group_options("norm") == sorted(NORMS)


def _yaml_keys(path: Path) -> set[str]:
    return set(OmegaConf.load(path)) - {"_target_", "name", "kind"}


@pytest.mark.parametrize("kind", sorted(NORMS))
def test_each_norm_config_lists_every_constructor_option(kind: str) -> None:
    """conf/norm/<kind>.yaml sets every option its constructor takes, and nothing else: a user can
    see and override each one, and a norm without running statistics has no momentum."""
    assert _yaml_keys(CONF_DIR / "norm" / f"{kind}.yaml") == set(NORMS[kind].options())
    assert ("momentum" in NORMS[kind].options()) == NORMS[kind].running_statistics


@pytest.mark.parametrize("model", group_options("model"))
def test_each_model_config_lists_every_lenet_option(model: str) -> None:
    """So ``model.norm_position=after_activation`` overrides a key instead of needing ``+``."""
    options = set(list(inspect.signature(LeNet).parameters)[1:])  # all but the norm factory
    assert _yaml_keys(CONF_DIR / "model" / f"{model}.yaml") == options


def test_norms_without_momentum_name_runs_without_it(compose_config) -> None:
    assert run_name(compose_config(["norm=group"])) == "group-bs256-lr0.9-s0"
    assert run_name(compose_config(["norm=scratch"])) == "scratch-bs256-m0.1-lr0.9-s0"
    assert run_name(compose_config(["norm=native", "norm.momentum=null"])) == "native-bs256-mNone-lr0.9-s0"


def test_an_option_the_norm_does_not_take_is_one_sentence(compose_config) -> None:
    message = r"norm.momentum is not an option of norm kind 'group'; its options: eps, num_groups"
    with pytest.raises(ConfigError, match=message):
        check_config(compose_config(["norm=group", "+norm.momentum=0.1"]))


def test_experiments_are_the_experiment_group() -> None:
    assert EXPERIMENTS and group_options("experiment") == EXPERIMENTS


@pytest.mark.parametrize("group", ["model", "norm", "optimizer", "data", "trainer", "setup"])
def test_every_group_option_composes(group: str, compose_config) -> None:
    for option in group_options(group):
        cfg = compose_config([f"{group}={option}"])
        assert isinstance(_build(cfg), LeNet)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_and_its_setups_compose(experiment: str, compose_config) -> None:
    cfg = compose_config([f"experiment={experiment}"])
    assert cfg.study == experiment.partition("__")[0]  # a study's extra grids: <study>__<grid>.yaml
    _build(cfg)
    grid = cfg.hydra.sweeper.params if "hydra" in cfg else {}
    for setup in str(grid.get("setup", "")).split(","):
        if setup:
            _build(compose_config([f"experiment={experiment}", f"setup={setup}"]))


def test_d2l_study_is_the_issue_design(compose_config) -> None:
    expected = {
        "d2l_lenet": ("lenet_d2l", "none", 0.9),
        "bn_scratch": ("lenet_bn", "scratch", 1.0),
        "bn_native": ("lenet_bn", "native", 1.0),
        "bn_none": ("lenet_bn", "none", 0.9),
    }
    for setup, (model, norm, lr) in expected.items():
        cfg = compose_config(["experiment=d2l_bn_lenet", f"setup={setup}"])
        assert (cfg.model.name, cfg.norm.kind, cfg.optimizer.lr) == (model, norm, lr)
        assert (cfg.data.batch_size, cfg.trainer.max_epochs, cfg.data.train_subset) == (256, 10, None)


def test_unknown_choice_sentence() -> None:
    assert unknown_choice(["norm=scratch", "seed=1"]) is None
    assert unknown_choice(["-m", "norm=none,scratch"]) is None
    assert unknown_choice(["-m", "norm=glob(*)"]) is None
    assert unknown_choice(["norm=scratch,bogus"]) == f"error: unknown norm kind 'bogus'; {ALL_NORMS}"
    assert "unknown model 'resnet'" in unknown_choice(["model=resnet"])


BAD_INPUTS = [
    ("data.batch_size=0", "data.batch_size=0 is not allowed; it must be an integer >= 1"),
    ("data.eval_batch_size=-4", "data.eval_batch_size=-4 is not allowed"),
    (
        "data.train_subset=60001",
        "data.train_subset=60001 is not allowed; it must be null or an integer in 1..60000",
    ),
    (
        "data.test_subset=10001",
        "data.test_subset=10001 is not allowed; it must be null or an integer in 1..10000",
    ),  # noqa: E501
    ("optimizer.lr=0", "optimizer.lr=0 is not allowed; it must be a finite number > 0"),
    ("optimizer.lr=-1.0", "optimizer.lr=-1.0 is not allowed"),
    (
        "norm.momentum=1.5",
        "norm.momentum=1.5 is not allowed; it must be null (cumulative average) or a number",
    ),
    ("norm.momentum=-0.1", "norm.momentum=-0.1 is not allowed"),
    ("norm.eps=0", "norm.eps=0 is not allowed; it must be a number > 0"),
    ("trainer.max_epochs=0", "trainer.max_epochs=0 is not allowed; it must be an integer >= 1"),
    ("seed=1.5", "seed=1.5 is not allowed; it must be an integer in 0..4294967295"),
    ("seed=abc", "seed='abc' is not allowed; it must be an integer in 0..4294967295"),
    ("data.batch_size=2.5", "data.batch_size=2.5 is not allowed; it must be an integer >= 1"),
    ("data.samples_per_call=0", "data.samples_per_call=0 is not allowed; it must be an integer >= 1"),
    ("norm.eps=-1e-05", "norm.eps=-1e-05 is not allowed; it must be a number > 0"),
    ("lr_scaling=quadratic", "lr_scaling='quadratic' is not allowed; it must be constant or linear"),
    ("eval.precise_samples=0", "eval.precise_samples=0 is not allowed; it must be an integer >= 1"),
    ("force=maybe", "force='maybe' is not allowed; it must be true or false"),
    ("optimizer.lr=inf", "optimizer.lr=inf is not allowed; it must be a finite number > 0"),
    ("study=nan", "study=nan is not allowed; it must be a name"),
    ("seed=-1", "seed=-1 is not allowed; it must be an integer in 0..4294967295"),
    ("seed=4294967296", "seed=4294967296 is not allowed"),
    ("norm=group norm.num_groups=0", "norm.num_groups=0 is not allowed; it must be an integer >= 1"),
    ("norm=ghost norm.virtual_batch_size=0", "norm.virtual_batch_size=0 is not allowed"),
    ("norm=batch_renorm norm.r_max=0.5", "norm.r_max=0.5 is not allowed; it must be a number >= 1"),
    ("norm=batch_renorm norm.d_max=-1", "norm.d_max=-1 is not allowed; it must be a number >= 0"),
    ("norm=native norm.affine=maybe", "norm.affine='maybe' is not allowed; it must be true or false"),
    ("norm=frn norm.learned_eps=1", "norm.learned_eps=1 is not allowed; it must be true or false"),
    ("model.weight_standardization=yes", "model.weight_standardization='yes' is not allowed"),
    ("optimizer.momentum=-1", "optimizer.momentum=-1 is not allowed; it must be a finite number >= 0"),
    ("optimizer.weight_decay=-1", "optimizer.weight_decay=-1 is not allowed; it must be a finite number"),
    ("model.norm_position=bogus", "model.norm_position='bogus' is not allowed; it must be before_activation"),
    ("model.norm_in=bogus", "model.norm_in='bogus' is not allowed; it must be all, conv, fc or none"),
    ("model.bias_before_norm=maybe", "model.bias_before_norm='maybe' is not allowed; it must be true or"),
    ("model.conv1_padding=-5", "model.conv1_padding=-5 is not allowed; it must be an integer >= 0"),
    (
        "norm=evonorm_s0 model.norm_position=after_activation",
        "norm=evonorm_s0 includes its activation (it replaces norm and sigmoid): model.norm_position must be",
    ),
]

# Rejected before any training or recording, by the command line: (arguments, its one line on stderr).
BAD_COMMANDS = [
    (["norm=bogus"], f"error: unknown norm kind 'bogus'; {ALL_NORMS}"),
    (["optimizer=adamw"], "error: unknown optimizer 'adamw'; valid: sgd"),
    (["model=resnet"], "error: unknown model 'resnet'; valid: lenet_bn, lenet_d2l"),
    (["optimizer.lr=-1"], "error: optimizer.lr=-1 is not allowed; it must be a finite number > 0"),
    (["data.root=/nonexistent"], "error: data.root=/nonexistent holds no verified Fashion-MNIST files;"),
    (
        ["tracking.uri=sqlite:////proc/no/such/dir.db"],
        "error: cannot use the tracking store sqlite:////proc/",
    ),
    (["optimiser.lr=1"], "error: unknown key 'optimiser.lr'; did you mean 'optimizer.lr'?"),
    (["+optimiser.lr=1"], "error: unknown key 'optimiser.lr'; did you mean 'optimizer.lr'?"),
    (
        ["trainer.precision=16"],
        "error: unknown key 'trainer.precision'; add a new key with +trainer.precision=",
    ),
    (
        ["norm=group", "norm.num_groups=0"],
        "error: norm.num_groups=0 is not allowed; it must be an integer >= 1",
    ),
    (["norm=group", "+norm.momentum=0.1"], "error: norm.momentum is not an option of norm kind 'group'"),
    (["seed=-1"], "error: seed=-1 is not allowed"),
    (["trainer.accelerator=gpu"], "error: trainer="),
    (
        ["+trainer.enable_progress_bar=true"],
        "error: trainer.enable_progress_bar is set by normlab, not by you: normlab prints one line per epoch",
    ),
    (["checkpoint_dir=/proc/no/such"], "error: checkpoint_dir=/proc/no/such is not writable"),
    (["model.norm_in=bogus"], "error: model.norm_in='bogus' is not allowed; it must be all, conv, fc or"),
    (["optimizer.momentum=-1"], "error: optimizer.momentum=-1 is not allowed; it must be a finite number"),
    (["model.bias_before_norm=maybe"], "error: model.bias_before_norm='maybe' is not allowed; it must be"),
    # A value all cells of a sweep share is refused once, before the sweep starts (not once per cell).
    (["-m", "fuse=maybe", "seed=0,1"], "error: fuse='maybe' is not allowed; it must be auto, true or false"),
    (["data.batch_size"], "error: cannot read the argument 'data.batch_size' (missing EQUAL"),
    (["norm"], "error: cannot read the argument 'norm' (missing EQUAL"),
    (["model.conv1_padding=-5"], "error: model.conv1_padding=-5 is not allowed; it must be an integer >= 0"),
    (["model.norm_position=bogus"], "error: model.norm_position='bogus' is not allowed; it must be"),
    (["optimizer.weight_decay=-1"], "error: optimizer.weight_decay=-1 is not allowed; it must be a finite"),
    (["env:MLFLOW_TRACKING_URI=foo://bar"], "error: cannot use the tracking store foo://bar: MLflow has no"),
    (
        ["env:NORMLAB_DATA={cut_short}"],
        "error: Fashion-MNIST file {cut_short}/train-labels-idx1-ubyte.gz cannot",
    ),
    (["-m", "tracking.uri=http://127.0.0.1:9", "seed=0,1"], "error: cannot reach the tracking server"),
    (["tracking.uri=foo://bar"], "error: cannot use the tracking store foo://bar: MLflow has no store for"),
    (["data.root={cut_short}"], "error: Fashion-MNIST file {cut_short}/train-labels-idx1-ubyte.gz cannot be"),
]


@pytest.mark.parametrize(("override", "message"), BAD_INPUTS)
def test_bad_values_are_rejected_with_key_and_allowed_values(
    override: str, message: str, compose_config
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_config(compose_config(override.split()))


def test_a_config_file_that_is_not_yaml_is_named_with_its_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("study: broken\n  grid: [1, 2\n")
    try:
        yaml.safe_load(broken.read_text())
    except yaml.YAMLError as error:
        wrapped = RuntimeError("Hydra's wrapping")
        wrapped.__cause__ = error
        problem = yaml_problem(wrapped)
    assert problem == "error: <unicode string>, line 2: not valid YAML (mapping values are not allowed here)"
    with broken.open() as stream:  # as Hydra reads it: the file's name in the error
        try:
            yaml.safe_load(stream)
        except yaml.YAMLError as error:
            named = yaml_problem(error)
    assert named == f"error: {broken}, line 2: not valid YAML (mapping values are not allowed here)"


def test_good_edge_values_pass(compose_config) -> None:
    for overrides in (
        ["norm.momentum=null"],
        ["norm.momentum=1.0", "data.batch_size=1"],
        ["data.train_subset=1"],
    ):
        check_config(compose_config(overrides))


def _data_with_a_file_cut_short(folder: Path) -> None:
    """Fashion-MNIST's four files, the training labels cut to half their length (a copy that
    stopped half-way)."""
    if not DEBIAN_ROOT.exists():
        pytest.skip("needs Debian's dataset-fashion-mnist (make data)")
    folder.mkdir()
    for name in FILES:
        (folder / f"{name}.gz").symlink_to(DEBIAN_ROOT / f"{name}.gz")
    labels = folder / "train-labels-idx1-ubyte.gz"
    whole = labels.read_bytes()
    labels.unlink()
    labels.write_bytes(whole[: len(whole) // 2])


@pytest.mark.parametrize(("arguments", "message"), BAD_COMMANDS, ids=lambda v: str(v)[:40])
def test_cli_bad_input_is_one_line_and_records_nothing(
    arguments: list[str], message: str, tmp_path: Path
) -> None:
    cut_short = tmp_path / "data"
    if any("{cut_short}" in argument for argument in arguments):
        _data_with_a_file_cut_short(cut_short)
    arguments = [argument.format(cut_short=cut_short) for argument in arguments]
    message = message.format(cut_short=cut_short)
    # "env:NAME=value" sets the environment; flags go before the overrides
    variables = dict(a.removeprefix("env:").split("=", 1) for a in arguments if a.startswith("env:"))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", **variables}
    flags = [argument for argument in arguments if argument.startswith("-")]
    overrides = [argument for argument in arguments if not argument.startswith(("-", "env:"))]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "normlab.train",
            *flags,
            "data.train_subset=64",
            "trainer.max_epochs=1",
            *overrides,
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), lines  # no traceback, no log noise
    assert not (tmp_path / "mlflow.db").exists()


def test_group_counts_that_divide_not_every_layer_are_said(compose_config) -> None:
    net = build_net(compose_config(["norm=group", "norm.num_groups=7"]))
    assert groups_note(net, 7) == (
        "note: norm.num_groups=7 does not divide every layer's channels; each layer uses the largest "
        "divisor not above it (groups for channels: 6 for 6, 4 for 16, 6 for 120, 7 for 84)"
    )
    assert groups_note(build_net(compose_config(["norm=group", "norm.num_groups=2"])), 2) is None


def test_make_sweep_of_no_study_is_one_line() -> None:
    result = subprocess.run(
        ["make", "-s", "sweep", "EXP=nope"], cwd=CONF_DIR.parent, capture_output=True, text=True
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "no study 'nope'; the studies: batch_size, bias, d2l_bn_lenet," in line
