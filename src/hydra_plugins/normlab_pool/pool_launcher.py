"""A Hydra launcher that runs a sweep's cells concurrently on a pool of device slots.

Each slot is one long-lived worker process, started with ``CUDA_VISIBLE_DEVICES`` and the torch
thread count set in its environment *before* it imports torch, so pinning works (joblib's loky
workers are created before the launcher can pin them). Workers take the next cell from one shared
queue when they are free: a GPU never holds more than ``jobs_per_gpu`` cells while another sits idle
(a pool of slots, not ``job_num % G``). Without GPUs: ``cpu_jobs`` workers x ``threads`` <= cores.

Select it with ``hydra/launcher=pool`` (the default of ``make sweep``).
"""

# No `from __future__ import annotations`: Hydra imports plugins in a way that breaks dataclasses with it,
# and OmegaConf needs Optional[...] (not X | None) in structured configs.
import json
import logging
import multiprocessing as mp
import os
import queue
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import cloudpickle
from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)
STOPPING = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C; how SLURM preempts and `timeout` stops a job
NOT_STARTED = "not started"
INTERRUPTION_FILE = "interrupted.json"  # in the sweep folder: which signal stopped it, cells not started


@dataclass
class PoolLauncherConf:
    _target_: str = "hydra_plugins.normlab_pool.pool_launcher.PoolLauncher"
    jobs_per_gpu: int = 4  # LeNet uses a sliver of a GPU; several cells share one
    cpu_jobs: Optional[int] = None  # without GPUs; null = cores // threads_per_job  # noqa: UP045
    threads_per_job: Optional[int] = None  # torch threads per cell; null = cores // jobs  # noqa: UP045


ConfigStore.instance().store(group="hydra/launcher", name="pool", node=PoolLauncherConf, provider="normlab")


@dataclass(frozen=True)
class Slot:
    gpu: str | None  # a CUDA device index, or None for the CPU
    threads: int


def visible_gpus() -> list[str]:
    """GPU indices this process may use, without initializing CUDA in the launcher."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [gpu for gpu in listed.split(",") if gpu.strip() and gpu.strip() != "-1"]
    import torch  # the launcher process only counts devices

    return [str(i) for i in range(torch.cuda.device_count())]


def plan_slots(
    gpus: Sequence[str],
    jobs_per_gpu: int,
    cores: int,
    cpu_jobs: int | None = None,
    threads: int | None = None,
) -> list[Slot]:
    """One slot per concurrent cell: ``jobs_per_gpu`` per GPU, or CPU slots with jobs x threads <= cores."""
    if gpus:
        count = len(gpus) * jobs_per_gpu
        per_job = threads or max(1, cores // count)
        return [Slot(gpu, per_job) for _ in range(jobs_per_gpu) for gpu in gpus]
    per_job = threads or (max(1, cores // cpu_jobs) if cpu_jobs else 1)
    count = cpu_jobs or max(1, cores // per_job)
    return [Slot(None, per_job) for _ in range(count)]


def _die_with_parent(parent: int) -> None:
    """Linux: have the kernel kill this worker when the launcher dies, even by SIGKILL; otherwise an
    orphaned worker would train on with nobody to report to."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the launcher died before prctl took effect
        os._exit(1)


def _portable(ret: JobReturn) -> bytes:
    """A job's return pickled for the launcher; an exception that cannot be pickled (it holds a
    lock, a frame, a connection) travels as its type and message instead."""
    try:
        return cloudpickle.dumps(ret)
    except Exception:  # any pickling error: the outcome must still reach the launcher
        error = ret._return_value
        ret._return_value = RuntimeError(f"{type(error).__name__}: {error}")
        return cloudpickle.dumps(ret)


def _worker(slot: Slot, state: bytes, jobs: Any, results: Any, parent: int) -> None:
    """A slot's process: its environment was pinned by the parent; run cells until told to stop.
    Ctrl-C or SIGTERM ends the worker after its cell: a task that traps them at a safe point (as
    normlab's training does) ends the cell itself, else the cell is interrupted at once; either way
    it reports as failed, with no traceback, and the worker takes no more cells."""
    _die_with_parent(parent)
    stop: list[str] = []
    busy = [False]

    def on_signal(received: int, frame: Any) -> None:
        stop.append(signal.Signals(received).name)
        if busy[0] and len(stop) == 1:  # outside the task's own safe point; a repeat changes nothing
            raise KeyboardInterrupt(stop[-1])

    for signum in STOPPING:
        signal.signal(signum, on_signal)
    task_function, context, singleton = cloudpickle.loads(state)
    if "torch" in sys.modules:  # the task's module imported it: pin it (else OMP_NUM_THREADS will)
        sys.modules["torch"].set_num_threads(slot.threads)
    Singleton.set_state(singleton)
    setup_globals()
    while not stop and (job := jobs.get()) is not None:
        idx, config = job
        results.put((idx, "started", os.getpid()))
        busy[0] = True
        try:
            ret = run_job(
                hydra_context=context,
                task_function=task_function,
                config=config,
                job_dir_key="hydra.sweep.dir",
                job_subdir_key="hydra.sweep.subdir",
            )
        except (KeyboardInterrupt, SystemExit) as interruption:  # the task ended for a signal
            why = f"interrupted ({stop[0] if stop else 'SIGINT'}): {interruption}".rstrip(": ")
            ret = JobReturn(status=JobStatus.FAILED, _return_value=RuntimeError(why))
            stop.append("interrupted")
        finally:
            busy[0] = False
        results.put((idx, "ended", _portable(ret)))


class PoolLauncher(Launcher):
    def __init__(
        self, jobs_per_gpu: int = 4, cpu_jobs: int | None = None, threads_per_job: int | None = None
    ):
        self.jobs_per_gpu = jobs_per_gpu
        self.cpu_jobs = cpu_jobs
        self.threads_per_job = threads_per_job
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        interruption = sweep_dir / INTERRUPTION_FILE
        if interruption.exists():  # an earlier batch of this sweep was interrupted: start nothing more
            record = json.loads(interruption.read_text())
            record["not_started"] += len(job_overrides)
            interruption.write_text(json.dumps(record))
            return []
        slots = plan_slots(
            visible_gpus(), self.jobs_per_gpu, os.cpu_count() or 1, self.cpu_jobs, self.threads_per_job
        )
        slots = slots[: len(job_overrides)]

        context = mp.get_context("spawn")
        jobs, results = context.Queue(), context.Queue()
        cells: dict[int, list[str]] = {}
        for offset, overrides in enumerate(job_overrides):
            idx = initial_job_idx + offset
            config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(config):
                config.hydra.job.id = idx
                config.hydra.job.num = idx
            cells[idx] = list(overrides)
            jobs.put((idx, config))
        for _ in slots:
            jobs.put(None)

        # cloudpickle, as Hydra's joblib launcher does: the task may be a closure or a callable object,
        # and Hydra's state holds OmegaConf resolver closures.
        state = cloudpickle.dumps((self.task_function, self.hydra_context, Singleton.get_state()))
        shared = (state, jobs, results, os.getpid())
        workers = [self._start(context, slot, shared) for slot in slots]
        where = ", ".join(f"{'gpu ' + s.gpu if s.gpu else 'cpu'} x{s.threads} threads" for s in slots)
        log.info(f"Launching {len(cells)} jobs on {len(slots)} slots ({where})")
        # Ctrl-C (the terminal sends it to every process of the sweep) or SIGTERM (`timeout` sends it
        # to this process alone: passed on; a second signal to a worker would skip its safe point):
        # the workers end their cells and take no more, the cells never started are listed, and the
        # sweep's summary says it was interrupted (no traceback from here).
        stopped: list[str] = []

        def stop(received: int, frame: Any) -> None:
            stopped.append(signal.Signals(received).name)
            if received == signal.SIGTERM and len(stopped) == 1:
                for worker in workers:
                    if worker.is_alive():
                        os.kill(worker.pid, received)

        previous = {signum: signal.signal(signum, stop) for signum in STOPPING}
        try:
            outcomes = _collect(cells, results, workers, stopped)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            # Jobs no worker took (an interrupted sweep, dead workers) must not hold up this process's
            # exit: the queue would wait to flush them into a pipe nobody reads.
            jobs.cancel_join_thread()
        if stopped:
            not_started = sum(str(ret._return_value).startswith(NOT_STARTED) for ret in outcomes.values())
            interruption.write_text(json.dumps({"signal": stopped[0], "not_started": not_started}))
            # Only the cells that completed: Hydra's sweeper re-raises a failed job's error, and the
            # sweep's summary (which reads the interruption record) says what became of the others.
            return [ret for _, ret in sorted(outcomes.items()) if ret.status == JobStatus.COMPLETED]
        return [outcomes[idx] for idx in sorted(outcomes)]

    @staticmethod
    def _start(context: Any, slot: Slot, shared: tuple[Any, ...]) -> Any:
        # A spawned child copies the parent's environment at start(): pin it there, then restore.
        pinned = {"OMP_NUM_THREADS": str(slot.threads), "MKL_NUM_THREADS": str(slot.threads)}
        if slot.gpu is not None:
            pinned["CUDA_VISIBLE_DEVICES"] = slot.gpu
        saved = {key: os.environ.get(key) for key in pinned}
        os.environ.update(pinned)
        try:
            process = context.Process(target=_worker, args=(slot, *shared))
            process.start()
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        return process


def _lost(overrides: list[str], why: str) -> JobReturn:
    return JobReturn(overrides=overrides, status=JobStatus.FAILED, _return_value=RuntimeError(why))


def _collect(
    cells: dict[int, list[str]], results: Any, workers: list[Any], stopped: list[str]
) -> dict[int, JobReturn]:
    """Wait for every cell, printing progress; cells lost with a dead worker count as failed, and
    cells no worker took once ``stopped`` names a signal as not started."""
    outcomes: dict[int, JobReturn] = {}
    running: dict[int, int] = {}  # cell -> worker pid
    started = time.perf_counter()
    while len(outcomes) < len(cells):
        try:
            idx, kind, value = results.get(timeout=2.0)
        except queue.Empty:
            alive = {w.pid for w in workers if w.is_alive()}
            for idx, pid in list(running.items()):
                if pid not in alive:  # its worker died mid-cell (killed, out of memory, segfault)
                    outcomes[idx] = _lost(cells[idx], f"worker {pid} died while running cell {idx}")
                    del running[idx]
            if not alive and len(outcomes) < len(cells):
                why = (
                    f"not started: the sweep was interrupted ({stopped[0]})" if stopped else "no worker left"
                )
                for idx in cells.keys() - outcomes.keys():
                    outcomes[idx] = _lost(cells[idx], why)
            continue
        if kind == "started":
            running[idx] = value
            continue
        running.pop(idx, None)
        outcomes[idx] = cloudpickle.loads(value)
        if outcomes[idx].overrides is None:  # a cell a signal ended in its worker
            outcomes[idx].overrides = cells[idx]
        failed = sum(ret.status == JobStatus.FAILED for ret in outcomes.values())
        elapsed = time.perf_counter() - started
        eta = elapsed / len(outcomes) * (len(cells) - len(outcomes))
        line = " ".join(filter_overrides(cells[idx]))
        log.info(
            f"[sweep] {len(outcomes)}/{len(cells)} done ({failed} failed), {len(running)} running, "
            f"{elapsed:.0f} s elapsed, eta {eta:.0f} s — finished #{idx}: {line}"
        )
    for worker in workers:
        worker.join(timeout=10)
    return outcomes
