"""The training grid behind the notebooks: every registered rule x seed, plus frozen baselines.

    runs = run_grid(get_profile("smoke"), results_dir="results")
    runs[0].rule, runs[0].seed, runs[0].frozen, runs[0].result.trace

Each run goes through `train(..., runs_root=<results>/runs)`, so a rerun returns finished runs at
once (keyed on config, data and package version) and resumes interrupted ones; a notebook that
needs a run another notebook trained simply asks for it again. Rules registered later appear here
without edits. Not here: the trainer (train.py), tables and figures (audit.py, figures.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from .data import DeviceData
from .profiles import Profile
from .rules import RULES
from .train import TrainConfig, TrainResult, load_data, resolve_device, train


@dataclass
class RunRecord:
    rule: str
    seed: int
    frozen: bool
    config: TrainConfig
    result: TrainResult
    penalty_lambda: float = 0.0


def runs_root(results_dir: str | Path) -> Path:
    return Path(results_dir) / "runs"


def profile_data(profile: Profile, device: str = "auto") -> DeviceData:
    """The profile's dataset, loaded once, on the training device."""
    config = profile.config("bp", profile.seeds[0], device=device)
    return load_data(config, resolve_device(config.device))


def rules_in_order(rules: Iterable[str] | None = None) -> list[str]:
    """The rules to run: BP first (the control), then every other registered rule by name."""
    names = list(RULES) if rules is None else list(rules)
    unknown = [r for r in names if r not in RULES]
    if unknown:
        raise ValueError(f"unknown rule(s) {unknown}; registered: {', '.join(sorted(RULES))}")
    return sorted(names, key=lambda r: (r != "bp", r))


def run_grid(profile: Profile, results_dir: str | Path, *, rules: Sequence[str] | None = None,
             seeds: Sequence[int] | None = None, frozen: bool = True,
             data: DeviceData | None = None, **overrides) -> list[RunRecord]:
    """Train (or reuse) every rule x seed of the main audit, and each rule's frozen baseline."""
    data = profile_data(profile) if data is None else data
    out = []
    for rule in rules_in_order(rules):
        for freeze in ((False, True) if frozen else (False,)):
            for seed in (profile.seeds if seeds is None else seeds):
                config = profile.config(rule, seed, freeze_blocks=freeze,
                                        device=str(data.device), **overrides)
                result = train(config, data=data, runs_root=runs_root(results_dir))
                out.append(RunRecord(rule, seed, freeze, config, result))
    return out


def run_penalty_grid(profile: Profile, results_dir: str | Path, *, rules: Sequence[str],
                     lambdas: Sequence[float], seeds: Sequence[int] | None = None,
                     frozen: bool = False, data: DeviceData | None = None) -> list[RunRecord]:
    """Penalty runs (profile.penalty_epochs): every rule x lambda x seed (and frozen baselines)."""
    data = profile_data(profile) if data is None else data
    out = []
    for rule in rules_in_order(rules):
        for lam in lambdas:
            for freeze in ((False, True) if frozen else (False,)):
                for seed in (profile.seeds if seeds is None else seeds):
                    config = profile.penalty_config(rule, seed, lam, freeze_blocks=freeze,
                                                    device=str(data.device))
                    result = train(config, data=data, runs_root=runs_root(results_dir))
                    out.append(RunRecord(rule, seed, freeze, config, result, penalty_lambda=lam))
    return out
