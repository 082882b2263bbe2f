"""Train a fixed set of solo and fused cells into a fresh store and dump every result metric at
every epoch (JSON), or compare two dumps bit for bit.

    python scripts/same_metrics.py train OUT.json      # from the checkout whose code is measured
    python scripts/same_metrics.py compare A.json B.json

Only the command line (``python -m normlab.train -m``) and MLflow are used, so one script measures
any two commits of a restructuring. The cells: the norm kinds, batch sizes and eval modes the
studies use, trained alone (``fuse=false``) and in fused groups.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient

QUICK = ["trainer.max_epochs=2", "eval.precise_samples=256", "trainer.accelerator=cpu"]
SCHEDULE = ["lr_scaling=linear", "warmup_samples=256", "lr_schedule=cosine"]
SWEEPS = {
    "fused_bs8": [
        "norm=none,scratch,native,group,layer",
        "seed=0,1",
        "data.batch_size=8",
        "data.train_subset=512",
        "fuse=true",
        *SCHEDULE,
    ],
    "fused_bs2": [
        "norm=none,group,layer,scratch",
        "seed=0",
        "data.batch_size=2",
        "data.train_subset=192",
        "fuse=true",
        *SCHEDULE,
    ],
    "fused_ghost_bs64": [
        "norm=ghost,scratch",
        "seed=0,1",
        "data.batch_size=64",
        "data.train_subset=1024",
        "fuse=true",
    ],
    "solo_bs64": [
        "norm=none,scratch,native,group,layer,ghost,batch_renorm,frn,evonorm_b0,evonorm_s0,"
        "switchable,mean_only,variance_only",
        "seed=0",
        "data.batch_size=64",
        "data.train_subset=1024",
        "fuse=false",
        *SCHEDULE,
    ],
    "solo_bs1": ["norm=group,none", "seed=0", "data.batch_size=1", "data.train_subset=64", "fuse=false"],
}
SKIPPED = ("system/", "perf/", "time/")  # speed and machine load: not results


def train(out: Path) -> None:
    dump: dict[str, dict[str, list[list[float]]]] = {}
    with tempfile.TemporaryDirectory() as folder:
        store = f"sqlite:///{folder}/mlflow.db"
        env = {**os.environ, "MLFLOW_TRACKING_URI": store}
        for study, arguments in SWEEPS.items():
            command = [
                sys.executable,
                "-m",
                "normlab.train",
                "-m",
                f"study={study}",
                *arguments,
                *QUICK,
                f"checkpoint_dir={folder}/checkpoints",
                f"hydra.sweep.dir={folder}/multirun/{study}",
            ]
            print(" ".join(command[1:]), flush=True)
            done = subprocess.run(command, env=env, cwd=folder, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"{study} failed:\n{done.stderr[-3000:]}")
            client = MlflowClient(store)
            experiment = client.get_experiment_by_name(study).experiment_id
            for run in client.search_runs([experiment], filter_string="tags.kind = 'cell'"):
                fused = "fused" if "fused_with" in run.data.tags else "solo"
                dump[f"{study}/{run.info.run_name}/{fused}"] = {
                    key: sorted([m.step, m.value] for m in client.get_metric_history(run.info.run_id, key))
                    for key in sorted(run.data.metrics)
                    if not key.startswith(SKIPPED)
                }
    out.write_text(json.dumps(dump, indent=1, sort_keys=True))
    print(f"{len(dump)} runs -> {out}")


def compare(a: Path, b: Path) -> int:
    left, right = json.loads(a.read_text()), json.loads(b.read_text())
    problems = [f"only in one: {run}" for run in sorted(set(left) ^ set(right))]
    values = 0
    for run in sorted(set(left) & set(right)):
        if left[run] != right[run]:
            keys = [
                k for k in sorted(set(left[run]) | set(right[run])) if left[run].get(k) != right[run].get(k)
            ]
            problems.append(f"{run}: differs in {', '.join(keys)}")
        values += sum(len(points) for points in left[run].values())
    print(
        f"{len(set(left) & set(right))} runs, {values} metric values compared: "
        + ("bitwise equal" if not problems else f"{len(problems)} differences")
    )
    print("\n".join(problems))
    return 1 if problems else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["train"] and len(sys.argv) == 3:
        train(Path(sys.argv[2]))
    elif sys.argv[1:2] == ["compare"] and len(sys.argv) == 4:
        sys.exit(compare(Path(sys.argv[2]), Path(sys.argv[3])))
    else:
        sys.exit(__doc__)
