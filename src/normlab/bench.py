"""``make bench``: the platform's training path against a plain PyTorch loop, side by side in one process.

Measured (samples/s of training passes; the first epoch is warm-up and not counted):
- the reference loop (tensors in memory, index batches, SGD, cross-entropy: the loop a notebook
  writes) and the platform's ``fit`` (Lightning, callbacks, MLflow) on the same model and data, at
  batch 256 and 8, for every norm kind. Runs alternate and each reports its median epoch, so a
  noisy neighbour hurts both sides alike;
- scratch vs native BN time per step, from the platform runs; ghost BN with virtual batch 2 at
  batch 128 (64 statistics groups per layer, one reshape) vs native BN, per step;
- MLflow logging: seconds inside the logger's ``log_metrics`` over the seconds of the whole fit;
- sweep throughput: the same small sweep with 1 and with N parallel jobs (pool launcher).

The last line is ``speed ratio vs reference: bs256=<x> bs8=<y>`` (BN-LeNet, native BN).
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr
from pathlib import Path

import torch
import torch.nn.functional as F
from mlflow import MlflowClient
from omegaconf import DictConfig

from normlab import config, data, tracking
from normlab.config import compose as compose_config
from normlab.config import effective_lr
from normlab.fused import FusedLeNet, fused_loss, sgd_step
from normlab.run import build_net, fit

NORMS = ("none", "scratch", "native")
FUSED_BATCHES = (2, 8, 32, 256)  # where fused training is measured
# Images per epoch at each batch size: at least ~100 steps, about a second per epoch on 2 cores.
SUBSETS = {256: 12288, 8: 2048}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reference_rates(cfg: DictConfig, epochs: int) -> list[float]:
    """Samples/s per epoch of the plain loop, on the device Lightning would pick, same model and data."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(cfg.seed)
    train, _ = data.load(cfg.data.root, cfg.data.download, cfg.data.train_subset, device=device)
    net = build_net(cfg).to(device).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=effective_lr(cfg))
    n, batch_size = len(train.labels), cfg.data.batch_size
    rates = []
    for epoch in range(epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + epoch)).to(device)
        _synchronize(device)
        started = time.perf_counter()
        for start in range(0, n, batch_size):
            index = order[start : start + batch_size]
            loss = F.cross_entropy(net(train.images[index]), train.labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        _synchronize(device)
        rates.append(n / (time.perf_counter() - started))
    return rates


@contextmanager
def timed_logging() -> Iterator[list[float]]:
    """Seconds spent in each ``EpochMLFlowLogger.log_metrics`` call while the block runs."""
    seconds: list[float] = []
    original = tracking.EpochMLFlowLogger.log_metrics

    def timed(self: tracking.EpochMLFlowLogger, *args: object, **kwargs: object) -> None:
        started = time.perf_counter()
        original(self, *args, **kwargs)
        seconds.append(time.perf_counter() - started)

    tracking.EpochMLFlowLogger.log_metrics = timed  # type: ignore[method-assign]
    try:
        yield seconds
    finally:
        tracking.EpochMLFlowLogger.log_metrics = original  # type: ignore[method-assign]


def platform_rates(cfg: DictConfig) -> tuple[list[float], float]:
    """Samples/s per epoch of ``fit`` (as logged by the run) and the share of its time spent logging."""
    with timed_logging() as logging_seconds, redirect_stderr(io.StringIO()):  # no per-epoch lines
        started = time.perf_counter()
        fit(cfg, overrides=[])
        total = time.perf_counter() - started
    client = MlflowClient(cfg.tracking.uri)
    experiment = client.get_experiment_by_name(cfg.study)
    run = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])[0]
    history = sorted(client.get_metric_history(run.info.run_id, "perf/samples_per_s"), key=lambda m: m.step)
    return [m.value for m in history], sum(logging_seconds) / total


def steady(rates: list[float]) -> float:
    """The median epoch after the first (warm-up: allocator, kernels, caches)."""
    return statistics.median(rates[1:] if len(rates) > 1 else rates)


def sweep_seconds(jobs: int, store: str, workdir: Path) -> float:
    """Wall seconds of one small CPU sweep (4 cells) with ``jobs`` parallel pool-launcher jobs."""
    command = [
        sys.executable, "-m", "normlab.train", "-m", "study=bench-sweep", "norm=none,native",
        "seed=0,1", "data.train_subset=6000", "data.batch_size=64", "trainer.max_epochs=2",
        "trainer.accelerator=cpu", "eval.precise_samples=640", f"hydra.launcher.cpu_jobs={jobs}",
        f"hydra.sweep.dir={workdir / f'sweep-{jobs}'}", "force=true",
        f"checkpoint_dir={workdir / 'checkpoints'}",
    ]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env={**os.environ, "MLFLOW_TRACKING_URI": store})
    return time.perf_counter() - started


def step_seconds(norm: str, options: list[str], batch_size: int, steps: int) -> float:
    """Median seconds of a training step (forward, backward, SGD) of BN-LeNet with ``norm``."""
    cfg = compose_config([f"norm={norm}", *options, f"data.batch_size={batch_size}"])
    torch.manual_seed(0)
    net = build_net(cfg).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    images, labels = torch.rand(batch_size, 1, 28, 28), torch.randint(0, 10, (batch_size,))
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        loss = F.cross_entropy(net(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - started)
    return statistics.median(times[steps // 5 :])  # the first fifth warms up


def ghost_step_ratio(repeats: int = 5, steps: int = 50) -> float:
    """Ghost BN at batch 128 with virtual batch 2 (64 statistics groups per layer) over native BN's
    step time, runs alternating so that load drifts hit both; the median of the per-pair ratios."""
    ratios = []
    for _ in range(repeats):
        native = step_seconds("native", [], 128, steps)
        ghost = step_seconds("ghost", ["norm.virtual_batch_size=2"], 128, steps)
        ratios.append(ghost / native)
    return statistics.median(ratios)


def fused_speedup(batch_size: int, k: int = 15, steps: int = 30, repeats: int = 3) -> float:
    """Samples/s per model of K BN-LeNets trained as one fused model (``normlab.fused``) over the
    same K trained one after another, plain loops, same data; alternating, median of ``repeats``.
    What fusion would buy a sweep of K cells at this batch size (not yet wired into sweeps)."""
    torch.manual_seed(0)
    nets = [build_net(compose_config(["norm=scratch"])).train() for _ in range(k)]
    fused = FusedLeNet(nets)
    images = torch.rand(k, batch_size, 1, 28, 28)
    labels = torch.randint(0, 10, (k, batch_size))
    optimizers = [torch.optim.SGD(net.parameters(), lr=0.01) for net in nets]
    lrs = torch.full((k,), 0.01)

    def alone() -> None:
        for net, optimizer, x, y in zip(nets, optimizers, images, labels, strict=True):
            optimizer.zero_grad()
            F.cross_entropy(net(x), y).backward()
            optimizer.step()

    def together() -> None:
        fused.zero_grad()
        fused_loss(fused(images), labels)[0].backward()
        sgd_step(fused, lrs)

    ratios = []
    for _ in range(repeats):
        seconds = []
        for step in (alone, together):
            step()  # warm-up
            started = time.perf_counter()
            for _ in range(steps):
                step()
            seconds.append(time.perf_counter() - started)
        ratios.append(seconds[0] / seconds[1])
    return statistics.median(ratios)


def run(epochs: int, repeats: int, sweep: bool, say: Callable[[str], None] = print) -> dict[str, float]:
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="normlab-bench-") as workdir:
        store = f"sqlite:///{workdir}/mlflow.db"
        say(f"bench: {torch.get_num_threads()} torch threads, {os.cpu_count()} cores, "
            f"cuda={torch.cuda.is_available()}; {epochs} epochs x {repeats} repeats per cell")  # fmt: skip
        for batch_size, subset in SUBSETS.items():
            for norm in NORMS:
                cfg = compose_config([
                    "study=bench", f"norm={norm}", f"data.batch_size={batch_size}",
                    f"data.train_subset={subset}", f"trainer.max_epochs={epochs}",
                    "eval.precise_samples=640", f"tracking.uri={store}", "force=true",
                    f"checkpoint_dir={workdir}/checkpoints",
                ])  # fmt: skip
                reference, platform, logging_share = [], [], []
                for _ in range(repeats):  # alternate, so drifts in machine load hit both sides
                    reference.append(steady(reference_rates(cfg, epochs)))
                    rates, share = platform_rates(cfg)
                    platform.append(steady(rates))
                    logging_share.append(share)
                ours, theirs = statistics.median(platform), statistics.median(reference)
                results[f"bs{batch_size}/{norm}/platform"] = ours
                results[f"bs{batch_size}/{norm}/reference"] = theirs
                results[f"bs{batch_size}/{norm}/ratio"] = ours / theirs
                results[f"bs{batch_size}/{norm}/logging"] = max(logging_share)
                share = 100 * max(logging_share)
                say(f"bs{batch_size:<4} {norm:<8} platform {ours:9.0f}/s  reference {theirs:9.0f}/s  "
                    f"ratio {ours / theirs:5.2f}  logging {share:.2f}% of fit time")  # fmt: skip
            step_ratio = (
                results[f"bs{batch_size}/native/platform"] / results[f"bs{batch_size}/scratch/platform"]
            )
            results[f"bs{batch_size}/scratch_vs_native"] = step_ratio
            say(f"bs{batch_size:<4} scratch BN time per step = {step_ratio:.2f} x native")
        results["ghost_vs_native"] = ghost_step_ratio()
        say(f"bs128  ghost BN (virtual batch 2) time per step = {results['ghost_vs_native']:.2f} x native")
        for batch_size in FUSED_BATCHES:
            results[f"fused_bs{batch_size}"] = fused_speedup(batch_size)
        speedups = " ".join(f"bs{b}={results[f'fused_bs{b}']:.2f}" for b in FUSED_BATCHES)
        say(f"fused training, 15 BN-LeNets as one (plain loop, samples/s per model): speed-up {speedups}")
        if sweep:
            jobs = max(2, min(4, os.cpu_count() or 1))
            one, many = sweep_seconds(1, store, Path(workdir)), sweep_seconds(jobs, store, Path(workdir))
            results.update(sweep_1_s=one, sweep_n_s=many, sweep_jobs=jobs)
            say(f"sweep of 4 cells: 1 job {one:.1f} s, {jobs} jobs {many:.1f} s, speed-up {one / many:.2f}x")
    return results


def final_line(results: dict[str, float]) -> str:
    """The bench's last line, for scripts: BN-LeNet with native BN, platform / reference samples/s."""
    return (
        f"speed ratio vs reference: bs256={results['bs256/native/ratio']:.2f} "
        f"bs8={results['bs8/native/ratio']:.2f}"
    )


def write_report(path: Path, lines: list[str], command: str) -> None:
    """The printed lines, with the machine, device, commit and date they were measured on."""
    commit, dirty = tracking.git_state()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "\n".join([
            "# Speed: the platform's training path vs a plain PyTorch loop",
            "",
            f"Generated by `{command}` (src/normlab/bench.py explains each measurement).",
            "",
            f"- machine: {tracking.machine()}; device: {device}",
            f"- commit: {commit[:10]}{' (dirty)' if dirty else ''}",
            f"- measured: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
            "",
            "```",
            *lines,
            "```",
            "",
        ])
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4, help="epochs per measured run (first is warm-up)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating reference/platform runs per cell")
    parser.add_argument("--no-sweep", dest="sweep", action="store_false", help="skip the 1-vs-N-jobs sweep")
    parser.add_argument("--out", type=Path, help="default: experiments/bench/RESULTS-<cpu|cuda>.md")
    arguments = parser.parse_args()
    lines: list[str] = []

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    results = run(arguments.epochs, arguments.repeats, arguments.sweep, say)
    kind = "cuda" if torch.cuda.is_available() else "cpu"
    out = arguments.out or config.EXPERIMENTS_DIR / "bench" / f"RESULTS-{kind}.md"
    write_report(out, [*lines, final_line(results)], " ".join(["make bench", *sys.argv[1:]]))
    print(f"wrote {out}")
    print(final_line(results))


if __name__ == "__main__":
    main()
