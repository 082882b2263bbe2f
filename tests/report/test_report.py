"""Tables from a store whose runs we wrote ourselves, so every number in them is known."""

import io
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from rich.console import Console
from scipy import stats

from normlab.report import page as report
from normlab.tracking import addresses as ui

FINAL_VAL_ACC = {"bn": [0.80, 0.84, 0.86], "plain": [0.70, 0.74]}


def _fill(store: str) -> None:
    client = MlflowClient(store)
    experiment = client.create_experiment("toy")
    for setup, values in FINAL_VAL_ACC.items():
        for seed, value in enumerate(values):
            run = client.create_run(
                experiment,
                tags={
                    "setup": setup,
                    "seed": str(seed),
                    "git_commit": "a" * 40,
                    "git_dirty": "false",
                    "machine": "testbox",
                    "device": "cpu",
                },
            )
            metrics = [
                Metric("val/acc", value - 0.1, 0, 1),
                Metric("val/acc", value, 0, 2),
                Metric("train/acc", value + 0.05, 0, 2),
                Metric("train/loss", 1 - value, 0, 2),
            ]
            params = [Param("reference.test_acc", "0.807")] if setup == "bn" else []
            client.log_batch(run.info.run_id, metrics=metrics, params=params)
            client.set_terminated(run.info.run_id, "FINISHED")
    failed = client.create_run(
        experiment,
        tags={"setup": "plain", "seed": "9", "git_commit": "a" * 40, "failure": "ValueError: boom"},
    )
    client.log_batch(failed.info.run_id, metrics=[Metric("val/acc", 0.1, 0, 1)])
    client.set_terminated(failed.info.run_id, "FAILED")


def test_mean_sd_n_of_final_epoch_per_setup(store: str, tmp_path: Path) -> None:
    _fill(store)
    summary = report.write("toy", store, out_dir=tmp_path).set_index("setup")
    for setup, values in FINAL_VAL_ACC.items():
        row = summary.loc[setup]
        assert row["n"] == len(values)
        assert row["val/acc mean"] == pytest.approx(statistics.mean(values))
        assert row["val/acc sd"] == pytest.approx(statistics.stdev(values))
        assert row["train/loss mean"] == pytest.approx(1 - statistics.mean(values))
    assert summary.loc["plain", "failed"] == 1  # counted, not averaged in
    assert summary.loc["bn", "val/acc d2l"] == pytest.approx(0.807)

    results = (tmp_path / "RESULTS.md").read_text()
    bn = FINAL_VAL_ACC["bn"]
    half = stats.t.ppf(0.975, 2) * statistics.stdev(bn) / math.sqrt(3)
    ci = f"[{statistics.mean(bn) - half:.3f}, {statistics.mean(bn) + half:.3f}]"
    assert f"| bn | 3 | 0.167 ± 0.031 | 0.883 ± 0.031 | 0.833 ± 0.031 | 0.807 | {ci} |  |" in results
    assert "| plain | 2 |" in results and "| 1 failed: ValueError: boom |" in results
    assert "machine: testbox" in results and "trained at: aaaaaaaaaa" in results
    assert "make table EXP=toy" in results
    csv = pd.read_csv(tmp_path / "results.csv").set_index("setup")
    assert csv.loc["bn", "val/acc ci95"] == pytest.approx(half)
    assert csv.loc["plain", "failure"] == "ValueError: boom"


def test_summary_run_carries_the_report_and_is_replaced(store: str, tmp_path: Path) -> None:
    _fill(store)
    report.write("toy", store, out_dir=tmp_path)
    report.write("toy", store, out_dir=tmp_path)  # a second table replaces the first summary run
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("toy").experiment_id
    (summary,) = client.search_runs([experiment], filter_string="tags.kind = 'summary'")
    assert {a.path for a in client.list_artifacts(summary.info.run_id)} >= {"RESULTS.md", "results.csv"}
    assert len(report.load_runs("toy", store)) == 6  # the summary run is not a training run


def test_missing_study_is_one_sentence(store: str) -> None:
    with pytest.raises(report.ReportError, match="no MLflow experiment 'nothing'.*make sweep EXP=nothing"):
        report.load_runs("nothing", store)


def test_comparison_can_say_not_reproduced(store: str, tmp_path: Path) -> None:
    _fill(store)
    summary = report.summarize(report.load_runs("toy", store))
    (line,) = report.comparison(summary)  # only "bn" has a published figure
    # ours 0.833 ± 0.031 (n=3) vs 0.807: inside the prediction interval 0.833 ± 4.30 * 0.031 * sqrt(4/3)
    assert "val/acc" in line and line.endswith("**reproduced**")
    assert "95% prediction interval [0.682, 0.985]" in line  # mean ± 2 sd would say [0.772, 0.894]
    summary.loc[summary["setup"] == "bn", "val/acc d2l"] = 0.70
    (line,) = report.comparison(summary)
    assert line.endswith("**reproduced**") and "diff +0.133" in line  # outside 2 sd, inside the interval
    summary.loc[summary["setup"] == "bn", "val/acc d2l"] = 0.66
    (line,) = report.comparison(summary)
    assert line.endswith("**not reproduced**") and "diff +0.173" in line


def test_confidence_interval_is_clipped_to_accuracy_range() -> None:
    assert report._ci(0.331, 0.43) == "[0.000, 0.761]"
    assert report._ci(0.95, 0.1) == "[0.850, 1.000]"
    assert report._ci(0.5, math.nan) == "–"


def test_a_rerun_cell_counts_once_latest_finished_first(store: str, tmp_path: Path) -> None:
    _fill(store)
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("toy").experiment_id
    tags = {"setup": "bn", "seed": "0", "git_commit": "b" * 40, "parameters": "42"}
    again = client.create_run(experiment, tags=tags)
    client.log_batch(again.info.run_id, metrics=[Metric("val/acc", 0.5, 0, 2)])
    client.set_terminated(again.info.run_id, "FINISHED")
    crashed = client.create_run(experiment, tags={**tags, "failure": "later, and failed"})
    client.set_terminated(crashed.info.run_id, "FAILED")
    runs = report.load_runs("toy", store)
    bn = runs[runs["tags.setup"] == "bn"]
    assert len(bn) == 3 and set(bn["tags.seed"]) == {"0", "1", "2"}
    assert bn.loc[bn["tags.seed"] == "0", "run_id"].item() == again.info.run_id


def test_question_and_parameter_counts_appear_when_set(store: str, tmp_path: Path) -> None:
    _fill(store)
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("toy").experiment_id
    for run in client.search_runs([experiment]):
        client.set_tag(run.info.run_id, "parameters", "44878" if run.data.tags["setup"] == "bn" else "44652")
        client.log_param(run.info.run_id, "report.question", "Does it matter?")
        client.log_param(run.info.run_id, "report.baseline", "bn")
    report.write("toy", store, out_dir=tmp_path)
    results = (tmp_path / "RESULTS.md").read_text()
    assert "**Question.** Does it matter?" in results
    assert "| setup | n | parameters |" in results and "| bn | 3 | 44,878 |" in results
    assert "**F7** — Does it matter?" in results and "against bn, val/acc: plain" in results
    assert (tmp_path / "final_accuracy.png").stat().st_size > 5_000


def test_a_study_with_grids_plots_the_statistics_batch_and_gates_convergence(
    store: str, tmp_path: Path
) -> None:
    """Runs tagged like norm_batch's: ghost BN over virtual batches at one SGD batch, group norm as
    a control; the page shows the statistics batch, the convergence gate and F6 per grid."""
    client = MlflowClient(store)
    experiment = client.create_experiment("grids")
    cells = [
        ("ghost", 2, 0.70, 0.68),
        ("ghost", 8, 0.80, 0.80),
        ("ghost", None, 0.82, 0.82),
        ("group", None, 0.8, 0.8),
    ]
    for norm, virtual, final, before in cells:
        for seed in range(3):
            tags = {"setup": f"{norm}-{virtual}", "seed": str(seed), "norm": norm, "batch_size": "128",
                    "git_commit": "a" * 40, "git_dirty": "false"}  # fmt: skip
            run = client.create_run(experiment, tags=tags)
            value = final + 0.002 * seed
            metrics = [Metric("val/acc", before + 0.002 * seed, 0, 1), Metric("val/acc", value, 0, 2)]
            metrics += [Metric("train/loss", 0.5, 0, 1), Metric("train/loss", 0.499, 0, 2)]
            params = [Param("report.grid", "SGD batch 128"), Param("norm.virtual_batch_size", str(virtual))]
            client.log_batch(run.info.run_id, metrics=metrics, params=params)
            client.set_terminated(run.info.run_id, "FINISHED")
    summary = report.write("grids", store, out_dir=tmp_path).set_index("setup")
    assert (
        summary.loc["ghost-2", "statistics_batch"] == 2
        and summary.loc["ghost-None", "statistics_batch"] == 128
    )
    assert summary.loc["ghost-8", "converged"] and not summary.loc["ghost-2", "converged"]
    results = (tmp_path / "RESULTS.md").read_text()
    assert "| **no** (test acc +2.0 pt, train loss 0.2% change) |" in results
    assert "**Converged** (`report.converged`)" in results
    assert (tmp_path / "accuracy_vs_statistics_batch.png").stat().st_size > 10_000


def test_table_of_an_unknown_study_is_one_line_naming_the_studies(store: str) -> None:
    environment = {**os.environ, "MLFLOW_TRACKING_URI": store}
    result = subprocess.run(
        [sys.executable, "-m", "normlab.report", "bogus"], capture_output=True, text=True, env=environment
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: no study 'bogus'; the studies: batch_size, bias, d2l_bn_lenet")


def test_the_terminal_summary_fits_80_columns_one_line_per_setup(store: str, tmp_path: Path) -> None:
    _fill(store)
    summary = report.summarize(report.load_runs("toy", store))
    long_name = "lenet_bn-batch_renorm-vb16-bs128-m0.1-lr1.0"
    summary["setup"] = [long_name, "(d) BN-LeNet arch., no norm, lr 0.9"]
    console = Console(width=80, record=True, file=io.StringIO())
    report.print_summary(summary, console)
    lines = console.export_text().splitlines()
    assert max(map(len, lines)) <= 80
    assert any(long_name in line and "0.833 ± 0.031" in line for line in lines)  # one row, unbroken


def test_each_study_has_a_chart_view_by_setup_in_model_training_mode(store: str) -> None:
    """The address carries the mode and the chart view; the rest of the view (cells only, grouped
    by setup, val/acc charts) is the shared view it names, an experiment tag."""
    _fill(store)
    ((study, page),) = ui.study_pages(store, "http://127.0.0.1:5000")
    experiment = MlflowClient(store).get_experiment_by_name("toy")
    assert study == "toy"
    assert page == (
        f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning"
        "&compareRunsMode=CHART&viewStateShareKey=normlab-setups"
    )
    view = json.loads(experiment.tags["mlflow.sharedViewState.normlab-setups"])
    assert view["searchFilter"] == "tags.kind = 'cell'"
    assert view["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": "setup"}]


def test_curves_count_one_value_per_run_metric_and_epoch(store: str) -> None:
    """A run resumed by older code holds an epoch twice: the report reads it once (the last)."""
    client = MlflowClient(store)
    experiment = client.create_experiment("dupes")
    run_id = client.create_run(experiment).info.run_id
    logged = [(1, 0.5), (2, 0.55), (2, 0.6), (3, 0.7)]  # (step, value), in this order
    metrics = [Metric("val/acc", value, 1000 + i, step) for i, (step, value) in enumerate(logged)]
    client.log_batch(run_id, metrics=metrics)
    runs = pd.DataFrame([{"run_id": run_id, "status": "FINISHED", "tags.setup": "s"}])
    history = report.curves(runs, store)
    accuracy = history[history["metric"] == "val/acc"]
    assert list(accuracy["epoch"]) == [1, 2, 3]
    assert list(accuracy["value"]) == [0.5, 0.6, 0.7]


def test_a_study_with_budgets_gets_a_budget_table_and_verdicts_across_budgets(
    store: str, tmp_path: Path
) -> None:
    """Runs with budget/* results at 2, 4 and 8 epochs: the page shows every budget, whether each
    setup settled, F7 judged at every budget and across them, and no last-epoch gate."""
    client = MlflowClient(store)
    experiment = client.create_experiment("laddered")
    # "after" is 3 points better at every budget (+ the same per-seed noise as "before"); both
    # still gain 2 points from 4 to 8 epochs: neither has settled.
    for setup, gain in (("before", 0.0), ("after", 0.03)):
        for seed in range(6):
            noise = 0.002 * (seed - 2.5)
            run = client.create_run(
                experiment, tags={"setup": setup, "seed": str(seed), "git_commit": "b" * 40}
            )
            budgets = {2: 0.84, 4: 0.86, 8: 0.88}
            metrics = [Metric("val/acc", budgets[8] + gain + noise, 0, 8), Metric("train/loss", 0.3, 0, 8)]
            own = 0.0003 * seed if setup == "after" else 0.0  # the difference varies a little by seed
            for epochs, accuracy in budgets.items():
                metrics += [
                    Metric("budget/val/acc", accuracy + gain + noise + own, 0, epochs),
                    Metric("budget/steps", 100 * epochs, 0, epochs),
                    Metric("budget/samples", 6400 * epochs, 0, epochs),
                ]
            params = [Param("report.question", "Before or after?"), Param("report.baseline", "before")]
            client.log_batch(run.info.run_id, metrics=metrics, params=params)
            client.set_terminated(run.info.run_id, "FINISHED")
    report.write("laddered", store, out_dir=tmp_path)
    page = (tmp_path / "RESULTS.md").read_text()
    assert "## Budgets" in page and "Converged" not in page
    assert "| after | 6 | 200 / 400 / 800 | 12,800 / 25,600 / 51,200 |" in page
    assert page.count("**no** (+2.0 pt") == 2  # neither setup settled between 4 and 8 epochs
    assert "**At a glance**" in page and "after: robust: better at 4 epochs and 8 epochs" in page
    assert "better / better / better | **robust**" in page
    assert (tmp_path / "accuracy_per_budget.png").is_file()


def test_wall_time_leaves_out_the_gaps_between_sweeps() -> None:
    """Two overlapping runs (10:00-10:20, 10:10-10:30) and a grid added an hour later (11:30-11:40):
    40 minutes with a run in progress, not the 100 from first start to last end."""
    at = lambda hhmm: pd.Timestamp(f"2026-12-06 {hhmm}")  # noqa: E731
    starts = pd.Series([at("10:00"), at("10:10"), at("11:30")])
    ends = pd.Series([at("10:20"), at("10:30"), at("11:40")])
    assert report.wall_minutes(starts, ends) == pytest.approx(40.0)
    assert report.wall_minutes(starts[:1], ends[:1]) == pytest.approx(20.0)


def test_failures_that_differ_only_in_their_numbers_are_one_with_ranges() -> None:
    reasons = [
        f"Diverged: diverged at epoch 2 (training loss {loss} > 2 ln 10 = 4.61)" for loss in (11.41, 4.805)
    ]
    assert (
        report.failures(reasons)
        == "Diverged: diverged at epoch 2 (training loss 4.805-11.41 > 2 ln 10 = 4.61)"
    )
    assert report.failures(["ValueError: a", "Refused: b", "ValueError: a"]) == "Refused: b; ValueError: a"
