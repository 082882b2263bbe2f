"""PNG plots of a study: accuracy per epoch, and accuracy against whatever the study sweeps."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from normlab.data.fashion_mnist import CHANCE  # noqa: E402
from normlab.report import ladder  # noqa: E402
from normlab.report.findings import by_grid  # noqa: E402  (F6's grids and norm families, so the plot shows the same)

CURVE_METRICS = ("train/acc", "val/acc")
LINE_STYLES = ("-", "--", ":", "-.")
# Evaluation modes drawn against a swept value, each in its own line style and marker.
MODES = {"val/acc": ("-", "o"), "val/acc_precise": ("--", "s"), "val/acc_batchstats": (":", "^")}
LOG_AXES = {"batch_size": 2, "lr": 10}
# Tags a study may sweep: tables are ordered by them and plotted against them.
SWEPT = ("batch_size", "momentum", "lr")
MAX_CURVES = 8


def _save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pick_setups(summary: pd.DataFrame, swept: str | None) -> list[str]:
    """All setups when few; else per norm the smallest, a middle and the largest swept value."""
    if len(summary) <= MAX_CURVES or swept is None:
        return list(summary["setup"])[:MAX_CURVES]
    picked = []
    for _, group in summary.groupby("norm"):
        values = sorted(group[swept].unique())
        for value in {values[0], values[len(values) // 2], values[-1]}:
            picked += list(group.loc[group[swept] == value, "setup"])
    return picked


def plot_convergence(history: pd.DataFrame, setups: list[str], path: Path) -> None:
    """Mean accuracy per epoch for each setup, with a band of ± 1 sd over seeds."""
    fig, axes = plt.subplots(1, len(CURVE_METRICS), figsize=(11, 4.2), sharey=True)
    for axis, metric in zip(axes, CURVE_METRICS, strict=True):
        for index, setup in enumerate(setups):
            group = history[(history["metric"] == metric) & (history["setup"] == setup)]
            if group.empty:
                continue
            stats = group.groupby("epoch")["value"].agg(["mean", "std"]).fillna(0.0)
            # Line styles differ too, so that setups with identical curves stay visible.
            style = LINE_STYLES[index % len(LINE_STYLES)]
            axis.plot(stats.index, stats["mean"], linestyle=style, marker="o", markersize=3, label=setup)
            axis.fill_between(
                stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"], alpha=0.2
            )
        axis.axhline(CHANCE, color="grey", linewidth=0.8, linestyle=":")
        axis.set_title(metric)
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (mean ± sd over seeds)")
    axes[-1].legend(fontsize=7, loc="lower right")
    _save(fig, path)


def plot_against(
    summary: pd.DataFrame,
    swept: str,
    metrics: list[str],
    path: Path,
    smaller: dict[str, pd.DataFrame] | None = None,
) -> None:
    """Accuracy against the swept value, one colour per norm, one line style per evaluation mode.
    ``smaller``: the summary at each smaller budget (label -> summary, smallest first), drawn as
    thin lines of the norm's colour under the largest budget's bold ones, so a reader sees whether
    the curve moved with the budget."""
    fig, axis = plt.subplots(figsize=(8, 4.8))
    finite = sorted(v for v in summary[swept].unique() if math.isfinite(v))
    has_inf = any(math.isinf(v) for v in summary[swept].unique())
    # A categorical axis for momentum (its None = cumulative average has no place on a number line).
    positions = {v: i for i, v in enumerate(finite + ([math.inf] if has_inf else []))}
    categorical = swept not in LOG_AXES
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    norms = sorted(summary["norm"].unique())
    for rank, (name, earlier) in enumerate((smaller or {}).items()):
        for norm, group in earlier.groupby("norm"):
            group = group.sort_values(swept)
            x = group[swept].map(positions) if categorical else group[swept]
            axis.plot(x, group["val/acc mean"], color=colors[norms.index(norm) % len(colors)], linewidth=0.9,
                      alpha=0.3 + 0.4 * rank / max(len(smaller or {}), 1), marker=".", markersize=3,
                      label=f"val/acc at {name} (thin)" if norm == norms[0] else None)  # fmt: skip
    for index, (norm, group) in enumerate(summary.groupby("norm")):
        color = colors[index % len(colors)]
        # Earlier norms drawn wider, so a norm whose curve equals another's still shows beneath it;
        # all wider than the smaller budgets' lines.
        width = max(3.5 - index, 1.0) + (1.0 if smaller else 0.0)
        group = group.sort_values(swept)
        x = group[swept].map(positions) if categorical else group[swept]
        for metric in metrics:
            mean, sd = group[f"{metric} mean"], group[f"{metric} sd"].fillna(0.0)
            if mean.isna().all():
                continue
            style, marker = MODES[metric]
            axis.plot(
                x,
                mean,
                linestyle=style,
                marker=marker,
                color=color,
                linewidth=width,
                markersize=4,
                label=f"{norm} {metric}",
            )
            axis.fill_between(x, mean - sd, mean + sd, color=color, alpha=0.12)
    if categorical:
        axis.set_xticks(
            list(positions.values()), [("None" if math.isinf(v) else f"{v:g}") for v in positions]
        )
    else:
        axis.set_xscale("log", base=LOG_AXES[swept])
    axis.axhline(CHANCE, color="grey", linewidth=0.8, linestyle=":", label="chance")
    axis.set_xlabel(swept.replace("_", " "))
    axis.set_ylabel("test accuracy (mean ± sd over seeds)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="best")
    _save(fig, path)


def plot_setups(summary: pd.DataFrame, path: Path) -> None:
    """Final test accuracy per setup: a bar at the mean with the 95% CI of the mean as a whisker,
    and PreciseBN's mean as a diamond where the setup has BN."""
    rows = summary.dropna(subset=["val/acc mean"]).iloc[::-1].reset_index(drop=True)  # first on top
    fig, axis = plt.subplots(figsize=(8, 0.5 * len(rows) + 1.6))
    ci = rows["val/acc ci95"].fillna(0.0)
    axis.barh(
        rows["setup"],
        rows["val/acc mean"],
        xerr=ci,
        color="tab:blue",
        alpha=0.6,
        capsize=4,
        label="val/acc (moving statistics)",
    )
    precise = rows["val/acc_precise mean"]
    if precise.notna().any():
        axis.plot(precise, rows.index, "D", color="black", markersize=6, label="val/acc_precise (PreciseBN)")
    low = max(0.0, float(pd.concat([rows["val/acc mean"] - ci, precise]).min()) - 0.05)
    for y, (mean, n) in enumerate(zip(rows["val/acc mean"], rows["n"], strict=True)):
        axis.text(low + 0.003, y, f"{mean:.3f} (n={n})", va="center", ha="left", fontsize=8, color="white")
    axis.set_xlim(low, min(1.0, float(pd.concat([rows["val/acc mean"] + ci, precise]).max()) + 0.02))
    axis.set_xlabel("final test accuracy: mean and 95% CI over seeds")
    axis.grid(alpha=0.3, axis="x")
    axis.legend(fontsize=8, loc="lower right")
    _save(fig, path)


def plot_budgets(history: pd.DataFrame, setups: list[str], budgets: dict[int, str], path: Path) -> None:
    """Test accuracy per setup at every budget of the ladder (``budget/val/acc``): a dot per budget
    at the mean over seeds with its sd as a whisker, the largest budget bold, so a reader sees
    whether a setup, and the gaps between setups, moved with the budget. ``budgets``: rung -> label."""
    rows = list(reversed(setups))  # the first setup on top
    fig, axis = plt.subplots(figsize=(8, 0.55 * len(rows) + 1.8))
    colors = plt.get_cmap("Blues")([0.35 + 0.65 * i / max(len(budgets) - 1, 1) for i in range(len(budgets))])
    for index, (rung, name) in enumerate(budgets.items()):
        largest = index == len(budgets) - 1
        points = history[(history["metric"] == "budget/val/acc") & (history["rung"] == rung)]
        stats = points.groupby("setup")["value"].agg(["mean", "std"]).reindex(rows)
        offset = (index - (len(budgets) - 1) / 2) * 0.12
        axis.errorbar(
            stats["mean"],
            [y + offset for y in range(len(rows))],
            xerr=stats["std"].fillna(0.0),
            fmt="o",
            color=colors[index],
            markersize=8 if largest else 5,
            elinewidth=2.2 if largest else 1.0,
            markeredgecolor="black" if largest else colors[index],
            capsize=3,
            label=name + (" (largest)" if largest else ""),
        )
    axis.set_yticks(range(len(rows)), rows)
    axis.set_xlabel("test accuracy at each budget (mean ± sd over seeds, moving statistics)")
    axis.grid(alpha=0.3, axis="x")
    axis.legend(fontsize=8, loc="best")
    _save(fig, path)


def plot_grids(summary: pd.DataFrame, path: Path) -> None:
    """One panel per grid of a study with several: test accuracy against the statistics batch
    (where the SGD batch is fixed) or the SGD batch (where it varies), one colour per norm, moving
    statistics solid and PreciseBN dashed; a norm with one cell in a grid is a horizontal line."""
    summary = by_grid(summary)  # a setup two grids share is drawn in both
    grids = [g for g in summary["grid"].unique() if g]
    fig, axes = plt.subplots(1, len(grids), figsize=(6.5 * len(grids), 4.6), sharey=True, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    families = sorted(set(summary["family"]))
    for axis, grid in zip(axes[0], grids, strict=True):
        cells = summary[summary["grid"] == grid]
        x_key = "batch_size" if cells["batch_size"].nunique() > 1 else "statistics_batch"
        for family, group in cells.groupby("family"):
            color = colors[families.index(family) % len(colors)]
            group = group.sort_values(x_key)
            for metric, style in (("val/acc", "-"), ("val/acc_precise", "--")):
                mean, sd = group[f"{metric} mean"], group[f"{metric} sd"].fillna(0.0)
                if mean.isna().all():
                    continue
                label = f"{family} {metric}"
                if len(group) == 1:
                    axis.axhline(
                        float(mean.iloc[0]), color=color, linestyle=style, linewidth=1.2, label=label
                    )
                    continue
                axis.plot(
                    group[x_key], mean, linestyle=style, marker="o", color=color, markersize=4, label=label
                )
                axis.fill_between(group[x_key], mean - sd, mean + sd, color=color, alpha=0.12)
        axis.set_xscale("log", base=2)
        varying = "SGD batch (ghost BN normalizes over its virtual batches)"
        axis.set_xlabel(varying if x_key == "batch_size" else "statistics batch (SGD batch fixed)")
        axis.set_title(str(grid))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, loc="lower right")
    axes[0][0].set_ylabel("test accuracy (mean ± sd over seeds)")
    _save(fig, path)


def swept_parameter(summary: pd.DataFrame) -> str | None:
    """The tag the study varies over at least three values, if any."""
    for key in SWEPT:
        if summary[key].nunique() >= 3:
            return key
    return None


def draw_all(
    summary: pd.DataFrame, history: pd.DataFrame, out_dir: Path, metrics: list[str]
) -> list[tuple[str, Path]]:
    """Draw the study's plots into ``out_dir``; return (title, path) of each."""
    figures = []
    swept = swept_parameter(summary)
    rungs = ladder.budgets(history)
    if "grid" in summary and summary["grid"].notna().any():
        path = out_dir / "accuracy_vs_statistics_batch.png"
        plot_grids(summary, path)
        figures.append(("test accuracy vs the statistics batch, per grid", path))
    elif swept:
        path = out_dir / f"accuracy_vs_{swept}.png"
        # Beyond three norms, three evaluation modes each would be a tangle: moving statistics only.
        modes = [m for m in MODES if m in metrics] if summary["norm"].nunique() <= 3 else ["val/acc"]
        smaller = {ladder.label(history, r): ladder.summary_at(summary, history, r) for r in rungs[:-1]}
        plot_against(summary, swept, modes, path, smaller)
        shown = f" at the largest budget (bold) and each smaller one (thin: {', '.join(smaller)})"
        shown = shown if smaller else ""
        figures.append((f"test accuracy vs {swept}{shown}", path))
    else:
        budgets = {rung: ladder.label(history, rung) for rung in rungs}
        if len(budgets) >= 2:
            path = out_dir / "accuracy_per_budget.png"
            plot_budgets(history, list(summary["setup"]), budgets, path)
            figures.append(("test accuracy per setup at every budget (the largest bold)", path))
        path = out_dir / "final_accuracy.png"
        plot_setups(summary, path)
        figures.append(("final test accuracy per setup, mean and 95% CI over seeds", path))
    if not history.empty:
        path = out_dir / "convergence.png"
        plot_convergence(history, _pick_setups(summary, swept), path)
        figures.append(("accuracy per epoch, mean ± sd over seeds", path))
    return figures
