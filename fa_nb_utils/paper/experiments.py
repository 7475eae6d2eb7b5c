"""The training grid behind the notebooks: every registered rule x seed, plus frozen baselines.

    runs = run_grid(get_profile("smoke"), results_dir="results")
    runs[0].rule, runs[0].seed, runs[0].frozen, runs[0].result.trace

Each run goes through `train(..., runs_root=<results>/runs)`, so a rerun returns finished runs at
once (keyed on config, data and package version) and resumes interrupted ones. The runs that are
not finished train on an executor (`executor=`, `workers=`, `threads=`; executors.py): in-process
by default, or a process pool, Dask or submitit, with the same results. Notebook 01 trains
the grid (`train_missing=True`, the default); the notebooks that only read it (02, 03, 05) pass
`train_missing=False`, and a run that is missing, unfinished or failed (diverged) then raises
`MissingRunsError` naming every such run and the command that trains them, instead of hours of
silent training.
Rules registered later appear here without edits; a rule of your own is named by its name or its
import path (module:Class), and every worker imports it by that path.
Not here: the trainer (trainer.py), tables and figures (audit.py, figures.py).
"""
from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from .. import checkpoint
from ..data import DeviceData
from .executors import (Engine, GridJob, GridRunError, RunFailure, check_settings, execute,
                        make_executor)
from .profiles import Profile
from ..rules import RULES, path_for_workers, resolve_rule
from ..trainer import (run_key_of, CHECKPOINT_NAME, TrainConfig, TrainResult, failed_run,
                       load_data, resolve_device, run_name, train)


@dataclass
class RunRecord:
    rule: str
    seed: int
    frozen: bool
    config: TrainConfig
    result: TrainResult
    penalty_lambda: float = 0.0
    status: str | None = None    # what this call did: "trained", "reused", "resumed at epoch k"


def runs_root(results_dir: str | Path) -> Path:
    return Path(results_dir) / "runs"


def profile_data(profile: Profile, device: str = "auto", **overrides) -> DeviceData:
    """The profile's dataset (with the grid's config overrides, e.g. data_root), loaded once, on
    the training device."""
    config = profile.config("bp", profile.seeds[0], **{"device": device, **overrides})
    return load_data(config, resolve_device(config.device))


def rules_in_order(rules: Iterable[str] | None = None) -> list[str]:
    """The rules to run, by name: BP first (the control), then the others by name. `rules`:
    names or import paths (module:Class, imported); default: every registered rule."""
    names = list(RULES) if rules is None else [resolve_rule(r).name for r in rules]
    return sorted(dict.fromkeys(names), key=lambda r: (r != "bp", r))


@dataclass(frozen=True)
class MissingRun:
    """A run a reading notebook needs that has no finished checkpoint where the trainer keeps it."""

    rule: str
    seed: int
    frozen: bool
    run_dir: Path
    reason: str

    def __str__(self) -> str:
        frozen = " (frozen blocks)" if self.frozen else ""
        return f"{self.rule} seed {self.seed}{frozen}: {self.reason}"


class MissingRunsError(RuntimeError):
    """Runs a notebook reads are not (all) trained; `.missing` lists them, `.command` makes them."""

    def __init__(self, missing: Sequence[MissingRun], command: str, profile_name: str,
                 results_dir: str | Path, total: int, notebook: str = "01_train"):
        self.missing = list(missing)
        self.command = command
        lines = "\n".join(f"  {m}" for m in self.missing)
        super().__init__(
            f"{len(self.missing)} of the {total} run(s) this notebook reads are missing or "
            f"unfinished under {runs_root(results_dir)}:\n{lines}\n"
            f"Notebook {notebook[:2]} trains them: run\n  {command}\n"
            f"(or execute notebooks/{notebook}.ipynb with profile={profile_name!r}, "
            f"results_dir={str(results_dir)!r}), then rerun this notebook. To train them here "
            "instead, set the notebook parameter train_missing=True (with reproduce: "
            "-p train_missing=True); on the paper profile that takes hours.")


def train_command(profile: Profile, results_dir: str | Path, notebook: str = "01") -> str:
    """The command that trains a notebook's grid (by default notebook 01's main grid) into
    `results_dir`."""
    return (f"python -m fa_nb_utils.reproduce --profile {profile.name} --only {notebook} "
            f"--results-dir {shlex.quote(str(results_dir))}")


def check_finished(plan: Sequence[tuple], data: DeviceData, results_dir: str | Path,
                   profile: Profile, notebook: str = "01_train") -> None:
    """Raise `MissingRunsError` listing every run of `plan` ((rule, seed, frozen, config, ...)
    per run) that has no finished checkpoint under `results_dir`, and the command (the notebook
    that trains them) that makes them. Nothing is trained."""
    missing = []
    for rule, seed, frozen, config, *_ in plan:
        run_dir = run_dir_of(config, data, results_dir)
        done, why = finished_state(config, run_dir)
        if not done:
            missing.append(MissingRun(rule, seed, frozen, run_dir, why))
    if missing:
        raise MissingRunsError(missing, train_command(profile, results_dir, notebook[:2]),
                               profile.name, results_dir, len(plan), notebook)


def run_dir_of(config: TrainConfig, data: DeviceData, results_dir: str | Path) -> Path:
    """The folder `train(config, data=data, runs_root=runs_root(results_dir))` keeps the run in.

    The key comes from the trainer's own `run_key_of` (config with resolved rule options, data
    fingerprint, package version), so the two cannot drift apart."""
    from .. import __version__
    key = run_key_of(config.to_dict(), data.fingerprint, __version__)
    return runs_root(results_dir) / run_name(config, key)


def finished_state(config: TrainConfig, run_dir: Path) -> tuple[bool, str]:
    """(finished, why not) of the run in `run_dir`, read from its checkpoint without training.

    Finished: the checkpoint reached `config.epochs`, or a monitor stopped it (a stop reason).
    A run that diverged (trainer.failed_run) is not: it is listed as failed."""
    path = run_dir / CHECKPOINT_NAME
    failed = failed_run(run_dir, None)
    if failed is not None:
        return False, f"failed: {failed}"
    if not path.exists():
        return False, f"no checkpoint in {run_dir}"
    try:
        state = checkpoint.load_checkpoint(path)
    except Exception as exc:  # any failure to read is "not finished": the trainer cannot reuse it
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return False, f"unreadable checkpoint {path} ({first[:200]})"
    if not isinstance(state, dict):
        return False, f"unreadable checkpoint {path} (not a dict)"
    failed = failed_run(run_dir, state)
    if failed is not None:
        return False, f"failed: {failed}"
    if state.get("stop_reason") is not None or state.get("epoch") == config.epochs:
        return True, ""
    return False, (f"unfinished: checkpoint at epoch {state.get('epoch')!r} of {config.epochs} "
                   f"in {run_dir}")


def _reusable(config: TrainConfig, run_dir: Path, accept_stopped: bool) -> bool:
    """The run in `run_dir` is finished work `train` would return without training."""
    path = run_dir / CHECKPOINT_NAME
    if not path.exists():
        return False
    try:
        state = checkpoint.load_checkpoint(path)
    except Exception:  # damaged: the trainer moves it aside and retrains (in a worker)
        return False
    if not isinstance(state, dict) or failed_run(run_dir, state) is not None:
        return False
    if state.get("stop_reason") is not None:
        return accept_stopped
    return state.get("epoch") == config.epochs


def run_plan(plan: list[tuple[str, int, bool, TrainConfig, float]], data: DeviceData,
              results_dir: str | Path, *, accept_stopped: bool, executor: Any,
              workers: int | None, threads: int | None, progress: bool) -> list[RunRecord]:
    """Train what `plan` lacks on the executor (executors.py), then load every run's result.

    `plan`: (rule, seed, frozen, config, penalty lambda) per run, in the order of the records.

    Finished runs are not submitted. Failed runs do not stop the others; when all are done,
    `GridRunError` lists the failures (the finished runs are saved, a rerun retries the rest)."""
    root = runs_root(results_dir)
    engine = (executor if isinstance(executor, Engine) else
              make_executor(executor, workers=workers, threads=threads,
                            log_folder=Path(results_dir) / "submitit", device=data.device))
    try:
        dirs = [run_dir_of(config, data, results_dir) for *_, config, _ in plan]
        todo = [i for i, (*_, config, _) in enumerate(plan)
                if not _reusable(config, dirs[i], accept_stopped)]
        # costliest first (stable): a pool then never ends on one long run while the rest idle
        todo.sort(key=lambda i: -_cost_hint(plan[i][3]))
        jobs = [GridJob(plan[i][3], str(root), data.fingerprint, _label(*plan[i][:3], plan[i][4]),
                        dirs[i].name, accept_stopped=accept_stopped, threads=engine.threads,
                        log=engine.log,
                        rule_path=path_for_workers(plan[i][3].rule, engine.in_process))
                for i in todo]
        if progress and todo:
            print(f"[grid] {len(plan) - len(todo)} of {len(plan)} runs already finished; "
                  f"training {len(todo)} on {engine.describe()}", flush=True)
        elif progress:
            print(f"[grid] all {len(plan)} runs already finished: reusing them, nothing to "
                  "train", flush=True)
        outcomes = execute(jobs, engine, run_dirs=[dirs[i] for i in todo], data=data,
                           progress=progress)
    finally:
        if not isinstance(executor, Engine):
            engine.close()
    failures = [o for o in outcomes if isinstance(o, RunFailure)]
    if failures:
        raise GridRunError(failures, len(plan))
    status = {i: o.status for i, o in zip(todo, outcomes)}
    unfinished = [str(dirs[i]) for i in todo if not _reusable(plan[i][3], dirs[i], accept_stopped)]
    if unfinished:  # never train here, unlocked, what a worker should have finished
        raise RuntimeError("the executor reported these runs finished, but their folders hold no "
                           "finished checkpoint: " + ", ".join(unfinished) + ". Do the workers "
                           "see the same results folder (a shared file system) as this process?")
    records = []
    for i, (rule, seed, freeze, config, lam) in enumerate(plan):
        # finished by now: this loads it (quietly; `progress` is not part of the run's key)
        result = train(dataclasses.replace(config, progress=False), data=data, runs_root=root,
                       accept_stopped=accept_stopped)
        records.append(RunRecord(rule, seed, freeze, config, result, penalty_lambda=lam,
                                 status=status.get(i, "reused")))
    return records


def _cost_hint(config: TrainConfig) -> float:
    """A run's expected cost, in DFA-steps x steps, for the submission order only."""
    cls = RULES[config.rule]
    return cls.cost_hint(cls.parse_options(config.rule_options)) * config.epochs


def _label(rule: str, seed: int, frozen: bool, lam: float) -> str:
    return (f"{rule} seed {seed}" + (" (frozen blocks)" if frozen else "")
            + (f" lambda {lam:g}" if lam else ""))


def run_grid(profile: Profile, results_dir: str | Path, *, rules: Sequence[str] | None = None,
             seeds: Sequence[int] | None = None, frozen: bool = True,
             data: DeviceData | None = None, train_missing: bool = True,
             executor: Any = None, workers: int | None = None, threads: int | None = None,
             progress: bool = True, **overrides) -> list[RunRecord]:
    """Train (or reuse) every rule x seed of the main audit, and each rule's frozen baseline.

    `executor`, `workers`, `threads`: where the runs train (`executors.make_executor`: in-process
    by default, "auto" for the measured best on this machine, "process" for a local pool, "dask" or a scheduler address, "submitit", or an
    executor object); the runs are the same whatever the engine (bit-identical at the same
    thread count). `train_missing=False` (the reading notebooks): only finished runs are
    returned; if any run is missing, unfinished or unreadable, nothing is trained and
    `MissingRunsError` lists them all. `rules`: names or import paths (module:Class) of the
    rules to train; default: every registered rule.
    """
    if not isinstance(train_missing, bool):
        raise TypeError(f"train_missing must be True or False, got {train_missing!r}")
    check_settings(executor, workers, threads)   # before the data load (a CIFAR-10 download)
    names = rules_in_order(rules)
    data = profile_data(profile, **overrides) if data is None else data
    plan = []
    for rule in names:
        for freeze in ((False, True) if frozen else (False,)):
            for seed in (profile.seeds if seeds is None else seeds):
                config = profile.config(rule, seed, freeze_blocks=freeze,
                                        device=str(data.device), **overrides)
                plan.append((rule, seed, freeze, config, 0.0))
    if not train_missing:
        check_finished(plan, data, results_dir, profile)
    # reading: a run a monitor stopped is finished work, returned as it is (never continued)
    return run_plan(plan, data, results_dir, accept_stopped=not train_missing,
                     executor=executor, workers=workers, threads=threads, progress=progress)
