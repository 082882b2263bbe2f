"""``python -m normlab.rerun <run id>`` (``make rerun RUN_ID=<id>``): train a recorded run again.

The run's resolved config (its ``config.yaml`` artifact) is trained as it was, as a new run of the
same study tagged ``rerun_of=<id>`` (``_target_`` paths recorded before a module moved map to its
new home: ``MOVED_TARGETS``), with the recorded overrides logged again and as many torch
threads as the original had (float sums depend on it); then the original's
and the rerun's final metrics are printed side by side. Keys added to ``conf/`` since the run was
recorded take today's defaults.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from normlab import config
from normlab.config.rules import ConfigError
from normlab.data.fashion_mnist import DataError
from normlab.layers.registry import NORMS
from normlab.tracking import store as tracking
from normlab.tracking.names import KIND_TAG
from normlab.training.lifecycle import RunFailed
from normlab.training.solo import fit

# What configs recorded before normlab's subpackages instantiate, and where it lives now (the
# model's target, ``normlab.models.LeNet``, did not move).
MOVED_TARGETS = {"normlab.norms.norm_factory": "normlab.layers.norm_factory"}


def moved(node: object) -> object:
    """A recorded config (as a container) with every ``_target_`` at its current home."""
    if isinstance(node, dict):
        return {
            key: MOVED_TARGETS.get(value, value) if key == "_target_" else moved(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [moved(value) for value in node]
    return node


class RerunError(RuntimeError):
    """The run cannot be rerun; the message says why."""


def recorded(client: MlflowClient, run_id: str) -> tuple[Run, DictConfig, list[str]]:
    """The run, its resolved config over today's defaults, and the overrides it was started with."""
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise RerunError(f"no run {run_id!r} in {client.tracking_uri}") from None
    if run.data.tags.get(KIND_TAG) in ("sweep", "summary"):
        raise RerunError(f"run {run_id} is a sweep's parent run, not a training run; rerun one of its cells")
    with tempfile.TemporaryDirectory() as folder:
        try:
            resolved = Path(client.download_artifacts(run_id, "config.yaml", folder)).read_text()
            overrides = Path(client.download_artifacts(run_id, "overrides.txt", folder)).read_text()
        except (MlflowException, OSError) as error:
            raise RerunError(f"run {run_id} has no recorded config: {error}") from None
    defaults = OmegaConf.to_container(config.compose())
    recorded_config = moved(OmegaConf.to_container(OmegaConf.create(resolved)))
    cfg = OmegaConf.merge(OmegaConf.create(defaults), OmegaConf.create(recorded_config))
    # Runs recorded before norms without running statistics lost their (unused) momentum.
    taken = ("_target_", "kind", *NORMS[cfg.norm.kind].options())
    cfg.norm = {key: value for key, value in cfg.norm.items() if key in taken}
    return run, cfg, [line for line in overrides.splitlines() if line.strip()]


# What a run computed; speed (perf/, time/) and the machine's load (system/) are not results.
RESULT_PREFIXES = ("train/", "val/", "lr")


def compare(original: dict[str, float], rerun: dict[str, float]) -> tuple[Table, float]:
    """A table of each final result metric of the original and the rerun, and the largest difference."""
    table = Table(title="final metrics")
    for column in ("metric", "original", "rerun", "difference"):
        table.add_column(column)
    largest = 0.0
    for key in sorted(set(original) & set(rerun)):
        if not key.startswith(RESULT_PREFIXES):
            continue
        difference = rerun[key] - original[key]
        largest = max(largest, abs(difference))
        table.add_row(key, f"{original[key]:.6f}", f"{rerun[key]:.6f}", f"{difference:+.2e}")
    return table, largest


def rerun(run_id: str, uri: str, console: Console) -> float:
    """Train run ``run_id`` of the store at ``uri`` again as recorded, into the same store; the
    largest difference between the two runs' final metrics."""
    client = MlflowClient(uri)
    original, cfg, overrides = recorded(client, run_id)
    # The rerun lands beside the original (whichever store the recorded config named); force: a
    # FINISHED run of the same config would skip it.
    cfg.tracking.uri, cfg.force = uri, True
    commit, _ = tracking.git_state()
    if original.data.tags.get("git_commit") not in (None, commit):
        console.print(
            f"note: recorded at commit {original.data.tags['git_commit'][:10]}, now at {commit[:10]}: "
            "code changes since may change the numbers"
        )
    threads = original.data.tags.get("torch_threads", "")
    if threads.isdigit():
        torch.set_num_threads(int(threads))
    console.print(f"rerunning {original.info.run_name} ({run_id}) with: {' '.join(overrides) or 'defaults'}")
    outcome = fit(cfg, overrides, tags={"rerun_of": run_id})
    again = client.get_run(outcome.run_id).data.metrics  # as logged, like the original's
    table, largest = compare(dict(original.data.metrics), dict(again))
    console.print(table)
    console.print("reproduced exactly" if largest == 0 else f"largest difference: {largest:.3g}")
    return largest


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not args[0] or args[0].startswith("-"):
        print("usage: python -m normlab.rerun <run id>   (make rerun RUN_ID=<id>)", file=sys.stderr)
        sys.exit(2)
    console = Console()
    try:
        rerun(args[0], config.tracking_uri(), console)
    except (RerunError, ConfigError, DataError, tracking.StoreError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except RunFailed as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
