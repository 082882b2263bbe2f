"""What fused training bought a study: its sweeps' wall times, fused and not, and whether the cells
trained both ways agree (``normlab.report`` adds this section to RESULTS.md).

A sweep is its parent run (``tags.kind = sweep``); the cells it trained are the runs nested under
it; a cell trained within a fused group carries ``fused_with``. Cells that have a FINISHED run of
each kind (same fingerprint: the same config) are compared metric by metric.
"""

from __future__ import annotations

import pandas as pd
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from normlab.tracking import store as tracking
from normlab.tracking.names import FINGERPRINT_TAG, FUSED_WITH_TAG, KIND_TAG, PARENT_TAG

COMPARED = ("val/acc", "val/acc_precise", "train/loss")
APART = 0.005  # a test-accuracy difference beyond rounding's usual reach (tests/test_fused_run.py)


def sweeps(runs: list[Run]) -> pd.DataFrame:
    """One row per FINISHED sweep that trained cells, oldest first: when, how long, how many cells,
    how many fused."""
    cells = [r for r in runs if r.data.tags.get(KIND_TAG) == "cell"]
    rows = []
    for run in runs:
        info = run.info
        if run.data.tags.get(KIND_TAG) != "sweep" or info.status != "FINISHED" or not info.end_time:
            continue
        trained = [c for c in cells if c.data.tags.get(PARENT_TAG) == info.run_id]
        if not trained:
            continue
        rows.append({
            "sweep": info.run_name,
            "start": info.start_time,
            "minutes": (info.end_time - info.start_time) / 60000,
            "cells": len(trained),
            "fused": sum(FUSED_WITH_TAG in c.data.tags for c in trained),
            "commit": ", ".join(sorted({c.data.tags.get("git_commit", "?")[:10] for c in trained})),
            "machine": "; ".join(sorted({c.data.tags.get("machine", "?") for c in trained})),
        })  # fmt: skip
    return pd.DataFrame(rows).sort_values("start") if rows else pd.DataFrame(rows)


def agreement(runs: list[Run]) -> tuple[pd.DataFrame, list[str]]:
    """Per compared metric: cells trained both fused and alone, and the median and largest
    absolute difference of their final values (the latest FINISHED run of each kind); and the
    cells whose test accuracy differs by more than ``APART`` (with both values)."""
    latest: dict[tuple[str, bool], Run] = {}
    for run in sorted(runs, key=lambda r: r.info.start_time):
        tags = run.data.tags
        if tags.get(KIND_TAG) == "cell" and run.info.status == "FINISHED" and FINGERPRINT_TAG in tags:
            latest[(tags[FINGERPRINT_TAG], FUSED_WITH_TAG in tags)] = run
    both = [fp for fp, fused in latest if fused and (fp, False) in latest]
    rows = []
    for metric in COMPARED:
        differences = pd.Series([
            abs(latest[(fp, True)].data.metrics[metric] - latest[(fp, False)].data.metrics[metric])
            for fp in both
            if metric in latest[(fp, True)].data.metrics and metric in latest[(fp, False)].data.metrics
        ], dtype=float)  # fmt: skip
        if len(differences):
            rows.append({"metric": metric, "cells": len(differences),
                         "median": differences.median(), "max": differences.max()})  # fmt: skip
    apart = []
    for fp in both:
        fused, alone = latest[(fp, True)], latest[(fp, False)]
        values = fused.data.metrics.get("val/acc"), alone.data.metrics.get("val/acc")
        if None not in values and abs(values[0] - values[1]) > APART:
            apart.append(f"{fused.info.run_name} ({values[0]:.4f} fused, {values[1]:.4f} alone)")
    return pd.DataFrame(rows), sorted(apart)


def section(study: str, uri: str) -> list[str]:
    """RESULTS.md's "Wall time" section, or nothing when the study has no fused sweep."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(study)
    if experiment is None:
        return []
    runs = tracking.all_runs(client, experiment.experiment_id)
    table = sweeps(runs)
    if table.empty or not (table["fused"] > 0).any():
        return []
    largest = table["cells"].max()  # whole-study sweeps only: a partial rerun's time says little
    whole = table[table["cells"] == largest]
    fused, alone = whole[whole["fused"] > 0], whole[whole["fused"] == 0]
    lines = ["", "## Wall time: fused training (`fuse=auto`) vs each cell alone (`fuse=false`)", ""]
    lines += [
        "Sweeps of the whole study as recorded in MLflow (their parent runs; `fused`: cells trained "
        "within a fused group).",
        "",
        "| sweep | wall time | cells | fused | commit | machine |",
        "|---|---:|---:|---:|---|---|",
    ]
    for _, row in pd.concat([alone.tail(1), fused.tail(1)]).iterrows():  # the latest of each
        lines.append(
            f"| {row['sweep']} | {row['minutes']:.1f} min | {row['cells']} | {row['fused']} "
            f"| {row['commit']} | {row['machine']} |"
        )
    if len(alone) and len(fused):
        ratio = alone["minutes"].iloc[-1] / fused["minutes"].iloc[-1]
        lines += ["", f"Fused training made the study **{ratio:.1f}x** faster."]
    else:
        lines += ["", "No whole-study sweep with `fuse=false` is recorded: no ratio."]
    agreed, apart = agreement(runs)
    if not agreed.empty:
        lines += [
            "",
            "The same cells (same config fingerprint) trained fused and alone, final values "
            "(float32: fused sums run in another order, and training amplifies rounding):",
            "",
            "| metric | cells | median abs. difference | largest |",
            "|---|---:|---:|---:|",
            *(
                f"| {r['metric']} | {r['cells']} | {r['median']:.4f} | {r['max']:.4f} |"
                for _, r in agreed.iterrows()
            ),
            "",
            f"Test accuracy more than {APART} apart: "
            + ("; ".join(apart) if apart else "none")
            + (
                ". Float32 rounding grows where a norm's statistics come from 1-4 samples (BN at batch 2: "
                "x - mean is +-half the two samples' difference); fused and alone agree there in float64 "
                "(tests/test_fused.py); ghost BN over 2-4 samples trained alone moves as much when only the "
                "torch thread count changes (tests/test_fused_run.py)."
                if apart
                else "."
            ),
        ]
    return lines
