"""A short real run on a Fashion-MNIST subset into a temporary MLflow store, then a tiny sweep."""

import copy
import math
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf, open_dict

from normlab.config import cells
from normlab.config.cell import read_cell
from normlab.config.cells import canonical, refusal
from normlab.config.paths import EXPERIMENTS_DIR
from normlab.config.rules import effective_lr
from normlab.layers.registry import NORMS
from normlab.report import page as report
from normlab.training.lifecycle import RunFailed
from normlab.training.solo import fit
from tests.helpers import QUICK, run_sweep

pytestmark = pytest.mark.slow


def test_one_run_records_params_tags_epoch_metrics_and_artifacts(compose_config, store: str) -> None:
    overrides = ["norm=scratch", "optimizer.lr=1.0", "seed=3", *QUICK, f"tracking.uri={store}"]
    cfg = compose_config(overrides)
    final = fit(cfg, overrides).metrics

    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("adhoc")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "scratch-bs64-m0.1-lr1.0-s3"
    params = run.data.params
    assert params["norm.kind"] == "scratch" and params["optimizer.lr"] == "1.0"
    assert params["data.train_subset"] == "2048" and params["seed"] == "3"
    tags = run.data.tags
    assert tags["study"] == "adhoc" and tags["device"] == "cpu" and tags["seed"] == "3"
    assert tags["config_fingerprint"] == cells.fingerprint(cfg)
    assert len(tags["git_commit"]) in (40, len("unknown")) and tags["git_dirty"] in ("true", "false")

    for metric in (
        "train/loss",
        "train/acc",
        "val/loss",
        "val/acc",
        "lr",
        "time/epoch_s",
        "perf/samples_per_s",
    ):
        history = client.get_metric_history(run.info.run_id, metric)
        assert [point.step for point in history] == [1, 2], metric  # step = epoch number
    assert run.data.metrics["val/acc"] == pytest.approx(final["val/acc"])
    for mode in ("val/acc_precise", "val/acc_batchstats"):  # BN runs: after training, at the last epoch
        assert [p.step for p in client.get_metric_history(run.info.run_id, mode)] == [2]
        # The same net evaluated with other BN statistics: close to the moving statistics' accuracy.
        assert abs(final[mode] - final["val/acc"]) < 0.1, mode
    assert final["lr"] == 1.0
    # 2048 images, 2 epochs of a BN-LeNet: well above chance (0.1) on the 10k test images.
    assert final["val/acc"] > 0.3 and final["train/acc"] > 0.3

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"config.yaml", "overrides.txt"}
    local = Path(client.download_artifacts(run.info.run_id, "config.yaml"))
    assert yaml.safe_load(local.read_text())["norm"]["kind"] == "scratch"


def test_fingerprint_ignores_where_results_go_and_how_they_are_shown(compose_config) -> None:
    a = compose_config(["seed=1", "tracking.uri=sqlite:///a.db"])
    b = compose_config(["seed=1", "tracking.uri=sqlite:///b.db", "label=typo fixed", "+reference.loss=0.3"])
    c = compose_config(["seed=2"])
    assert cells.fingerprint(a) == cells.fingerprint(b) != cells.fingerprint(c)


def test_an_option_added_at_its_neutral_value_keeps_recorded_fingerprints(compose_config) -> None:
    """Runs recorded before ``model.weight_standardization`` existed keep their fingerprint (a rerun
    skips them); switched on, it is another cell, with -ws in its names."""
    plain = compose_config(["norm=group"])
    recorded_before = copy.deepcopy(plain)
    with open_dict(recorded_before):
        del recorded_before.model["weight_standardization"]
    standardized = compose_config(["norm=group", "model.weight_standardization=true"])
    assert cells.fingerprint(plain) == cells.fingerprint(recorded_before) != cells.fingerprint(standardized)
    assert cells.run_name(standardized) == "group-ws-bs256-lr0.9-s0"


def test_the_budget_section_at_its_neutral_values_keeps_recorded_fingerprints(compose_config) -> None:
    """Runs recorded before ``budget`` existed (one budget, its cooldown read by wsd only) keep
    their fingerprint; a ladder is another cell."""
    plain = compose_config(["norm=group"])
    recorded_before = copy.deepcopy(plain)
    with open_dict(recorded_before):
        del recorded_before["budget"]
    laddered = compose_config(["norm=group", "lr_schedule=wsd", "budget.ladder=[0.5,1.0]"])
    assert cells.fingerprint(plain) == cells.fingerprint(recorded_before) != cells.fingerprint(laddered)


def test_a_corrected_label_trains_nothing_again_and_shows_in_the_table(compose_config, store: str) -> None:
    quick = [
        "data.train_subset=256",
        "data.test_subset=1000",
        "trainer.max_epochs=1",
        f"tracking.uri={store}",
    ]
    first = fit(compose_config([*quick, "label=BN-LeNet-tpyo"]), [])
    again = fit(compose_config([*quick, "label=BN-LeNet", "reference={test_acc:0.8}"]), [])
    assert (first.action, again.action, again.run_id) == ("new", "skip", first.run_id)
    summary = report.summarize(report.load_runs("adhoc", store))
    assert summary["setup"].tolist() == ["BN-LeNet"] and summary["val/acc d2l"].tolist() == [0.8]


def test_study_sweep_from_the_command_line_then_its_table(tmp_path: Path, store: str) -> None:
    """The CLI contract: -m over the d2l study's four setups (shrunk), then the table from MLflow."""
    arguments = [
        "experiment=d2l_bn_lenet",
        "seed=0",
        "data.train_subset=256",
        "data.test_subset=1000",
        "trainer.max_epochs=1",
    ]
    result = run_sweep(arguments, store, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("epoch 1/1") == 4  # the per-epoch progress line, one per run

    summary = report.write("d2l_bn_lenet", store, out_dir=tmp_path / "out")
    assert sorted(summary["setup"].str[:3]) == ["(a)", "(b)", "(c)", "(d)"]
    assert summary["n"].tolist() == [1, 1, 1, 1]
    results = (tmp_path / "out" / "RESULTS.md").read_text()
    assert "0.899" in results and "0.779" in results  # d2l's published figures beside ours
    assert (tmp_path / "out" / "convergence.png").stat().st_size > 10_000


def test_batch_one_native_bn_fails_recorded_scratch_runs(compose_config, store: str) -> None:
    """Native BN raises at batch 1 in FC layers: a FAILED run with its reason; scratch BN trains."""
    overrides = [
        "data.batch_size=1",
        "data.train_subset=64",
        "data.test_subset=1000",
        "trainer.max_epochs=1",
        f"tracking.uri={store}",
    ]
    with pytest.raises(RunFailed, match="Expected more than 1 value per channel"):
        fit(compose_config(["norm=native", *overrides]), [])
    final = fit(compose_config(["norm=scratch", *overrides, "eval.precise_samples=1024"]), []).metrics
    assert 0.0 <= final["val/acc_batchstats"] <= 1.0

    client = MlflowClient(store)
    runs = {
        r.data.tags["norm"]: r
        for r in client.search_runs([client.get_experiment_by_name("adhoc").experiment_id])
    }
    assert runs["native"].info.status == "FAILED"
    assert (
        runs["native"].data.tags["failure"].startswith("ValueError: Expected more than 1 value per channel")
    )
    assert runs["scratch"].info.status == "FINISHED"


def test_ghost_bn_holding_the_whole_batch_is_trained_once_as_bn(compose_config, store: str) -> None:
    """Ghost BN with a virtual batch >= the batch is BN: named, fingerprinted and trained as scratch
    BN, so after the scratch cell it is skipped; batch renorm's virtual batch likewise drops."""
    quick = [
        "data.batch_size=32",
        "data.train_subset=256",
        "data.test_subset=1000",
        "trainer.max_epochs=1",
        f"tracking.uri={store}",
    ]
    ghost = compose_config(["norm=ghost", "norm.virtual_batch_size=32", "report.grid=ghost grid", *quick])
    scratch = compose_config(["norm=scratch", "report.grid=BN grid", *quick])
    assert cells.fingerprint(canonical(ghost)) == cells.fingerprint(scratch)
    assert cells.run_name(canonical(ghost)) == "scratch-bs32-m0.1-lr0.9-s0"
    smaller = compose_config(["norm=ghost", "norm.virtual_batch_size=16", *quick])
    assert canonical(smaller).norm.kind == "ghost"
    renorm = compose_config(["norm=batch_renorm", "norm.virtual_batch_size=64", *quick])
    assert canonical(renorm).norm.virtual_batch_size is None
    assert fit(scratch, []).action == "new"
    skipped = fit(ghost, [])
    assert skipped.action == "skip"  # the run now counts in both grids of the study
    assert MlflowClient(store).get_run(skipped.run_id).data.tags["grids"] == "BN grid; ghost grid"


def test_batch_renorm_over_one_sample_is_refused_with_its_reason(compose_config, store: str) -> None:
    """Its FC layers would pass no gradient below them: a FAILED run saying so, nothing trained."""
    quick = [
        "norm=batch_renorm",
        "data.train_subset=64",
        "data.test_subset=1000",
        "trainer.max_epochs=1",
        f"tracking.uri={store}",
    ]
    with pytest.raises(RunFailed, match="refused: batch renorm over 1 sample in FC layers"):
        fit(compose_config([*quick, "data.batch_size=1"]), [])
    with pytest.raises(RunFailed, match="refused"):
        fit(compose_config([*quick, "data.batch_size=8", "norm.virtual_batch_size=1"]), [])
    assert refusal(compose_config([*quick, "data.batch_size=1", "model.norm_in=conv"])) is None
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("adhoc").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED", "FAILED"]
    assert all(r.data.tags["failure"].startswith("Refused: batch renorm") for r in runs)
    assert not any(r.data.metrics for r in runs)


def test_linear_lr_scaling(compose_config, store: str) -> None:
    cfg = compose_config(
        ["lr_scaling=linear", "optimizer.lr=1.0", "data.batch_size=64", *QUICK[:1], f"tracking.uri={store}"]
    )
    assert effective_lr(cfg) == 0.25
    assert effective_lr(compose_config(["optimizer.lr=1.0", "data.batch_size=64"])) == 1.0


def _middle_cell(experiment: str) -> list[str]:
    """The middle value of each key the study's grid sweeps (seed 0): off the defaults where a
    study varies something new, and never its most extreme lr."""
    grid = OmegaConf.load(EXPERIMENTS_DIR / f"{experiment}.yaml").get("hydra", {}).get("sweeper", {})
    cell = []
    for key, values in grid.get("params", {}).items():
        if key != "seed":
            options = str(values).split(",")
            cell.append(f"{key}={options[len(options) // 2]}")
    return cell


# Every study and grid in experiments/, discovered: a new one is exercised without editing this file.
EXPERIMENTS = sorted(path.stem for path in EXPERIMENTS_DIR.glob("*.yaml"))
# BN-LeNet: 44,878 trainable parameters; less one bias per normalized channel (6+16+120+84 = 226)
# without the bias before BN, less gamma and beta (2 x 226) with them fixed, less the conv layers'
# gamma and beta (2 x 22) with BN in the FC layers only.
PARAMETERS = {"bias": 44_878 - 226, "frozen_affine": 44_878 - 2 * 226, "where": 44_878 - 2 * 22}
# Parameters a norm kind adds to BN's gamma and beta over LeNet's 226 normalized channels (6+16+120+84):
# FRN a tau per channel and a learned eps in each of the 2 FC layers; EvoNorm a v per channel;
# switchable a mean and a variance mix per layer (3 weights each in the 2 conv layers, 2 in the 2 FC).
EXTRA_PARAMETERS = {"frn": 226 + 2, "evonorm_b0": 226, "evonorm_s0": 226, "switchable": 2 * 3 * 2 + 2 * 2 * 2}


def test_the_middle_cells_are_the_interesting_ones() -> None:
    assert _middle_cell("bias") == ["model.bias_before_norm=false"]
    assert _middle_cell("frozen_affine") == ["norm=native", "norm.affine=false"]
    assert _middle_cell("where") == ["model.norm_in=fc"]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_each_study_runs_one_cell(experiment: str, compose_config, store: str) -> None:
    """A study's middle cell on 1,280 images for as few epochs as its ladder allows (a floor in
    steps and a warm-up would ask for thousands of steps here: both off)."""
    cfg = compose_config(
        [
            f"experiment={experiment}",
            *_middle_cell(experiment),
            "data.train_subset=1280",
            "data.test_subset=1000",
            "trainer.max_epochs=1",
            "budget.min_steps=0",
            "warmup_samples=0",
            "eval.precise_samples=256",
            f"tracking.uri={store}",
        ]
    )
    schedule = read_cell(cfg).schedule
    if "__extra_" in experiment:  # a named extra grid: composed and read here, trained by its study
        return
    study, client = cfg.study, MlflowClient(store)
    try:
        final = fit(cfg, []).metrics
    except RunFailed as failed:
        # lite's variance-only BN drifts far above twice guessing's loss, as in its study: the
        # divergence rule ends it at its second epoch, FAILED and said so.
        assert experiment == "lite" and "diverged at epoch 2 (training loss" in str(failed), failed
        (run,) = client.search_runs([client.get_experiment_by_name(study).experiment_id])
        assert run.info.status == "FAILED" and run.data.tags["failure"].startswith("Diverged: diverged at")
        return
    (run,) = client.search_runs([client.get_experiment_by_name(study).experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["study"] == study
    # 1,280 images, a few epochs: too few to learn, but every loss finite, and what the table will
    # read is what the run returned, each epoch once.
    assert all(math.isfinite(final[m]) for m in ("train/loss", "val/loss"))
    assert run.data.metrics["val/acc"] == pytest.approx(final["val/acc"])
    history = client.get_metric_history(run.info.run_id, "val/acc")
    assert [p.step for p in history] == list(range(1, schedule.epochs + 1))
    # every budget of the study's ladder recorded, at step = its epochs (one budget: none, the run's end)
    budgets = client.get_metric_history(run.info.run_id, "budget/val/acc")
    assert sorted(p.step for p in budgets) == (list(schedule.ladder) if schedule.shape == "wsd" else [])
    has_bn = NORMS[cfg.norm.kind].running_statistics and cfg.model.norm_in != "none"
    assert ({"val/acc_precise", "val/acc_batchstats"} <= set(final)) == has_bn
    expected = PARAMETERS.get(study, 44_878) + EXTRA_PARAMETERS.get(cfg.norm.kind, 0)
    assert run.data.tags["parameters"] == str(expected)
