"""Run the training grid's independent runs on an executor: in-process, a local process pool, Dask
distributed, submitit (SLURM), or any `concurrent.futures`-style executor.

    run_grid(profile, "results", executor="process", workers=2, threads=1)
    run_grid(profile, "results", executor="tcp://scheduler:8786")          # a Dask cluster

A worker (`run_job`) loads the data once per process and calls `train(config, runs_root=...)`,
which holds the run's lock, so two grids on one folder never train a run twice. `execute`
submits the jobs, prints one line per finished run and collects failures instead of stopping; a
pool whose worker died is restarted and its runs retried once.
Not here: which runs make the grid (experiments.py), training itself (trainer.py).
"""
from __future__ import annotations

import concurrent.futures as cf
from concurrent.futures import BrokenExecutor
import contextlib
import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..config import TrainConfig, load_data, resolve_device
from ..runs import Run
from ..version import __version__

ENGINES = ("auto", "inprocess", "process", "dask", "submitit")
CLUSTER_EXTRA = "pip install -e '.[cluster]'   (or: pip install 'dask[distributed]' submitit)"
WORKER_LOG = "worker.log"


# --- The job a worker runs ------------------------------------------------------------------------
@dataclass(frozen=True)
class GridJob:
    """One run of the grid, as shipped to a worker (plain, picklable data)."""

    config: TrainConfig
    runs_root: str
    fingerprint: str            # the data the grid was planned with; other data are refused
    label: str                  # "dfa seed 42 (frozen blocks)", for progress and errors
    run_name: str               # the planned run folder under runs_root; another is refused
    accept_stopped: bool = False
    threads: int | None = None  # torch CPU threads in the worker (not part of the run's key)
    log: bool = True            # send the worker's output to <run folder>/worker.log
    rule_path: str | None = None  # module:Class: a worker that lacks the rule imports it first
    tensorboard: str | None = None  # log the run under <tensorboard>/<run folder name>


@dataclass(frozen=True)
class JobOutcome:
    """What a worker sends back: where the run is and what this call did to it."""

    label: str
    run_dir: str
    status: str                 # "trained" | "reused" | "resumed at epoch k" (TrainResult's)


_DATA: dict[tuple, Any] = {}   # per worker process: the data sets it has loaded, by their config


def _data_for(config: TrainConfig):
    """The config's data set, loaded once per process (a worker trains many runs on it)."""
    key = (config.data, config.data_root, config.download, config.synthetic_preset,
           config.synthetic_n_train, config.synthetic_n_test, config.limit_train, config.augment,
           str(resolve_device(config.device)))
    if key not in _DATA:
        _DATA.clear()   # one data set at a time: a grid uses one
        _DATA[key] = load_data(config, resolve_device(config.device))
    return _DATA[key]


def run_job(job: GridJob, data=None) -> JobOutcome:
    """Train (or reuse, or resume) one run under its lock; the workers' entry point.

    `data`: the in-process executor's; a worker loads them from the config (once per process).
    Data or a run folder other than the planned ones are refused, so that the grid never trains
    a run the planner would not find. Output goes to the planned folder's worker.log."""
    from ..rules import import_rule
    from ..trainer import train

    planned = Path(job.runs_root) / job.run_name
    with _worker_log(planned if job.log else None), _torch_threads(job.threads):
        import_rule(job.config.rule, job.rule_path)  # before the config's key is computed
        if data is None:
            data = _data_for(job.config)
        if data.fingerprint != job.fingerprint:
            raise RuntimeError(
                f"{job.label}: this worker loaded data with fingerprint {data.fingerprint[:12]} "
                f"from the config (data={job.config.data!r}, data_root="
                f"{job.config.data_root!r}), but the grid was planned on data "
                f"{job.fingerprint[:12]}. Workers read the data from the config: pass "
                "data_root=<the folder your data are in> to run_grid (or the profile), or use "
                "executor='inprocess' for data that exist only in memory.")
        name = Run(job.runs_root, job.config, data).dir.name
        if name != job.run_name:
            raise RuntimeError(
                f"{job.label}: this worker would keep the run in {name}, the grid planned "
                f"{job.run_name}: the worker runs fa-eval {__version__} (or other data). Install "
                "the same version of the package on every worker.")
        # train() holds the run's lock (runs.run_lock) while it trains or reuses the run
        result = train(job.config, data=data, runs_root=job.runs_root,
                       accept_stopped=job.accept_stopped, tensorboard=job.tensorboard)
    return JobOutcome(job.label, str(result.run_dir), result.status)


@contextlib.contextmanager
def _torch_threads(threads: int | None):
    """torch's CPU thread count set for one run, and restored after it."""
    if threads is None:
        yield
        return
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _worker_log(run_dir: Path | None):
    """Send this process's Python output to <run_dir>/worker.log (appended) while it trains."""
    if run_dir is None:
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / WORKER_LOG, "a", encoding="utf-8") as log, \
            contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        print(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()} "
              f"host {os.uname().nodename if hasattr(os, 'uname') else '?'}", flush=True)
        try:
            yield
        except BaseException:
            traceback.print_exc()
            raise
        finally:
            log.flush()


# --- Engines --------------------------------------------------------------------------------------
class InProcessExecutor(cf.Executor):
    """Runs each job at submit time in this process (the default on one core): the same code
    path and futures as the other engines, no pickling, the caller's data reused."""

    def submit(self, fn, /, *args, **kwargs):
        future: cf.Future = cf.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:  # reported by `execute`, like a remote failure
            future.set_exception(exc)
        return future


@dataclass
class Engine:
    """An executor and how the grid uses it. `close()` shuts down what `make_executor` started."""

    name: str
    executor: Any
    workers: int | None
    threads: int | None
    in_process: bool = False
    max_in_flight: int | None = None      # None: submit every job at once (the engine queues)
    log: bool = True
    _close: list[Callable[[], None]] = field(default_factory=list, repr=False)
    # a process pool: start a new pool after a worker died (the old one is broken), and stop
    # the workers at once on Ctrl-C (their runs resume from their checkpoints)
    rebuild: Callable[[], None] | None = field(default=None, repr=False)
    abort: Callable[[], None] | None = field(default=None, repr=False)

    def describe(self) -> str:
        w = "" if self.workers is None else f", {self.workers} worker(s)"
        t = "" if self.threads is None else f" x {self.threads} thread(s)"
        return f"{self.name}{w}{t}"

    def close(self) -> None:
        while self._close:
            with contextlib.suppress(Exception):
                self._close.pop()()


def _check_count(name: str, value) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be an int >= 1 (or None for the default), got {value!r}")


def _need(module: str, engine: str):
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"executor {engine!r} needs the package {module!r}, which is not "
                          f"installed: {CLUSTER_EXTRA}") from exc


def check_settings(executor: Any = None, workers: int | None = None,
                   threads: int | None = None) -> None:
    """Refuse bad grid settings before any data are loaded: counts, an unknown executor name,
    an engine that is not installed (objects are checked when the engine is made)."""
    _check_count("workers", workers)
    _check_count("threads", threads)
    if isinstance(executor, str):
        if not (executor in ENGINES or "://" in executor):
            raise ValueError(f"unknown executor {executor!r}; use one of {', '.join(ENGINES)}, "
                             "a Dask scheduler address ('tcp://host:8786') or an executor object")
        engine = "dask" if "://" in executor else executor
        module = {"dask": "distributed", "submitit": "submitit"}.get(engine)
        if module is not None:
            _need(module, engine)


def make_executor(executor: Any = None, *, workers: int | None = None,
                  threads: int | None = None, log_folder: str | Path = "submitit_logs",
                  device: Any = None) -> Engine:
    """An `Engine` for `run_grid`.

    executor: None (in-process if `workers` is None or 1, else a process pool), "auto" (on a
    CPU with 2 or more cores one single-threaded worker per core, else in-process), "inprocess",
    "process", "dask", a Dask scheduler address, "submitit", a `distributed.Client`, a submitit
    executor, or any `concurrent.futures.Executor`. workers: parallel runs. threads: torch CPU
    threads per run (default: the cores divided among the workers). log_folder: where
    executor="submitit" keeps its job files.
    """
    check_settings(executor, workers, threads)
    cores = _cores()
    if executor == "auto":
        # benchmarks/bench_grid.py on 2 cores (README): 2 workers x 1 thread took 0.85x the
        # wall time of one in-process worker x 2 threads (Dask 2 x 1: 0.91x)
        on_gpu = device is not None and getattr(device, "type", str(device)) != "cpu"
        if workers is None and (on_gpu or cores < 2):
            executor = "inprocess"
        else:
            executor = "process"
            workers = workers or cores
            threads = threads or max(1, cores // workers)
    if executor is None:
        executor = "inprocess" if workers in (None, 1) else "process"
    if isinstance(executor, str):
        spec = executor.strip()
        if spec == "inprocess":
            if workers not in (None, 1):
                raise ValueError(f"executor='inprocess' runs one run at a time; got workers="
                                 f"{workers}. Use executor='process' for parallel runs.")
            return Engine("inprocess", InProcessExecutor(), 1, threads, in_process=True,
                          max_in_flight=1, log=False)
        if spec == "process":
            return _process_engine(workers or max(1, cores),
                                   threads or max(1, cores // (workers or max(1, cores))))
        if spec == "dask" or "://" in spec:
            distributed = _need("distributed", "dask")
            if spec == "dask":
                import dask
                n = workers or max(1, cores)
                # Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which fixes
                # glibc's mmap threshold: every large tensor is then mmap'ed and zeroed afresh,
                # and a training step took 2.5x as long (measured, EP on the smoke profile)
                with dask.config.set({"distributed.nanny.pre-spawn-environ."
                                      "MALLOC_TRIM_THRESHOLD_": None}):
                    cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=1,
                                                       processes=True, dashboard_address=None)
                try:
                    client = distributed.Client(cluster)
                except BaseException:
                    cluster.close()
                    raise
                engine = _dask_engine(client, n, threads or max(1, cores // n))
                engine._close += [cluster.close, client.close]
                return engine
            client = distributed.Client(spec)   # a remote cluster: torch's default threads
            engine = _dask_engine(client, workers, threads)
            engine._close.append(client.close)
            return engine
        if spec == "submitit":
            submitit = _need("submitit", "submitit")
            ex = submitit.AutoExecutor(folder=Path(log_folder))
            # a day per run, and as many CPUs as torch threads; your own executor for more
            # (partition, GPUs: submitit.AutoExecutor(...).update_parameters(...))
            ex.update_parameters(timeout_min=24 * 60, cpus_per_task=threads or 1)
            return _submitit_engine(ex, workers, threads)
        raise ValueError(f"unknown executor {executor!r}; use one of {', '.join(ENGINES)}, a Dask "
                         "scheduler address ('tcp://host:8786') or an executor object")
    module = type(executor).__module__ or ""
    if module.startswith("distributed") and hasattr(executor, "get_executor"):
        return _dask_engine(executor, workers, threads)
    if module.startswith("submitit"):
        return _submitit_engine(executor, workers, threads)
    if isinstance(executor, cf.ThreadPoolExecutor):
        raise ValueError("a ThreadPoolExecutor runs several runs in one process, which share "
                         "torch's thread count and the process's output: use executor='process' "
                         "(a process per run) instead")
    if isinstance(executor, cf.Executor) or callable(getattr(executor, "submit", None)):
        return Engine(type(executor).__name__, executor, workers, threads)
    raise TypeError(f"executor must be None, a name ({', '.join(ENGINES)}), a Dask address, a "
                    f"distributed.Client, a submitit executor or a concurrent.futures.Executor; "
                    f"got {type(executor).__name__}")


def _cores() -> int:
    """The CPUs this process may use (its affinity: a SLURM allocation, a container's cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _process_engine(workers: int, threads: int) -> Engine:
    """A pool of `workers` spawned processes that can be rebuilt after a worker dies."""
    import multiprocessing

    def new_pool():
        return cf.ProcessPoolExecutor(max_workers=workers,
                                      mp_context=multiprocessing.get_context("spawn"),
                                      initializer=_exit_with_parent)

    engine = Engine("process", new_pool(), workers, threads)

    def rebuild():
        engine.executor.shutdown(wait=False, cancel_futures=True)
        engine.executor = new_pool()

    def abort():
        pool = engine.executor
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in processes:
            with contextlib.suppress(Exception):
                proc.terminate()

    engine.rebuild, engine.abort = rebuild, abort
    engine._close.append(lambda: engine.executor.shutdown(wait=True, cancel_futures=True))
    return engine


def _exit_with_parent() -> None:
    """A pool worker's initializer: end the worker when the process that started it dies (a
    grid killed with SIGKILL runs no cleanup, and its workers would live on)."""
    import multiprocessing
    from multiprocessing.connection import wait

    parent = multiprocessing.parent_process()
    if parent is None or parent.sentinel is None:
        return

    def watch():
        wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def _dask_engine(client, workers, threads) -> Engine:
    info = {}
    with contextlib.suppress(Exception):
        info = client.scheduler_info().get("workers", {})
    busy = sorted(w.get("name", a) for a, w in info.items() if w.get("nthreads", 1) > 1)
    if busy:
        raise ValueError(f"Dask worker(s) {busy} run several tasks at once (nthreads > 1); one "
                         "run per worker process is needed (runs share torch's thread count and "
                         "the process's output): start the workers with `--nthreads 1` (and "
                         "several processes with `--nworkers N`)")
    if workers is None:
        workers = len(info) or None
    return Engine("dask", client.get_executor(pure=False), workers, threads,
                  max_in_flight=workers)


class _SubmititFutures(cf.Executor):
    """submitit jobs as concurrent.futures futures: a thread per job waits on `job.result()`."""

    def __init__(self, executor):
        self.executor = executor
        self.jobs = []

    def cancel_all(self) -> None:
        for job in self.jobs:
            with contextlib.suppress(Exception):
                job.cancel(check=False)

    def submit(self, fn, /, *args, **kwargs):
        job = self.executor.submit(fn, *args, **kwargs)
        self.jobs.append(job)
        future: cf.Future = cf.Future()

        def wait():
            try:
                result, exc = job.result(), None
            except Exception as error:
                result, exc = None, error
                exc.worker_error = _worker_error(str(error))
                paths = getattr(job, "paths", None)
                if paths is not None:
                    exc.add_note(f"submitit logs: {paths.stdout} and {paths.stderr}")
            with contextlib.suppress(cf.InvalidStateError):   # cancelled on Ctrl-C meanwhile
                future.set_result(result) if exc is None else future.set_exception(exc)

        threading.Thread(target=wait, daemon=True, name=f"submitit-{job.job_id}").start()
        return future


def _worker_error(text: str) -> str | None:
    """The worker's own "Type: message" line in the traceback text submitit reports (the first
    line after the frames of the last traceback, the type without its module), or None."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent")]
    if not starts:
        return None
    for line in lines[starts[-1] + 1:]:
        if line and not line[0].isspace():
            kind, sep, message = line.partition(":")
            return f"{kind.rsplit('.', 1)[-1]}{sep}{message}"
    return None


def _submitit_engine(ex, workers, threads) -> Engine:
    local = type(ex).__name__ == "LocalExecutor" or getattr(ex, "cluster", "") in ("local", "debug")
    # a local submitit executor starts every job at once: keep `workers` of them running (default:
    # the cores); on SLURM, submit every job and let the queue schedule them
    in_flight = (workers or _cores()) if local else workers
    futures = _SubmititFutures(ex)
    return Engine("submitit", futures, workers, threads, max_in_flight=in_flight,
                  abort=futures.cancel_all)


# --- Running the jobs -----------------------------------------------------------------------------
@dataclass(frozen=True)
class RunFailure:
    """A run that did not finish: its label, folder, error and where its output went."""

    label: str
    run_dir: str | None
    error: str
    log: str | None

    def __str__(self) -> str:
        where = f" (log: {self.log})" if self.log else ""
        return f"{self.label}: {self.error}{where}"


class GridRunError(RuntimeError):
    """Some runs failed; every other run finished and is saved. `.failures` lists them."""

    def __init__(self, failures: Sequence[RunFailure], total: int):
        self.failures = list(failures)
        lines = "\n".join(f"  {f}" for f in self.failures)
        super().__init__(
            f"{len(self.failures)} of {total} run(s) failed; the other {total - len(failures)} "
            f"finished and are saved:\n{lines}\nFix the cause and rerun the same command: "
            "finished runs are reused and only these are retried (an interrupted one resumes "
            "from its last checkpoint).")


def _first_line(exc: BaseException) -> str:
    """The error's type and first line (for a submitit job, the worker's own error), and its
    notes (submitit's log paths)."""
    text = str(exc).strip().splitlines()
    notes = "".join(f"; {n}" for n in getattr(exc, "__notes__", []))
    line = getattr(exc, "worker_error", None) or \
        f"{type(exc).__name__}: {text[0] if text else ''}"
    return line[:500] + notes


def execute(jobs: Sequence[GridJob], engine: Engine, *, run_dirs: Sequence[Path | None],
            data=None, progress: bool = True, stream=None) -> list[JobOutcome | RunFailure]:
    """Run `jobs` on `engine`; one outcome (or failure) per job, in the jobs' order.

    `run_dirs`: each job's run folder (for the failure report). `data`: passed to in-process jobs."""
    stream = sys.stdout if stream is None else stream
    n = len(jobs)
    out: list[JobOutcome | RunFailure | None] = [None] * n
    counts = {"trained": 0, "reused": 0, "resumed": 0, "failed": 0}
    t0 = time.perf_counter()
    pending: dict[cf.Future, int] = {}
    queue = list(range(n))
    limit = engine.max_in_flight or n

    def submit(i: int) -> None:
        args = (jobs[i], data) if engine.in_process else (jobs[i],)
        try:
            pending[engine.executor.submit(run_job, *args)] = i
        except Exception as exc:  # the engine refused the job (e.g. a closed cluster)
            finish(i, exc)

    def finish(i: int, result) -> None:
        if isinstance(result, BaseException):
            log = (Path(run_dirs[i]) / WORKER_LOG) if (run_dirs[i] and engine.log) else None
            out[i] = RunFailure(jobs[i].label, None if run_dirs[i] is None else str(run_dirs[i]),
                                _first_line(result),
                                str(log) if log is not None and log.exists() else None)
            counts["failed"] += 1
        else:
            out[i] = result
            counts["resumed" if result.status.startswith("resumed") else result.status] += 1
        if progress:
            done = sum(o is not None for o in out)
            what = "FAILED" if isinstance(out[i], RunFailure) else out[i].status
            print(f"[grid] {done}/{n} runs finished ({counts['trained']} trained, "
                  f"{counts['resumed']} resumed, {counts['reused']} reused, {counts['failed']} "
                  f"failed) {time.perf_counter() - t0:.0f} s; {jobs[i].label}: {what}",
                  file=stream, flush=True)

    retried: set[int] = set()
    try:
        while queue or pending:
            while queue and len(pending) < limit:
                submit(queue.pop(0))
            if not pending:
                continue
            done, _ = cf.wait(list(pending), return_when=cf.FIRST_COMPLETED)
            broken = []
            for future in done:
                i = pending.pop(future)
                try:
                    exc = future.exception()
                except cf.CancelledError as cancelled:   # e.g. a Dask scheduler that went away
                    exc = cancelled
                if (isinstance(exc, BrokenExecutor) and engine.rebuild is not None
                        and i not in retried):
                    broken.append(i)     # a worker died: every run of that pool failed with it
                    continue
                finish(i, exc if exc is not None else future.result())
            if broken:
                # start a new pool and give each of those runs one more try (it resumes from its
                # last checkpoint); a run whose worker dies again is reported failed
                print(f"[grid] a worker process died; restarting the pool and retrying "
                      f"{len(broken) + len(pending)} run(s) once", file=stream, flush=True)
                broken += list(pending.values())
                pending.clear()
                engine.rebuild()
                retried.update(broken)
                queue[:0] = sorted(broken)
    except KeyboardInterrupt:
        for future in pending:
            future.cancel()
        if engine.abort is not None:
            engine.abort()
        left = sum(o is None for o in out)
        print(f"[grid] interrupted with {left} run(s) not finished; rerun the same command to "
              "resume them (finished runs are reused)", file=sys.stderr, flush=True)
        raise
    return out  # type: ignore[return-value]
