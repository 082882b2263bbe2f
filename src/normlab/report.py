"""A study's results table and convergence plot, built from its MLflow runs alone.

``python -m normlab.report <study>`` (``make table EXP=<study>``) writes
``experiments/<study>/RESULTS.md``, ``results.csv`` and ``convergence.png``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from normlab.tracking import PROJECT_ROOT, tracking_uri  # noqa: E402

# Final-epoch metrics summarized per setup, and the published figure each is compared with.
METRICS = {
    "train/loss": "reference.loss",
    "train/acc": "reference.train_acc",
    "val/acc": "reference.test_acc",
}
CURVE_METRICS = ("train/acc", "val/acc")
LINE_STYLES = ("-", "--", ":", "-.")


class ReportError(RuntimeError):
    """The study has no runs to report; the message says which command makes them."""


def load_runs(study: str, uri: str | None = None) -> pd.DataFrame:
    """One row per run of the study: status, tags, params and last-epoch metrics."""
    mlflow.set_tracking_uri(tracking_uri(uri))
    if MlflowClient().get_experiment_by_name(study) is None:
        raise ReportError(
            f"no MLflow experiment {study!r} in {tracking_uri(uri)}; run: make sweep EXP={study}"
        )
    runs = mlflow.search_runs(experiment_names=[study], output_format="pandas")
    if runs.empty:
        raise ReportError(f"experiment {study!r} has no runs yet; run: make sweep EXP={study}")
    return runs


def _column(runs: pd.DataFrame, name: str) -> pd.Series:
    return runs[name] if name in runs else pd.Series(float("nan"), index=runs.index)


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Per setup: n finished runs, failed runs, mean and sd over seeds, and the published figure."""
    rows = []
    for setup, group in runs.groupby("tags.setup", sort=True):
        finished = group[group["status"] == "FINISHED"]
        row: dict[str, object] = {
            "setup": setup,
            "n": len(finished),
            "failed": int((group["status"] == "FAILED").sum()),
            "seeds": ",".join(sorted(finished["tags.seed"].astype(str), key=int)),
        }
        for metric, reference in METRICS.items():
            values = pd.to_numeric(_column(finished, f"metrics.{metric}"), errors="coerce").dropna()
            row[f"{metric} mean"] = values.mean() if len(values) else float("nan")
            row[f"{metric} sd"] = values.std(ddof=1) if len(values) > 1 else float("nan")
            published = pd.to_numeric(_column(group, f"params.{reference}"), errors="coerce").dropna()
            row[f"{metric} d2l"] = published.iloc[0] if len(published) else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def _cell(mean: float, sd: float) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.3f}" if math.isnan(sd) else f"{mean:.3f} ± {sd:.3f}"


def _published(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.3f}"


def markdown_table(summary: pd.DataFrame) -> str:
    """One row per setup; each metric is followed by d2l's published figure for it."""
    head = ["setup", "n"] + [name for m in METRICS for name in (m, "d2l")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in summary.to_dict("records"):
        n = f"{row['n']}" + (f" (+{row['failed']} failed)" if row["failed"] else "")
        cells = [
            cell
            for m in METRICS
            for cell in (_cell(row[f"{m} mean"], row[f"{m} sd"]), _published(row[f"{m} d2l"]))
        ]
        lines.append("| " + " | ".join([row["setup"], n, *cells]) + " |")
    return "\n".join(lines)


def comparison(summary: pd.DataFrame) -> list[str]:
    """For each published figure: ours - d2l, and whether d2l's single run lies within mean ± 2 sd of ours."""
    lines = []
    for row in summary.to_dict("records"):
        for metric in METRICS:
            mean, sd, published = row[f"{metric} mean"], row[f"{metric} sd"], row[f"{metric} d2l"]
            if math.isnan(published) or math.isnan(mean) or math.isnan(sd):
                continue
            verdict = "reproduced" if abs(mean - published) <= 2 * sd else "not reproduced"
            lines.append(
                f"- {row['setup']}, {metric}: ours {mean:.3f} ± {sd:.3f} (n={row['n']}), "
                f"d2l {published:.3f}, diff {mean - published:+.3f}, 2 sd = {2 * sd:.3f} → **{verdict}**"
            )
    return lines


def curves(runs: pd.DataFrame, uri: str | None = None) -> pd.DataFrame:
    """Per-epoch history (setup, seed, metric, epoch, value) of the finished runs."""
    client = MlflowClient(tracking_uri(uri))
    rows = []
    finished = runs[runs["status"] == "FINISHED"]
    for run_id, setup in zip(finished["run_id"], finished["tags.setup"], strict=True):
        for metric in CURVE_METRICS:
            for point in client.get_metric_history(run_id, metric):
                rows.append((setup, run_id, metric, point.step, point.value))
    return pd.DataFrame(rows, columns=["setup", "run_id", "metric", "epoch", "value"])


def plot_convergence(history: pd.DataFrame, path: Path) -> None:
    """Mean accuracy per epoch for each setup, with a band of ± 1 sd over seeds."""
    fig, axes = plt.subplots(1, len(CURVE_METRICS), figsize=(11, 4), sharey=True)
    for axis, metric in zip(axes, CURVE_METRICS, strict=True):
        for index, (setup, group) in enumerate(history[history["metric"] == metric].groupby("setup")):
            stats = group.groupby("epoch")["value"].agg(["mean", "std"]).fillna(0.0)
            # Line styles differ too, so that setups with identical curves stay visible.
            style = LINE_STYLES[index % len(LINE_STYLES)]
            axis.plot(stats.index, stats["mean"], style, marker="o", markersize=3, label=setup)
            axis.fill_between(
                stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"], alpha=0.2
            )
        axis.set_title(metric)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (mean ± sd over seeds)")
    axes[-1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def header(study: str, runs: pd.DataFrame) -> str:
    commits = sorted(
        f"{c[:10]}{' (dirty)' if d == 'true' else ''}"
        for c, d in set(zip(runs["tags.git_commit"], _column(runs, "tags.git_dirty"), strict=True))
    )
    machines = sorted(set(_column(runs, "tags.machine").dropna()))
    devices = sorted(set(_column(runs, "tags.device").dropna()))
    first, last = runs["start_time"].min(), runs["end_time"].fillna(runs["start_time"]).max()
    return "\n".join(
        [
            f"# Results: `{study}`",
            "",
            f"Generated by `make table EXP={study}` from the MLflow runs of study `{study}` "
            f"(rerun the study itself with `make sweep EXP={study}`).",
            "",
            f"- runs: {len(runs)}, from {first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M} UTC",
            f"- machine: {'; '.join(machines) or 'unknown'}; device: {', '.join(devices) or 'unknown'}",
            f"- commit: {', '.join(commits)}",
            f"- table generated: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        ]
    )


def write(study: str, uri: str | None = None, out_dir: Path | None = None) -> pd.DataFrame:
    """Write RESULTS.md, results.csv and convergence.png for ``study``; return the summary."""
    runs = load_runs(study, uri)
    summary = summarize(runs)
    out_dir = out_dir or PROJECT_ROOT / "experiments" / study
    out_dir.mkdir(parents=True, exist_ok=True)
    summary.to_csv(out_dir / "results.csv", index=False)
    history = curves(runs, uri)
    compared = comparison(summary)
    sections = [
        header(study, runs),
        "",
        "Final-epoch values, mean ± sd over seeds (n = finished runs). `train/*` are running averages "
        "over the last epoch in train mode; `val/acc` is on the 10k test split in eval mode (moving "
        "statistics). d2l's figures are single runs.",
        "",
        markdown_table(summary),
    ]
    if compared:
        sections += [
            "",
            "## Against d2l's published figures",
            "",
            "Computed from the table: a figure is *reproduced* when d2l's single run lies within our mean "
            "± 2 sd over seeds (d2l's test accuracy is our `val/acc`).",
            "",
            *compared,
        ]
    if not history.empty:
        plot_convergence(history, out_dir / "convergence.png")
        sections += ["", "![accuracy per epoch, mean ± sd over seeds](convergence.png)"]
    (out_dir / "RESULTS.md").write_text("\n".join(sections) + "\n")
    return summary


def print_summary(summary: pd.DataFrame, console: Console) -> None:
    table = Table(title="mean ± sd over seeds (d2l's published figure)")
    for name in ("setup", "n", *METRICS):
        table.add_column(name)
    for row in summary.to_dict("records"):
        cells = [
            f"{_cell(row[f'{m} mean'], row[f'{m} sd'])} ({_published(row[f'{m} d2l'])})" for m in METRICS
        ]
        table.add_row(row["setup"], str(row["n"]), *cells)
    console.print(table)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study")
    parser.add_argument(
        "--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI or the project's store"
    )
    args = parser.parse_args(argv)
    console = Console()
    try:
        summary = write(args.study, args.tracking_uri)
    except ReportError as error:
        console.print(f"error: {error}")
        sys.exit(2)
    print_summary(summary, console)
    console.print(f"wrote {PROJECT_ROOT / 'experiments' / args.study / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
