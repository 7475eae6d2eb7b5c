"""Notebooks 02, 03 and 05 read notebook 01's finished runs; they never train a missing one silently.

Driven through the package functions the notebooks call (not papermill), on the tiny profile in tmp
folders: with no runs, each reader stops with `MissingRunsError` listing the missing runs (rule,
seed, frozen) and the command that makes them, and nothing is trained; `train_missing=True` trains
them (today's behaviour); after notebook-01-style training the readers return the runs without
entering the training loop; an unfinished or unreadable checkpoint counts as missing, a run the
monitor stopped counts as finished.
"""
import importlib
import json
from pathlib import Path

import pytest
import torch

from fa_nb_utils.paper import early_stop as es
from fa_nb_utils.paper import pitfalls as pf
from fa_nb_utils.checkpoint import CHECKPOINT_NAME, load_checkpoint
from fa_nb_utils.paper.experiments import MissingRunsError, run_grid, runs_root, train_command
from fa_nb_utils.monitor import Monitor
from fa_nb_utils.paper.profiles import get_profile
from fa_nb_utils.report import DiagnosticThresholds
from fa_nb_utils.paper.runner import notebook_parameters
from fa_nb_utils.config import load_data
from fa_nb_utils.runs import Run
from fa_nb_utils.trainer import train

TINY = get_profile("tiny")
train_module = importlib.import_module("fa_nb_utils.trainer")   # the module (the package re-exports
                                                               # the function under this name)
ROOT = Path(__file__).resolve().parents[1]
RULES_HERE = ["bp", "dfa"]     # enough to show the behaviour; notebook 01 trains every rule


@pytest.fixture(scope="module")
def tiny_data(data_root):
    return load_data(TINY.config("bp", TINY.seeds[0], data_root=str(data_root)),
                     torch.device("cpu"))


class TrainingEntered(AssertionError):
    pass


@pytest.fixture
def no_training(monkeypatch):
    """Any optimizer step fails the test: the code under test may only read finished runs."""
    def boom(*a, **k):
        raise TrainingEntered("a reader entered the training loop")
    monkeypatch.setattr(train_module, "train_step", boom)


def _triples(missing):
    return sorted((m.rule, m.seed, m.frozen) for m in missing)


def test_readers_stop_on_an_empty_results_folder_naming_the_runs_and_the_command(
        tiny_data, tmp_path, no_training):
    results = tmp_path / "results"
    # notebook 02: every rule x seed and each frozen baseline
    with pytest.raises(MissingRunsError) as exc:
        run_grid(TINY, results, rules=RULES_HERE, data=tiny_data, train_missing=False)
    err = exc.value
    assert _triples(err.missing) == sorted((r, s, f) for r in RULES_HERE for s in TINY.seeds
                                           for f in (False, True))
    msg = str(err)
    assert f"python -m fa_nb_utils.reproduce --profile tiny --only 01 --results-dir {results}" \
        in msg
    assert "01_train.ipynb" in msg and "train_missing=True" in msg
    assert "dfa seed 42 (frozen blocks)" in msg and "bp seed 123" in msg
    assert err.command == train_command(TINY, results)
    assert "--profile tiny --only 01" in err.command
    # each missing run names the folder it was looked for in, which is where train() writes it
    for m in err.missing:
        assert m.run_dir.parent == runs_root(results) and "no checkpoint" in m.reason
    # notebook 03: the trained runs only
    with pytest.raises(MissingRunsError) as exc:
        es.main_runs(TINY, results, rules=RULES_HERE, data=tiny_data)
    assert _triples(exc.value.missing) == sorted((r, s, False) for r in RULES_HERE
                                                 for s in TINY.seeds)
    # notebook 05: the DFA run of the first seed
    with pytest.raises(MissingRunsError) as exc:
        pf.pitfall_model(TINY, results, data=tiny_data)
    assert _triples(exc.value.missing) == [("dfa", TINY.seeds[0], False)]
    assert "--only 01" in str(exc.value)
    # nothing was trained or written
    assert not list(results.rglob(CHECKPOINT_NAME))


def test_train_missing_true_trains_the_missing_run(tiny_data, tmp_path):
    results = tmp_path / "results"
    model, rule, batches, run = pf.pitfall_model(TINY, results, data=tiny_data,
                                                 train_missing=True)
    assert run.result.trace[-1]["epoch"] == TINY.epochs
    state = load_checkpoint(run.result.run_dir / CHECKPOINT_NAME)
    assert state["epoch"] == TINY.epochs and rule.name == "dfa"


def test_after_notebook_01_the_readers_read_without_training(tiny_data, tmp_path, monkeypatch):
    results = tmp_path / "results"
    # notebook 01's call (every rule there; two here, to keep the test short), frozen baselines too
    trained = run_grid(TINY, results, rules=RULES_HERE, data=tiny_data)
    assert len(trained) == len(RULES_HERE) * len(TINY.seeds) * 2
    for r in trained:      # the folder the readers look in is the one the trainer wrote
        assert Run(runs_root(results), r.config, tiny_data).dir == r.result.run_dir
    stamps = {p: p.stat().st_mtime_ns for p in results.rglob(CHECKPOINT_NAME)}

    def boom(*a, **k):
        raise TrainingEntered("a reader entered the training loop")
    monkeypatch.setattr(train_module, "train_step", boom)
    read = run_grid(TINY, results, rules=RULES_HERE, data=tiny_data,
                    train_missing=False)                                         # notebook 02
    assert [(r.rule, r.seed, r.frozen) for r in read] == \
        [(r.rule, r.seed, r.frozen) for r in trained]
    for a, b in zip(read, trained):
        assert a.result.trace == b.result.trace
        assert torch.equal(a.result.model.out_head.weight, b.result.model.out_head.weight)
    runs = es.main_runs(TINY, results, rules=RULES_HERE, data=tiny_data)         # notebook 03
    assert {(r.rule, r.seed) for r in runs} == {(r, s) for r in RULES_HERE for s in TINY.seeds}
    assert not any(r.frozen for r in runs)
    model, rule, batches, run = pf.pitfall_model(TINY, results, data=tiny_data)   # notebook 05
    assert (run.rule, run.seed, run.frozen) == ("dfa", TINY.seeds[0], False)
    assert torch.equal(rule.feedback, next(r for r in trained if (r.rule, r.seed, r.frozen)
                                           == ("dfa", TINY.seeds[0], False)).result.rule.feedback)
    assert {p: p.stat().st_mtime_ns for p in results.rglob(CHECKPOINT_NAME)} == stamps


def test_unfinished_or_unreadable_runs_are_missing_and_a_stopped_run_is_finished(checkpoint_each_epoch, 
        tiny_data, tmp_path, monkeypatch):
    results = tmp_path / "results"
    steps = tiny_data.steps_per_epoch(TINY.config("dfa", 42).batch_size)
    calls = {"n": 0}
    real_step = train_module.train_step

    def interrupt_after_one_epoch(*a, **k):
        calls["n"] += 1
        if calls["n"] > steps:
            raise KeyboardInterrupt("killed mid-run")
        return real_step(*a, **k)
    monkeypatch.setattr(train_module, "train_step", interrupt_after_one_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_grid(TINY, results, rules=["dfa"], seeds=[42], frozen=False, data=tiny_data)
    monkeypatch.setattr(train_module, "train_step", real_step)
    with pytest.raises(MissingRunsError) as exc:
        pf.pitfall_model(TINY, results, data=tiny_data)
    (m,) = exc.value.missing
    assert (m.rule, m.seed, m.frozen) == ("dfa", 42, False)
    assert f"unfinished: checkpoint at epoch 1 of {TINY.epochs}" in m.reason
    # a checkpoint that cannot be read is missing too (and named as unreadable)
    (m.run_dir / CHECKPOINT_NAME).write_bytes(b"not a checkpoint")
    with pytest.raises(MissingRunsError, match="unreadable checkpoint"):
        pf.pitfall_model(TINY, results, data=tiny_data)
    # a run the monitor stopped early is finished work: read, not resumed
    config = TINY.config("bp", 42, device="cpu")
    stopped = train(config, data=tiny_data, runs_root=runs_root(results),
                    monitor=Monitor(thresholds=DiagnosticThresholds(g_norm_floor=1.0)))
    assert stopped.stop_reason is not None and stopped.trace[-1]["epoch"] < TINY.epochs

    def boom(*a, **k):
        raise TrainingEntered("a reader continued a stopped run")
    monkeypatch.setattr(train_module, "train_step", boom)
    (run,) = run_grid(TINY, results, rules=["bp"], seeds=[42], frozen=False, data=tiny_data,
                      train_missing=False)
    assert run.result.trace[-1]["epoch"] == stopped.trace[-1]["epoch"]
    assert run.result.stop_reason is not None


@pytest.mark.parametrize("name,reads", [("01_train", False), ("02_audit_table", True),
                                        ("03_early_stop", True), ("04_penalty_audit", False),
                                        ("05_pitfalls", True)])
def test_reading_notebooks_take_train_missing_false_and_pass_it_on(name, reads):
    book = ROOT / "notebooks" / f"{name}.ipynb"
    params = notebook_parameters(book)
    code = "".join("".join(c["source"]) for c in json.loads(book.read_text())["cells"]
                   if c["cell_type"] == "code")
    if reads:
        assert params["train_missing"] is False
        assert "train_missing=train_missing" in code
    else:
        assert "train_missing" not in params
