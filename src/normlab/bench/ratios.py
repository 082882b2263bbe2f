"""``make bench``: the platform's training path against a plain PyTorch loop, side by side in one process.

Measured (samples/s of training passes; the first epoch is warm-up and not counted):
- the reference loop (tensors in memory, index batches, SGD, cross-entropy: the loop a notebook
  writes) and the platform's ``fit`` (Lightning, callbacks, MLflow) on the same model and data, at
  batch 256 and 8, for every norm kind. Runs alternate and each reports its median epoch, so a
  noisy neighbour hurts both sides alike;
- scratch vs native BN time per step, from the platform runs; ghost BN with virtual batch 2 at
  batch 128 (64 statistics groups per layer, one reshape) vs native BN, per step;
- MLflow logging: seconds inside the logger's ``log_metrics`` over the seconds of the whole fit;
- sweep throughput: the same small sweep with 1 and with N parallel jobs (pool launcher);
- fused training (``normlab.fused.run``): 15 cells (none, scratch, native, group, layer BN-LeNets,
  3 seeds each: the batch_size study's kinds) trained as one fused group vs each alone, through
  the platform (``fit_group`` vs ``fit``), samples/s per cell of their second epoch; and at batch
  2, 15 cells of one kind (torch's BN, 15 seeds), what a seed or lr sweep of one kind fuses at:
  each norm kind in a group adds its own calls per norm layer.

Every ratio is the median of ``--repeats`` (default 5) interleaved repeats, printed with its
min-max spread; the share of the cores' time that other work took meanwhile (``normlab.bench.cpu_share``;
the load average where there is no ``/proc/stat``) says whether the machine was quiet.
The second-to-last line is ``speed ratio vs reference: bs256=<x> bs8=<y>`` (BN-LeNet, native BN),
the last ``fused speed-up: bs2=<x> bs8=<y> bs256=<z>`` with ``fuse=auto`` (a batch size it trains
alone has speed-up 1 by construction; the measured fused ratio is printed above it).
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

from normlab import config, data
from normlab.bench import cpu_share
from normlab.config.compose import compose as compose_config
from normlab.config.rules import effective_lr
from normlab.fused import plan as fusion
from normlab.fused.run import fit_group
from normlab.tracking import store as tracking
from normlab.tracking.epochs import EpochRecorder
from normlab.training.inputs import build_net
from normlab.training.solo import fit

NORMS = ("none", "scratch", "native")
FUSED_KINDS = ("none", "scratch", "native", "group", "layer")  # x FUSED_SEEDS = the 15 fused cells
FUSED_SEEDS = 3
# A group of one kind (a seed or lr sweep), at the batch where fusion pays most.
ONE_KIND, ONE_KIND_SEEDS, ONE_KIND_BATCH = "native", 15, 2
# Images per epoch of the fused measurement at each batch size: 1-2 s per epoch for a cell alone
# (batch 2, the shortest steps, gets two: one noisy second moves its ratio most). Batch 32 shows
# where ``fuse=auto`` stops fusing on CPU (fusion.AUTO_MAX_BATCH).
FUSED_SUBSETS = {2: 2048, 8: 3072, 32: 8192, 256: 16384}
AUTO_LINE_BATCHES = (2, 8, 256)  # the last line's
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
    """Seconds spent in each ``EpochRecorder.log`` call (an epoch's metrics into MLflow) while the
    block runs."""
    seconds: list[float] = []
    original = EpochRecorder.log

    def timed(self: EpochRecorder, *args: object, **kwargs: object) -> None:
        started = time.perf_counter()
        original(self, *args, **kwargs)
        seconds.append(time.perf_counter() - started)

    EpochRecorder.log = timed  # type: ignore[method-assign]
    try:
        yield seconds
    finally:
        EpochRecorder.log = original  # type: ignore[method-assign]


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


def ghost_step_ratios(repeats: int = 5, steps: int = 50) -> list[float]:
    """Ghost BN at batch 128 with virtual batch 2 (64 statistics groups per layer) over native BN's
    step time, runs alternating so that load drifts hit both; the per-pair ratios."""
    ratios = []
    for _ in range(repeats):
        native = step_seconds("native", [], 128, steps)
        ghost = step_seconds("ghost", ["norm.virtual_batch_size=2"], 128, steps)
        ratios.append(ghost / native)
    return ratios


def spread(ratios: list[float]) -> str:
    """``<median> [<min>-<max>]``: a ratio of interleaved repeats with its spread."""
    return f"{statistics.median(ratios):.2f} [{min(ratios):.2f}-{max(ratios):.2f}]"


def load_note(before: tuple[float, float, float], after: tuple[float, float, float]) -> str:
    """The 1-minute load average around the bench, and whether other work competed with it (the
    bench itself keeps at most its torch threads busy): the gauge where ``cpu_share`` has none."""
    cores = os.cpu_count() or 1
    busy = max(before[0], after[0]) > cores + 0.5 or before[0] > 0.5 * cores
    verdict = (
        "BUSY: other work shared the cores; the ratios below may mislead, rerun on a quiet machine"
        if busy
        else "quiet"
    )
    return f"load average (1 min) {before[0]:.2f} before, {after[0]:.2f} after, {cores} cores: {verdict}"


def _cfg(
    study: str, norm: str, batch_size: int, subset: int, epochs: int, workdir: str, store: str, *more: str
) -> DictConfig:
    """A bench cell, trained even where an equal run exists, into the bench's temporary store;
    ``more``: further overrides. Its lr scales with the batch (0.9 at 256): the speed of a step does
    not depend on the lr, but a run that diverges ends FAILED before its epochs are measured."""
    return compose_config([
        f"study={study}", f"norm={norm}", f"data.batch_size={batch_size}", f"data.train_subset={subset}",
        f"trainer.max_epochs={epochs}", f"tracking.uri={store}", "force=true", "lr_scaling=linear",
        f"checkpoint_dir={workdir}/checkpoints", *more,
    ])  # fmt: skip


def _fused_cfg(batch_size: int, kind: str, seed: int, workdir: str, store: str) -> DictConfig:
    """A cell of the fused measurement: 2 epochs (one measured) of ``FUSED_SUBSETS[batch_size]`` images."""
    subset = FUSED_SUBSETS[batch_size]
    return _cfg(
        "bench-fused", kind, batch_size, subset, 2, workdir, store, f"seed={seed}", "eval.precise_samples=64"
    )


def fused_ratio(
    batch_size: int, workdir: str, store: str, kinds: tuple[str, ...] = FUSED_KINDS, seeds: int = FUSED_SEEDS
) -> float:
    """How much faster ``kinds`` x ``seeds`` cells train as one fused group than one after another
    alone: their summed samples/s (each cell's samples/s fused, times the cells) over the summed
    samples/s alone (each kind alone once: its seeds cost the same); second epochs (the first warms up)."""
    with redirect_stderr(io.StringIO()):
        cfgs = [_fused_cfg(batch_size, kind, seed, workdir, store) for kind in kinds for seed in range(seeds)]
        group = fit_group(cfgs, [[] for _ in cfgs])
        assert group[0].outcome is not None
        seconds_fused = 1 / group[0].outcome.metrics["perf/samples_per_s"]  # per sample of every cell
        seconds_alone = seeds * sum(  # per sample of every cell, one cell after another
            1 / fit(_fused_cfg(batch_size, kind, 0, workdir, store), []).metrics["perf/samples_per_s"]
            for kind in kinds
        )
    return seconds_alone / seconds_fused


def run(epochs: int, repeats: int, sweep: bool, say: Callable[[str], None] = print) -> dict[str, float]:
    results: dict[str, float] = {}
    before, cpu_before = os.getloadavg(), cpu_share.sample()
    with tempfile.TemporaryDirectory(prefix="normlab-bench-") as workdir:
        store = f"sqlite:///{workdir}/mlflow.db"
        say(f"bench: {torch.get_num_threads()} torch threads, {os.cpu_count()} cores, "
            f"cuda={torch.cuda.is_available()}; {epochs} epochs per run, ratios: median [min-max] "
            f"of {repeats} interleaved repeats")  # fmt: skip
        for batch_size, subset in SUBSETS.items():
            cfgs = {
                norm: _cfg(
                    "bench", norm, batch_size, subset, epochs, workdir, store, "eval.precise_samples=640"
                )
                for norm in NORMS
            }
            reference: dict[str, list[float]] = {norm: [] for norm in NORMS}
            rates: dict[str, list[float]] = {norm: [] for norm in NORMS}  # the platform's
            logging_share: dict[str, list[float]] = {norm: [] for norm in NORMS}
            # Every norm in every repeat, each platform run right after its reference run: a drift in
            # the machine's speed (minutes long on a shared VM) hits both sides of each ratio alike,
            # scratch vs native BN too (measured norm after norm, that ratio differed by 27% between
            # two quiet runs).
            for _ in range(repeats):
                for norm, cfg in cfgs.items():
                    reference[norm].append(steady(reference_rates(cfg, epochs)))
                    platform_epochs, share = platform_rates(cfg)
                    rates[norm].append(steady(platform_epochs))
                    logging_share[norm].append(share)
            for norm in NORMS:
                platform = rates[norm]
                ratios = [ours / theirs for ours, theirs in zip(platform, reference[norm], strict=True)]
                results[f"bs{batch_size}/{norm}/platform"] = statistics.median(platform)
                results[f"bs{batch_size}/{norm}/reference"] = statistics.median(reference[norm])
                results[f"bs{batch_size}/{norm}/ratio"] = statistics.median(ratios)
                results[f"bs{batch_size}/{norm}/logging"] = max(logging_share[norm])
                say(f"bs{batch_size:<4} {norm:<8} platform {statistics.median(platform):9.0f}/s  "
                    f"reference {statistics.median(reference[norm]):9.0f}/s  ratio {spread(ratios)}  "
                    f"logging {100 * max(logging_share[norm]):.2f}% of fit time")  # fmt: skip
            step_ratios = [n / s for n, s in zip(rates["native"], rates["scratch"], strict=True)]
            results[f"bs{batch_size}/scratch_vs_native"] = statistics.median(step_ratios)
            say(f"bs{batch_size:<4} scratch BN time per step = {spread(step_ratios)} x native")
        ghost = ghost_step_ratios(repeats)
        results["ghost_vs_native"] = statistics.median(ghost)
        say(f"bs128  ghost BN (virtual batch 2) time per step = {spread(ghost)} x native")
        fused: dict[int, list[float]] = {batch_size: [] for batch_size in FUSED_SUBSETS}
        one_kind: list[float] = []
        for _ in range(repeats):  # each repeat over every batch size: load drifts hit all alike
            for batch_size in FUSED_SUBSETS:
                fused[batch_size].append(fused_ratio(batch_size, workdir, store))
            one_kind.append(fused_ratio(ONE_KIND_BATCH, workdir, store, (ONE_KIND,), ONE_KIND_SEEDS))
        for batch_size, ratios in fused.items():
            results[f"fused_bs{batch_size}"] = statistics.median(ratios)
            auto = fusion.wanted(_fused_cfg(batch_size, "none", 0, workdir, store))
            results[f"auto_bs{batch_size}"] = statistics.median(ratios) if auto else 1.0
            verdict = "fuses" if auto else "trains alone"
            kinds = len(FUSED_KINDS)
            cells = f"{kinds * FUSED_SEEDS} cells ({kinds} norm kinds x {FUSED_SEEDS} seeds)"
            say(f"bs{batch_size:<4} {cells} fused: {spread(ratios)} x the "
                f"samples/s of training them one after another; fuse=auto {verdict} here")  # fmt: skip
        results[f"fused_bs{ONE_KIND_BATCH}_one_kind"] = statistics.median(one_kind)
        say(f"bs{ONE_KIND_BATCH:<4} {ONE_KIND_SEEDS} cells of one kind ({ONE_KIND} x {ONE_KIND_SEEDS} seeds) "
            f"fused: {spread(one_kind)} x the samples/s of training them one after another")  # fmt: skip
        if sweep:
            jobs = max(2, min(4, os.cpu_count() or 1))
            ratios = []
            for _ in range(repeats):
                one, many = sweep_seconds(1, store, Path(workdir)), sweep_seconds(jobs, store, Path(workdir))
                ratios.append(one / many)
            results.update(sweep_speedup=statistics.median(ratios), sweep_jobs=jobs)
            say(f"sweep of 4 cells: {jobs} jobs vs 1 job, speed-up {spread(ratios)}x")
    cpu_after = cpu_share.sample()
    if cpu_before is None or cpu_after is None:
        say(load_note(before, os.getloadavg()))
    else:
        others = cpu_share.share(cpu_before, cpu_after)
        results["others_share"] = others.others
        say(cpu_share.note(others))
    return results


def ratio_line(results: dict[str, float]) -> str:
    """The second-to-last line, for scripts: BN-LeNet with native BN, platform / reference samples/s."""
    return (
        f"speed ratio vs reference: bs256={results['bs256/native/ratio']:.2f} "
        f"bs8={results['bs8/native/ratio']:.2f}"
    )


def final_line(results: dict[str, float]) -> str:
    """The last line, for scripts: samples/s per cell of a 15-cell sweep with fuse=auto vs fuse=false."""
    return "fused speed-up: " + " ".join(f"bs{b}={results[f'auto_bs{b}']:.2f}" for b in AUTO_LINE_BATCHES)


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
    parser = argparse.ArgumentParser(prog="python -m normlab.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4, help="epochs per measured run (first is warm-up)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats of every ratio")
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
    write_report(
        out, [*lines, ratio_line(results), final_line(results)], " ".join(["make bench", *sys.argv[1:]])
    )
    print(f"wrote {out}")
    print(ratio_line(results))
    print(final_line(results))


if __name__ == "__main__":
    main()
