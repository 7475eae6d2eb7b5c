"""The training grid behind the notebooks: every registered rule x seed, plus frozen baselines.

    runs = run_grid(get_profile("smoke"), results_dir="results")
    runs[0].rule, runs[0].seed, runs[0].frozen, runs[0].result.trace

Every run is a `runs.Run` of the store `<results>/runs`: finished runs are read, the others
train on an executor (executors.py) with the same results on every engine. The notebooks that
only read the grid pass `train_missing=False`: a run missing then raises `MissingRunsError`
naming every such run and the command that trains them.
Not here: the run store (runs.py), the trainer (trainer.py), tables and figures (audit.py,
figures.py).
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..config import TrainConfig, load_data, resolve_device
from ..data import DeviceData
from ..loggers import require_tensorboard
from .executors import (Engine, GridJob, GridRunError, RunFailure, check_settings, execute,
                        make_executor)
from .profiles import Profile
from ..rules import RULES, path_for_workers, resolve_rule
from ..runs import Run, TrainResult


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
    """A run a reading notebook needs that has no finished checkpoint in its run folder."""

    rule: str
    seed: int
    frozen: bool
    run_dir: Path
    reason: str
    label: str      # runs.run_label

    def __str__(self) -> str:
        return f"{self.label}: {self.reason}"


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
                   profile: Profile, notebook: str = "01_train") -> list[Run]:
    """The runs of `plan`, each finished (or stopped by a monitor) and read, for `run_plan`. Else
    `MissingRunsError` lists every run missing and the notebook that trains them."""
    runs = [Run(runs_root(results_dir), row[3], data) for row in plan]
    missing = [MissingRun(rule, seed, frozen, run.dir, run.why, run.label)
               for (rule, seed, frozen, *_), run in zip(plan, runs) if not run.reusable()]
    if missing:
        raise MissingRunsError(missing, train_command(profile, results_dir, notebook[:2]),
                               profile.name, results_dir, len(plan), notebook)
    return runs


def run_plan(plan: list[tuple[str, int, bool, TrainConfig, float]], data: DeviceData,
             results_dir: str | Path, *, accept_stopped: bool, executor: Any,
             workers: int | None, threads: int | None, progress: bool,
             runs: Sequence[Run] | None = None,
             tensorboard: str | Path | None = None) -> list[RunRecord]:
    """Train what `plan` lacks on the executor (executors.py), then read every run's result.

    `plan`: (rule, seed, frozen, config, penalty lambda) per run; `runs`: its runs, as
    `check_finished` returned them (default: read here); `tensorboard`: as for `run_grid`.
    Failed runs do not stop the others; when all are done, `GridRunError` lists the failures
    (a rerun retries them)."""
    runs = [Run(runs_root(results_dir), row[3], data) for row in plan] if runs is None \
        else list(runs)
    engine = (executor if isinstance(executor, Engine) else
              make_executor(executor, workers=workers, threads=threads,
                            log_folder=Path(results_dir) / "submitit", device=data.device))
    try:
        todo = [i for i, run in enumerate(runs) if not run.reusable(accept_stopped)]
        # costliest first (stable): a pool then never ends on one long run while the rest idle
        todo.sort(key=lambda i: -_cost_hint(runs[i].config))
        jobs = [GridJob(runs[i].config, str(runs_root(results_dir)), data.fingerprint,
                        runs[i].label, runs[i].dir.name, accept_stopped=accept_stopped,
                        threads=engine.threads, log=engine.log,
                        rule_path=path_for_workers(runs[i].config.rule, engine.in_process),
                        tensorboard=None if tensorboard is None else str(tensorboard))
                for i in todo]
        if progress and todo:
            print(f"[grid] {len(plan) - len(todo)} of {len(plan)} runs already finished; "
                  f"training {len(todo)} on {engine.describe()}", flush=True)
        elif progress:
            print(f"[grid] all {len(plan)} runs already finished: reusing them, nothing to "
                  "train", flush=True)
        outcomes = execute(jobs, engine, run_dirs=[runs[i].dir for i in todo], data=data,
                           progress=progress)
    finally:
        if not isinstance(executor, Engine):
            engine.close()
    failures = [o for o in outcomes if isinstance(o, RunFailure)]
    if failures:
        raise GridRunError(failures, len(plan))
    status = {i: o.status for i, o in zip(todo, outcomes)}
    for i in todo:
        runs[i].forget()   # trained by a worker since it was read
    unfinished = [str(runs[i].dir) for i in todo if not runs[i].reusable(accept_stopped)]
    if unfinished:  # never train here, unlocked, what a worker should have finished
        raise RuntimeError("the executor reported these runs finished, but their folders hold no "
                           "finished checkpoint: " + ", ".join(unfinished) + ". Do the workers "
                           "see the same results folder (a shared file system) as this process?")
    return [RunRecord(rule, seed, freeze, config, run.result(accept_stopped), penalty_lambda=lam,
                      status=status.get(i, "reused"))
            for i, ((rule, seed, freeze, config, lam), run) in enumerate(zip(plan, runs))]


def _cost_hint(config: TrainConfig) -> float:
    """A run's expected cost, in DFA-steps x steps, for the submission order only."""
    return RULES[config.rule].cost_hint(config.options) * config.epochs


def grid_plan(profile: Profile, rules: Sequence[str] | None = None,
              seeds: Sequence[int] | None = None, frozen: bool = True, device: str = "cpu",
              **overrides) -> list[tuple]:
    """(rule, seed, frozen, config, 0.0) for every run of notebook 01's grid."""
    return [(rule, seed, freeze, profile.config(rule, seed, freeze_blocks=freeze, device=device,
                                                **overrides), 0.0)
            for rule in rules_in_order(profile.rules if rules is None else rules)
            for freeze in ((False, True) if frozen else (False,))
            for seed in (profile.seeds if seeds is None else seeds)]


def train_together(plans: Sequence[Sequence[tuple]], data: DeviceData, results_dir: str | Path,
                   *, executor: Any = None, workers: int | None = None,
                   threads: int | None = None, progress: bool = True) -> int:
    """Train the runs of several notebooks' plans in one submission (each run once, the
    costliest first), so that the pool stays busy from the first run to the last; the notebooks
    then find their runs finished. Returns the number of distinct runs."""
    seen, plan = set(), []
    for item in (item for p in plans for item in p):
        key = Run(runs_root(results_dir), item[3], data).dir
        if key not in seen:
            seen.add(key)
            plan.append(item)
    run_plan(plan, data, results_dir, accept_stopped=False, executor=executor, workers=workers,
             threads=threads, progress=progress)
    return len(plan)


def run_grid(profile: Profile, results_dir: str | Path, *, rules: Sequence[str] | None = None,
             seeds: Sequence[int] | None = None, frozen: bool = True,
             data: DeviceData | None = None, train_missing: bool = True,
             executor: Any = None, workers: int | None = None, threads: int | None = None,
             progress: bool = True, tensorboard: str | Path | None = None,
             **overrides) -> list[RunRecord]:
    """Train (or reuse) every rule x seed of the main audit, and each rule's frozen baseline.

    `executor`, `workers`, `threads`: as for `executors.make_executor` (in-process by default).
    `train_missing=False`: nothing is trained, and `MissingRunsError` lists every run missing.
    `rules`: names or import paths (default: every registered rule). `tensorboard=DIR`: each run
    trained logs its epochs to DIR/<run folder name>.
    """
    if tensorboard is not None:
        require_tensorboard()
    if not isinstance(train_missing, bool):
        raise TypeError(f"train_missing must be True or False, got {train_missing!r}")
    check_settings(executor, workers, threads)   # before the data load (a CIFAR-10 download)
    names = rules_in_order(profile.rules if rules is None else rules)
    data = profile_data(profile, **overrides) if data is None else data
    plan = grid_plan(profile, names, seeds, frozen, str(data.device), **overrides)
    runs = None if train_missing else check_finished(plan, data, results_dir, profile)
    # reading: a run a monitor stopped is finished work, returned as it is (never continued)
    return run_plan(plan, data, results_dir, accept_stopped=not train_missing,
                    executor=executor, workers=workers, threads=threads, progress=progress,
                    runs=runs, tensorboard=tensorboard)
