"""Shared fixtures, each computed once per test session.

- `synthetic_folder` / `synthetic_data`: small synthetic CIFAR-format data (2,000 train, 1,280
  test images) for fast tests.
- `standard_data`: the smoke profile's synthetic data (10,000 train, 2,000 test) for slow tests
  that train at the paper's width (d = 256, L = 4, seed 42), and the two runs several of them
  assert on: `brief_bp_run` (BP, 5 epochs, the recipe) and `long_dfa_run` (DFA at lr 2e-3, the
  first 64 epochs of the paper's per-step schedule). Both are trained through the run store under
  `<data_root>/runs`, so training the same config again reuses the finished run.
- `smoke_results`: the smoke reproduction (`make reproduce PROFILE=smoke`: all seven notebooks),
  run once per session. A test that asserts on what the smoke reproduction makes
  (figures, tables, the paper's TeX, a finished run) requests it instead of training again:

      def test_x(smoke_results):     # marked slow (and given an hour's timeout) by the hook below
          rows = json.loads((smoke_results.tables / "02_audit_table.json").read_text())["rows"]

  Its `results` folder is the one the first run left: tests read it and never write into it (a
  test that reruns a notebook does so in a copy: `smoke_results.copy(tmp_path)`). Its `runs`
  folder holds every finished run of the profile, read through the run store
  (fa_nb_utils/runs.py) or by calling the notebook's own training function with the profile's
  config, which reuses the finished run.
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from fa_nb_utils.data import cifar, synthetic
from fa_nb_utils.data import DeviceData

torch.set_num_threads(2)

SMOKE_PROFILE = "smoke"


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def synthetic_folder(data_root):
    """The standard preset, small: 2,000 train and 1,280 test images (the protocol's 10 x 128)."""
    return synthetic.ensure_synthetic(data_root, "standard", n_train=2000, n_test=1280)


@pytest.fixture(scope="session")
def synthetic_data(synthetic_folder):
    return DeviceData.from_cifar(cifar.read_cifar10_folder(synthetic_folder), name="synthetic")


@pytest.fixture(scope="session")
def tiny_grid(tmp_path_factory):
    """The tiny profile's BP and DFA grid (both seeds, with frozen baselines), trained once on one
    torch thread, and its audit table: {"profile", "data", "records", "table", "results"}, the
    runs under results/runs."""
    from fa_nb_utils.paper import audit
    from fa_nb_utils.paper.experiments import profile_data, run_grid
    from fa_nb_utils.paper.profiles import get_profile

    threads = torch.get_num_threads()
    results = tmp_path_factory.mktemp("tiny_grid")
    profile = get_profile("tiny")
    data = profile_data(profile, device="cpu")
    try:
        records = run_grid(profile, results, rules=("bp", "dfa"), data=data, threads=1,
                           progress=False)
        table = audit.audit_runs(records, data, profile=profile)
    finally:
        torch.set_num_threads(threads)
    return {"profile": profile, "data": data, "records": records, "table": table,
            "results": results}


@pytest.fixture
def checkpoint_each_epoch(monkeypatch):
    """Runs trained in this test checkpoint at every epoch (by default, about once a minute),
    for tests that interrupt a run and resume it from its last epoch."""
    from fa_nb_utils import trainer
    monkeypatch.setattr(trainer, "CHECKPOINT_SECONDS", 0.0)


@pytest.fixture(scope="session")
def standard_data(data_root):
    """The smoke profile's data: the standard preset, 10,000 train and 2,000 test images."""
    folder = synthetic.ensure_synthetic(data_root, "standard", n_train=10_000, n_test=2_000)
    return DeviceData.from_cifar(cifar.read_cifar10_folder(folder), name="synthetic")


def train_standard(data_root, data, **kw):
    """A run on `standard_data` (seed 42, the recipe unless `kw` says otherwise), trained or reused
    through the run store under `<data_root>/runs`."""
    from fa_nb_utils.config import TrainConfig
    from fa_nb_utils.trainer import train
    cfg = TrainConfig(**{"seed": 42, "data": "synthetic", "progress": False, "device": "cpu", **kw})
    return train(cfg, data=data, runs_root=Path(data_root) / "runs")


# DFA's stream explodes, (a), and then ||g_L|| sinks under (b)'s floor with a 3x margin: lr 2e-3 on
# the paper's per-step schedule (cosine over 500 epochs of 79 steps = 100 CIFAR-10 epochs), its
# first 64 epochs (docs/measurements.md, "The protocol on synthetic data: DFA at lr 2e-3").
LONG_DFA = dict(rule="dfa", lr=2e-3, epochs=64, cosine_epochs=500)


@pytest.fixture(scope="session")
def standard_run(data_root, standard_data):
    """`standard_run(**config)`: `train_standard` on the session's `standard_data`."""
    return lambda **kw: train_standard(data_root, standard_data, **kw)


@pytest.fixture(scope="session")
def brief_bp_run(standard_run):
    return standard_run(rule="bp", epochs=5)


@pytest.fixture(scope="session")
def long_dfa_run(standard_run):
    return standard_run(**LONG_DFA)


@dataclass(frozen=True)
class SmokeResults:
    """A finished reproduction: its results folder, the manifest it returned, and its duration."""

    results: Path
    manifest: dict
    seconds: float
    profile: str = SMOKE_PROFILE

    @property
    def figures(self) -> Path:
        return self.results / "figures"

    @property
    def tables(self) -> Path:
        return self.results / "tables"

    @property
    def runs(self) -> Path:
        return self.results / "runs"

    def copy(self, folder: Path) -> Path:
        """A copy of the results under `folder` for a test that writes: the files copied, the
        runs' files hard-linked (every write of the package replaces a file, never edits one, so
        the shared runs stay as they are)."""
        target = Path(folder) / "results"
        shutil.copytree(self.results, target, ignore=shutil.ignore_patterns("runs"))
        shutil.copytree(self.runs, target / "runs", copy_function=os.link)
        return target


def run_reproduction(profile: str, results: Path) -> SmokeResults:
    from fa_nb_utils.paper import runner
    t0 = time.perf_counter()
    manifest = runner.reproduce(profile, results_dir=results, log=lambda *a: None)
    return SmokeResults(results, manifest, time.perf_counter() - t0, profile)


@pytest.fixture(scope="session")
def smoke_results(tmp_path_factory) -> SmokeResults:
    """The smoke reproduction, run once per session (see the module docstring)."""
    return run_reproduction(SMOKE_PROFILE, tmp_path_factory.mktemp("smoke") / "results")


@pytest.hookimpl(tryfirst=True)   # before `-m "not slow"` deselects
def pytest_collection_modifyitems(items):
    """A test that requests `smoke_results` is slow, and may wait for the reproduction (~1,000 s
    on a quiet 2-core machine; twice that seen under load): mark it so."""
    for item in items:
        if "smoke_results" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(3600))
