"""A study's results table, plots and findings, built from its MLflow runs alone.

``python -m normlab.report <study>`` (``make table EXP=<study>``) writes
``experiments/<study>/RESULTS.md``, ``results.csv`` and PNG plots, and logs them as artifacts of
the study's latest sweep (its parent run) in MLflow.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import re
import sys
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from rich import box
from rich.console import Console
from rich.table import Table
from scipy import stats

from normlab import config
from normlab.config import cells
from normlab.config.paths import EXPERIMENTS_DIR
from normlab.config.rules import divergence
from normlab.report import convergence, findings, ladder, plots, walltime
from normlab.report.statistics import prediction_interval
from normlab.tracking import store as tracking
from normlab.tracking.addresses import setups_chart
from normlab.tracking.names import FAILURE_TAG, KIND_TAG

METRICS = ("train/loss", "train/acc", "val/acc", "val/acc_precise", "val/acc_batchstats")
# Published figures (logged with a setup's config) and the metric each is compared with.
REFERENCES = {
    "train/loss": "reference.loss",
    "train/acc": "reference.train_acc",
    "val/acc": "reference.test_acc",
}
SWEPT = plots.SWEPT
# Worse than guessing uniformly (ln 10) by a wide margin: the run blew up even if no NaN appeared.


class ReportError(RuntimeError):
    """The study has no runs to report; the message says which command makes them."""


def _frame(runs: list[Run]) -> pd.DataFrame:
    """Runs as rows (``run_id``, ``status``, ``start_time``, ``end_time``, ``metrics.*``,
    ``params.*``, ``tags.*``), the columns ``mlflow.search_runs`` gives, without its global store."""
    rows = []
    for run in runs:
        info, recorded = run.info, run.data
        rows.append({
            "run_id": info.run_id,
            "status": info.status,
            "start_time": pd.Timestamp(info.start_time, unit="ms", tz="UTC"),
            "end_time": pd.Timestamp(info.end_time, unit="ms", tz="UTC") if info.end_time else pd.NaT,
            **{f"metrics.{key}": value for key, value in recorded.metrics.items()},
            **{f"params.{key}": value for key, value in recorded.params.items()},
            **{f"tags.{key}": value for key, value in recorded.tags.items()},
        })  # fmt: skip
    return pd.DataFrame(rows)


def load_runs(study: str, uri: str) -> pd.DataFrame:
    """One row per training run of the study in the store at ``uri``: status, tags, params and
    last-epoch metrics."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(study)
    if experiment is None:
        raise ReportError(f"no MLflow experiment {study!r} in {uri}; run: make sweep EXP={study}")
    runs = _frame(tracking.all_runs(client, experiment.experiment_id))
    if f"tags.{KIND_TAG}" in runs:  # parent runs of sweeps and summary runs carry no training
        runs = runs[~runs[f"tags.{KIND_TAG}"].isin(["summary", "sweep"])]
    if runs.empty:
        raise ReportError(f"experiment {study!r} has no runs yet; run: make sweep EXP={study}")
    return latest_per_cell(runs).reset_index(drop=True)


def latest_per_cell(runs: pd.DataFrame) -> pd.DataFrame:
    """One run per (setup, seed) (``cells.TABLE_IDENTITY``): the latest FINISHED one, else the
    latest. A study rerun after a config change (or with force=true) would otherwise count a
    seed twice."""
    finished = (runs["status"] == "FINISHED").astype(int)
    order = runs.assign(_finished=finished).sort_values(["_finished", "start_time"], ascending=False)
    identity = [f"tags.{tag}" for tag in cells.TABLE_IDENTITY]
    return order.drop_duplicates(identity).drop(columns="_finished").sort_index()


def _column(runs: pd.DataFrame, name: str) -> pd.Series:
    return runs[name] if name in runs else pd.Series(float("nan"), index=runs.index)


def _number(text: object) -> float:
    """A tag as a number for sorting and plotting; ``None`` (cumulative momentum) -> inf."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.inf


def _stats(values: pd.Series) -> tuple[float, float, float]:
    """Mean, sd and the half-width of the 95% confidence interval of the mean (Student's t)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan, math.nan
    if n == 1:
        return float(values.iloc[0]), math.nan, math.nan
    sd = float(values.std(ddof=1))
    return float(values.mean()), sd, float(stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n))


def _grids(group: pd.DataFrame) -> str | None:
    """The grids any of the setup's runs serves (its tag, else the grid it was launched in)."""
    grids: list[str] = []
    for _, run in group.iterrows():
        for grid in tracking.grids_of(run.get(f"tags.{tracking.GRIDS_TAG}"), run.get("params.report.grid")):
            grids += [] if grid in grids else [grid]
    return "; ".join(grids) or None


def _statistics_batch(run: pd.Series) -> float:
    """What a run's BN normalized over: its virtual batch where smaller than the batch, else the batch."""
    batch = _number(run.get("tags.batch_size"))
    virtual = _number(run.get("params.norm.virtual_batch_size"))
    return min(batch, virtual) if math.isfinite(virtual) else batch


NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def failures(reasons: Iterable[str]) -> str:
    """The distinct failure reasons of a setup's runs, "; "-separated; reasons that differ only in
    their numbers (five seeds diverged, each at its own loss) as one, each number that differs as
    its range: "diverged at epoch 2 (training loss 4.805-11.41 > ...)"."""
    distinct = sorted(set(reasons))
    shapes = {NUMBER.sub("#", reason) for reason in distinct}
    if len(distinct) < 2 or len(shapes) > 1:
        return "; ".join(distinct)
    columns = zip(*(NUMBER.findall(reason) for reason in distinct), strict=True)
    spans = iter(
        values[0] if len(set(values)) == 1 else f"{min(values, key=float)}-{max(values, key=float)}"
        for values in columns
    )
    return NUMBER.sub(lambda _: next(spans), distinct[0])


def _finished_diverged(finished: pd.DataFrame) -> int:
    """Finished runs that diverged by the rule that now ends a run FAILED (``rules.divergence``),
    judged at their last epoch: runs recorded before the rule stopped them. (A finished run has
    no non-finite loss: a missing one is not judged.)"""
    losses = pd.to_numeric(_column(finished, "metrics.train/loss"), errors="coerce")
    epochs = pd.to_numeric(_column(finished, "params.trainer.max_epochs"), errors="coerce").fillna(1)
    return sum(
        divergence({"train/loss": loss}, int(epoch)) is not None
        for loss, epoch in zip(losses, epochs, strict=True)
        if math.isfinite(loss)
    )


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Per setup: sweep values, n finished, failures with reasons, and statistics over seeds."""
    rows = []
    for setup, group in runs.groupby("tags.setup", sort=False):
        finished = group[group["status"] == "FINISHED"]
        failed = group[group["status"] == "FAILED"]
        row: dict[str, object] = {
            "setup": setup,
            "norm": _column(group, "tags.norm").iloc[0],
            **{key: _number(_column(group, f"tags.{key}").iloc[0]) for key in SWEPT},
            "effective_lr": pd.to_numeric(_column(finished, "metrics.lr"), errors="coerce").mean(),
            # A check grid's multiple of the scaled lr (params recorded before it existed: 1).
            "lr_factor": pd.to_numeric(_column(group, "params.lr_factor"), errors="coerce")
            .fillna(1.0)
            .iloc[0],
            "n": len(finished),
            "failed": len(failed),
            "diverged": _finished_diverged(finished)
            + int(_column(failed, f"tags.{FAILURE_TAG}").astype(str).str.startswith("Diverged").sum()),
            "failure": failures(_column(failed, f"tags.{FAILURE_TAG}").dropna().astype(str)),
            "seeds": ",".join(sorted(finished["tags.seed"].astype(str), key=int)),
            "parameters": pd.to_numeric(_column(group, "tags.parameters"), errors="coerce").max(),
            "statistics_batch": _statistics_batch(group.iloc[0]),
            # The grids the setup serves ("; "-separated: a cell two grids list trains once).
            "grid": _grids(group),
        }
        by_seed = finished.assign(_seed=finished["tags.seed"].astype(int)).sort_values("_seed")
        for metric in METRICS:
            values = pd.to_numeric(_column(finished, f"metrics.{metric}"), errors="coerce").dropna()
            row[f"{metric} mean"], row[f"{metric} sd"], row[f"{metric} ci95"] = _stats(values)
            # Per seed, in seed order: a paired test needs them (F7).
            row[f"{metric} values"] = tuple(
                pd.to_numeric(_column(by_seed, f"metrics.{metric}"), errors="coerce")
            )
            if metric in REFERENCES:
                # A tag (set again when a skipped cell's figures are corrected), else the param
                # that runs recorded before the figures became tags.
                published = pd.to_numeric(
                    _column(group, f"tags.{REFERENCES[metric]}").fillna(
                        _column(group, f"params.{REFERENCES[metric]}")
                    ),
                    errors="coerce",
                ).dropna()
                row[f"{metric} d2l"] = published.iloc[0] if len(published) else math.nan
        rows.append(row)
    summary = pd.DataFrame(rows)
    labelled = (_column(runs, "params.label").astype(str) != "None").all()
    order = ["setup"] if labelled else ["norm", *SWEPT, "setup"]
    return summary.sort_values(order, kind="stable").reset_index(drop=True)


def present_metrics(summary: pd.DataFrame) -> list[str]:
    return [m for m in METRICS if summary[f"{m} mean"].notna().any()]


def _cell(mean: float, sd: float) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.3f}" if math.isnan(sd) else f"{mean:.3f} ± {sd:.3f}"


def _ci(mean: float, half_width: float) -> str:
    """The 95% CI of a mean accuracy, clipped to [0, 1] where t's interval (n = 3) runs past them."""
    if math.isnan(half_width):
        return "–"
    return f"[{max(mean - half_width, 0.0):.3f}, {min(mean + half_width, 1.0):.3f}]"


def _published(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.3f}"


def _gate_cell(row: dict) -> str:
    """'yes', or 'no' with the last epoch's numbers (the gate's thresholds are in the page's note)."""
    if row["converged"] is None or (isinstance(row["converged"], float) and math.isnan(row["converged"])):
        return "at chance" if str(row["convergence"]).startswith("at chance") else "–"
    detail = str(row["convergence"]).removeprefix("last epoch: ")
    return "yes" if row["converged"] else f"**no** ({detail})"


def markdown_table(summary: pd.DataFrame) -> str:
    """One row per setup: mean ± sd over seeds per metric, d2l's figure where published, the 95% CI
    of val/acc, and why cells failed."""
    metrics = present_metrics(summary)
    with_reference = [m for m in metrics if m in REFERENCES and summary[f"{m} d2l"].notna().any()]
    # Trainable parameters, where setups differ in them (bias removed, gamma and beta fixed).
    counted = summary["parameters"].notna().all() and summary["parameters"].nunique() > 1
    head = ["setup", "n"] + (["parameters"] if counted else [])
    for metric in metrics:
        head += [metric] + (["d2l"] if metric in with_reference else [])
        head += ["val/acc 95% CI"] if metric == "val/acc" else []
    gated = bool("converged" in summary and summary["converged"].notna().any())
    head += ["converged"] * gated + ["notes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in summary.to_dict("records"):
        cells = [row["setup"], str(row["n"])] + ([f"{row['parameters']:,.0f}"] if counted else [])
        for metric in metrics:
            cells.append(_cell(row[f"{metric} mean"], row[f"{metric} sd"]))
            cells += [_published(row[f"{metric} d2l"])] if metric in with_reference else []
            cells += [_ci(row[f"{metric} mean"], row[f"{metric} ci95"])] if metric == "val/acc" else []
        if gated:
            cells.append(_gate_cell(row))
        notes = [f"{row['failed']} failed: {row['failure']}"] if row["failed"] else []
        notes += [f"{row['diverged']} diverged"] if row["diverged"] else []
        cells.append("; ".join(notes).replace("|", "/"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparison(summary: pd.DataFrame) -> list[str]:
    """For each published figure: ours - d2l, and whether d2l's single run lies in the 95%
    prediction interval of one new run from our seeds (mean ± t(n-1) sd sqrt(1 + 1/n))."""
    lines = []
    for row in summary.to_dict("records"):
        for metric in REFERENCES:
            mean, sd, published = row[f"{metric} mean"], row[f"{metric} sd"], row[f"{metric} d2l"]
            if math.isnan(published) or math.isnan(mean) or math.isnan(sd):
                continue
            low, high = prediction_interval(mean, sd, int(row["n"]))
            verdict = "reproduced" if low <= published <= high else "not reproduced"
            lines.append(
                f"- {row['setup']}, {metric}: ours {mean:.3f} ± {sd:.3f} (n={row['n']}), "
                f"d2l {published:.3f}, diff {mean - published:+.3f}, 95% prediction interval "
                f"[{low:.3f}, {high:.3f}] → **{verdict}**"
            )
    return lines


def curves(runs: pd.DataFrame, uri: str) -> pd.DataFrame:
    """Per-epoch history (setup, run_id, metric, epoch, value, seed) of the finished runs, and each
    budget's results (``budget/*`` at epoch = the budget): one value per (run, metric, epoch),
    the last logged (a run resumed by code older than ``EpochRecorder`` may
    hold an epoch twice, which would count as one more seed)."""
    client = MlflowClient(uri)
    rows = []
    finished = runs[runs["status"] == "FINISHED"]
    wanted = sorted({*plots.CURVE_METRICS, *convergence.GATE_METRICS, *ladder.BUDGET_METRICS, *ladder.SIZES})
    seeds = pd.to_numeric(_column(finished, "tags.seed"), errors="coerce").fillna(-1).astype(int)
    for run_id, setup, seed in zip(finished["run_id"], finished["tags.setup"], seeds, strict=True):
        for metric in wanted:
            points = sorted(client.get_metric_history(run_id, metric), key=lambda point: point.timestamp)
            rows += [(setup, run_id, metric, point.step, point.value, seed) for point in points]
    history = pd.DataFrame(rows, columns=["setup", "run_id", "metric", "epoch", "value", "seed"])
    return ladder.with_rungs(
        history.drop_duplicates(["run_id", "metric", "epoch"], keep="last").reset_index(drop=True)
    )


def _training_profile(runs: pd.DataFrame) -> str:
    parts = []
    for key in ("data.train_subset", "trainer.max_epochs", "lr_scaling"):
        values = sorted(set(_column(runs, f"params.{key}").dropna().astype(str)))
        parts.append(f"{key}={'/'.join(values) or '?'}")
    subset = set(_column(runs, "params.data.train_subset").astype(str))
    note = "" if subset == {"None"} else " (a training subset: the CPU profile; `profile=full` uses all 60k)"
    return ", ".join(parts) + note


def wall_minutes(starts: pd.Series, ends: pd.Series) -> float:
    """Minutes during which at least one run was in progress: the union of the runs' intervals (a
    study trained in pieces, e.g. one grid added later, does not count the time between them)."""
    total, reach = 0.0, None
    for start, end in sorted(zip(starts, ends, strict=True)):
        if reach is None or start > reach:
            total, reach = total + (end - start).total_seconds(), end
        elif end > reach:
            total, reach = total + (end - reach).total_seconds(), end
    return total / 60


def header(study: str, runs: pd.DataFrame, table_commit: str) -> str:
    commits = sorted(
        f"{c[:10]}{' (dirty)' if d == 'true' else ''}"
        for c, d in set(zip(runs["tags.git_commit"], _column(runs, "tags.git_dirty"), strict=True))
    )
    machines = sorted(set(_column(runs, "tags.machine").dropna()))
    devices = sorted(set(_column(runs, "tags.device").dropna()))
    first, last = runs["start_time"].min(), runs["end_time"].fillna(runs["start_time"]).max()
    busy = (runs["end_time"].fillna(runs["start_time"]) - runs["start_time"]).sum().total_seconds()
    wall = wall_minutes(runs["start_time"], runs["end_time"].fillna(runs["start_time"]))
    return "\n".join(
        [
            f"# Results: `{study}`",
            "",
            f"Generated by `make table EXP={study}` from the MLflow runs of study `{study}` "
            f"(rerun the study itself with `make sweep EXP={study}`).",
            "",
            f"- runs: {len(runs)}, from {first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M} UTC "
            f"({wall:.1f} min wall time, with a run in progress: gaps between sweeps left out; "
            f"{busy / 60:.1f} min summed over runs, which overlap when a sweep runs cells in parallel)",
            f"- training: {_training_profile(runs)}",
            f"- machine: {'; '.join(machines) or 'unknown'}; device: {', '.join(devices) or 'unknown'}",
            f"- commit the runs trained at: {', '.join(commits)}",
            f"- table generated: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC by commit {table_commit}",
        ]
    )


def _table_commit() -> str:
    commit, dirty = tracking.git_state()
    return f"{commit[:10]}{' (dirty)' if dirty else ''}"


def design(study: str) -> list[str]:
    """The study's design as its YAML's leading comment says it (why this budget, lr rule, grid)."""
    path = EXPERIMENTS_DIR / f"{study}.yaml"
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    leading = itertools.takewhile(lambda line: line.startswith("#"), lines)
    kept = [line[1:].removeprefix(" ") for line in leading if "@package" not in line]
    if not kept:
        return []
    return ["", f"**Design** (from `experiments/{study}.yaml`):", "", "```text", *kept, "```"]


TABLE_NOTE = (
    "Final-epoch values, mean ± sd over seeds (n = finished runs; 95% CI of the mean by Student's t). "
    "`train/*` are running averages over the last epoch in train mode; `val/acc` is on the 10k test "
    "split in eval mode (moving statistics); `val/acc_precise` re-estimates BN statistics as the "
    "population mean and variance of each BN layer's inputs over 10k training images (PreciseBN); "
    "`val/acc_batchstats` normalizes each test batch (of the "
    "training batch size) by its own statistics."
)


FINDINGS_NOTE = (
    "Verdicts computed from the numbers above (src/normlab/findings.py). Differences are t tests over "
    "independent seeds (Welch's, or paired where setups share seeds, weight init and data order; "
    "a difference of drops uses Welch-Satterthwaite's degrees of freedom), Holm-corrected over each "
    "finding's comparisons, at level 0.05, and count only from one point of accuracy up; spreads use "
    "the F test. A finding that needs a setup that is not converged says *not measurable*."
)


BUDGETS_NOTE = (
    "Each budget is a whole run of that length under warm-up-stable-decay: constant lr, then a 1-sqrt "
    "decay to 0 over the budget's last 20% of steps. One run per seed trains to the largest budget and "
    "forks a decaying branch at each smaller one (the same init and data order), so budgets pair by "
    "seed. Values: mean ± sd over seeds of the test accuracy in eval mode (`budget/val/acc`) and with "
    "PreciseBN statistics (`budget/val/acc_precise`). **Settled**: the cell moved less than half a "
    "point between the two largest budgets, shown by a paired equivalence test (TOST, 90% CI inside "
    "±0.5 point)."
)

LADDER_NOTE = (
    "Verdicts computed from the budgets above (src/normlab/report/ladder.py). At each budget a setup is "
    "*better* or *worse* than the baseline (two-sided t, paired where setups share seeds, Holm over the "
    "setups, p < 0.05, and at least one point), *within a point* (TOST: the 90% CI of the difference "
    "inside ±1 point, Holm), or *undecided*. Across budgets a verdict is **robust** where it holds at the "
    "two largest budgets and would still hold if the next doubling moved the effect as much as the last "
    "one did; **budget-dependent** otherwise; **not measurable** only where a cell is missing, at chance "
    "or diverged. Where the effect moved more over the last doubling than over the one before, the "
    "extrapolation's assumption fails and the table says so."
)


LR_CHECK_NOTE = (
    "The check grid (`report.grid=lr_check`) trains every (norm, batch size) at half and twice its "
    "scaled lr (`lr_factor`), at the main grid's smallest budget; each finding is judged there at every "
    "lr. A finding is **lr-dependent** where its verdict changes at an lr whose cells reach a higher "
    "mean test accuracy than the scaled lr's (the mean over all the cells it compares)."
)


def lr_check_table(checks: list[findings.LrCheck]) -> str:
    factors = sorted({factor for check in checks for factor in check.verdicts})
    head = ["finding", *(f"lr x{f:g} (mean acc)" for f in factors), "lr-dependent?"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for check in checks:
        cells = [
            f"{check.verdicts[f]} ({check.means[f]:.3f})" if f in check.verdicts else "–" for f in factors
        ]
        lines.append(
            "| " + " | ".join([check.name, *cells, check.dependent or "no"]).replace("\n", " ") + " |"
        )
    return "\n".join(lines)


def budget_table(summary: pd.DataFrame, history: pd.DataFrame, budgets: list[int]) -> str:
    """One row per setup: each budget's steps, samples and test accuracies, and whether it settled."""
    precise = not history[history["metric"] == ladder.BUDGET_PREFIX + "val/acc_precise"].empty
    epochs = " / ".join(ladder.label(history, b) for b in budgets)
    head = ["setup", "n", f"steps at {epochs}", "samples", "val/acc"]
    head += ["val/acc_precise"] * precise + ["settled (val/acc)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    sizes = history[
        history["metric"].isin([ladder.BUDGET_PREFIX + "steps", ladder.BUDGET_PREFIX + "samples"])
    ]
    for setup in summary["setup"]:
        own = sizes[sizes["setup"] == setup].groupby(["metric", "rung"])["value"].first()
        size = {
            name: " / ".join(f"{own.get((ladder.BUDGET_PREFIX + name, b), math.nan):,.0f}" for b in budgets)
            for name in ("steps", "samples")
        }
        accuracies = []
        for metric in ["val/acc"] + ["val/acc_precise"] * precise:
            per_budget = []
            for budget in budgets:
                values = pd.Series(
                    list(ladder.values(history, setup, ladder.BUDGET_PREFIX + metric, budget).values())
                )
                per_budget.append(_cell(*_stats(values)[:2]))
            accuracies.append(" / ".join(per_budget))
        n = len(ladder.values(history, setup, ladder.BUDGET_PREFIX + "val/acc", budgets[-1]))
        cells = [
            setup,
            str(n),
            size["steps"],
            size["samples"],
            *accuracies,
            ladder.settled(history, setup).describe(),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def gate_note(gate: convergence.Gate) -> str:
    return (
        f"**Converged** (`report.converged`): the last epoch raised the mean test accuracy by less than "
        f"{100 * gate.max_gain:g} point and changed the mean training loss by less than "
        f"{100 * gate.max_loss_change:g}%."
    )


def latest_param(runs: pd.DataFrame, key: str) -> str | None:
    """A param as the study's latest run recorded it (None where unset)."""
    values = _column(runs.sort_values("start_time"), f"params.{key}").dropna().astype(str)
    values = values[values != "None"]
    return values.iloc[-1] if len(values) else None


def write(study: str, uri: str, out_dir: Path | None = None) -> pd.DataFrame:
    """Write RESULTS.md, results.csv and plots for ``study`` and log them to its latest sweep."""
    table_commit = _table_commit()  # before this page's own files change the tree
    runs = load_runs(study, uri)
    history = curves(runs, uri)
    gate = convergence.Gate(
        float(latest_param(runs, "report.converged.max_gain") or convergence.Gate.max_gain),
        float(latest_param(runs, "report.converged.max_loss_change") or convergence.Gate.max_loss_change),
    )
    summary = summarize(runs)
    # A check grid at other lrs (lr_factor) asks whether the lr is the finding: its cells are not
    # setups of the study's own table.
    checked = summary[summary["lr_factor"] != 1.0].reset_index(drop=True)
    summary = summary[summary["lr_factor"] == 1.0].reset_index(drop=True)
    budgets = ladder.budgets(history)
    gated = len(budgets) < 2  # a ladder of budgets replaces the last-epoch gate
    gates = convergence.gate_all(history, list(summary["setup"]) if gated else [], gate).set_index("setup")
    summary["converged"] = summary["setup"].map(gates["converged"]).astype(object)
    summary["convergence"] = summary["setup"].map(gates["convergence"])
    out_dir = out_dir or EXPERIMENTS_DIR / study
    out_dir.mkdir(parents=True, exist_ok=True)
    summary.drop(columns=[c for c in summary if c.endswith(" values")]).to_csv(
        out_dir / "results.csv", index=False
    )
    question = latest_param(runs, "report.question")
    found = findings.evaluate(summary, history, question, latest_param(runs, "report.baseline"))
    lr_checks = findings.lr_dependence(summary, checked, history)
    dependent = {check.name: check.dependent for check in lr_checks if check.dependent}
    sections = [header(study, runs, table_commit), *(["", f"**Question.** {question}"] if question else [])]
    if found and not gated:
        sections += ["", "**At a glance** (details under Findings):", ""]
        sections += [
            f"- **{f.name}** {f.verdict}" + (f"; **{dependent[f.name]}**" if f.name in dependent else "")
            for f in found
        ]
    sections += design(study)
    if not gated:
        sections += ["", "## Budgets", "", BUDGETS_NOTE, "", budget_table(summary, history, budgets)]
    sections += ["", TABLE_NOTE, *(["", gate_note(gate)] if gated else []), "", markdown_table(summary)]

    figures = plots.draw_all(summary, history, out_dir, present_metrics(summary))
    sections += [f"\n![{title}]({path.name})" for title, path in figures]

    if found:
        sections += ["", "## Findings", "", FINDINGS_NOTE if gated else LADDER_NOTE, ""]
        for f in found:
            if f.table:
                sections += [f"**{f.name}** — {f.claim} ({f.evidence}) → **{f.verdict}**", "", f.table, ""]
            else:
                sections += [f"- **{f.name}** — {f.claim}: {f.evidence} → **{f.verdict}**"]
    if lr_checks:
        sections += ["", "## Is the lr the finding?", "", LR_CHECK_NOTE, "", lr_check_table(lr_checks)]
    compared = comparison(summary)
    if compared:
        sections += [
            "",
            "## Against d2l's published figures",
            "",
            "Computed from the table: d2l publishes one run, so a figure is *reproduced* when it lies in "
            "the 95% prediction interval of one new run from our seeds, mean ± t(n−1)·sd·√(1 + 1/n) "
            "(d2l's test accuracy is our `val/acc`).",
            "",
            *compared,
        ]
    sections += walltime.section(study, uri)
    (out_dir / "RESULTS.md").write_text("\n".join(sections) + "\n")
    log_summary_run(study, uri, [out_dir / "RESULTS.md", out_dir / "results.csv", *(p for _, p in figures)])
    return summary


def log_summary_run(study: str, uri: str, paths: list[Path]) -> None:
    """Log the table, CSV and plots with the study's latest sweep (its parent run). A study whose
    runs were not made by a sweep gets a ``summary`` run instead, replaced each time."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(study)
    sweeps = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.{KIND_TAG} = 'sweep'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if sweeps:
        for path in paths:
            client.log_artifact(sweeps[0].info.run_id, str(path), artifact_path="results")
        return
    for old in client.search_runs([experiment.experiment_id], filter_string=f"tags.{KIND_TAG} = 'summary'"):
        client.delete_run(old.info.run_id)
    run = client.create_run(experiment.experiment_id, run_name=f"{study}-summary", tags={KIND_TAG: "summary"})
    for path in paths:
        client.log_artifact(run.info.run_id, str(path))
    client.set_terminated(run.info.run_id, "FINISHED")


# The terminal summary: the test accuracies a user compares, under short headers, so that a row
# fits an 80-column terminal (the table file has every metric).
TERMINAL_METRICS = {"val/acc": "test acc", "val/acc_precise": "PreciseBN"}


def print_summary(summary: pd.DataFrame, console: Console) -> None:
    table = Table(title="mean ± sd over seeds", box=box.SIMPLE_HEAD, pad_edge=False)
    metrics = [m for m in present_metrics(summary) if m in TERMINAL_METRICS]
    table.add_column("setup", no_wrap=True, overflow="ellipsis")
    table.add_column("n", justify="right")
    for metric in metrics:
        table.add_column(TERMINAL_METRICS[metric], no_wrap=True)
    table.add_column("notes")
    for row in summary.to_dict("records"):
        cells = [_cell(row[f"{m} mean"], row[f"{m} sd"]) for m in metrics]
        notes = f"{row['failed']} failed" if row["failed"] else ""
        table.add_row(row["setup"], str(row["n"]), *cells, notes)
    console.print(table)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print(
            "usage: python -m normlab.report <study>   (MLFLOW_TRACKING_URI selects the store)",
            file=sys.stderr,
        )
        sys.exit(2)
    console = Console()
    uri = config.tracking_uri()
    study, known = args[0], [name for name in config.group_options("experiment") if "__" not in name]
    try:
        if study not in known:
            raise ReportError(f"no study {study!r}; the studies: {', '.join(known)}")
        summary = write(study, uri)
    except ReportError as error:
        print(f"error: {error}", file=sys.stderr)  # one line, not wrapped to the terminal
        sys.exit(2)
    print_summary(summary, console)
    console.print(f"wrote {EXPERIMENTS_DIR / study / 'RESULTS.md'}")
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(study)
    if experiment is not None:
        print(f"compare its setups: make ui, then open {setups_chart(client, experiment.experiment_id)}")


if __name__ == "__main__":
    main()
