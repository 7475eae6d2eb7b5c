"""The run store (runs.py): one owner of a run on disk.

- Reading a finished grid loads each checkpoint once, whether the grid only reads
  (train_missing=False) or would train what is missing (train_missing=True).
- The store names each state of a run folder made by hand: missing, partial, stopped, failed,
  finished, damaged, with the reason a reader sees.
- A rule's options are parsed once per run (`TrainConfig.options`), and the run key and folder of
  the built-in rules do not depend on how the options reach the key (test_user_rules.py pins the
  keys themselves); a profile's options for a rule apply when the rule is named by its path.
"""
import collections
import dataclasses
import importlib
import json
import pickle
from pathlib import Path

import pytest
import torch

from fa_nb_utils.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from fa_nb_utils.config import TrainConfig, load_data
from fa_nb_utils.paper.experiments import MissingRunsError, run_grid
from fa_nb_utils.paper.profiles import get_profile
from fa_nb_utils.rules import RULES
from fa_nb_utils.runs import (DAMAGED, DIVERGED_NAME, FAILED, FINISHED, MISSING, PARTIAL,
                              STOPPED, Run, run_key_of, run_name)
from fa_nb_utils.trainer import train

TINY = get_profile("tiny")
trainer = importlib.import_module("fa_nb_utils.trainer")   # the module, not the function


@pytest.fixture(scope="module")
def tiny_data(data_root):
    return load_data(TINY.config("bp", 42, data_root=str(data_root)), torch.device("cpu"))


def _no_training(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("a reader entered the training loop")
    monkeypatch.setattr(trainer, "train_step", boom)


def _count_checkpoint_reads(monkeypatch) -> collections.Counter:
    """Checkpoint files opened by torch.load (a verified load opens the file once, then reads
    its payload from memory), by run folder."""
    opened, real = collections.Counter(), torch.load

    def counting(f, *a, **k):
        if isinstance(f, (str, Path)):
            opened[Path(f).parent.name] += 1
        return real(f, *a, **k)
    monkeypatch.setattr(torch, "load", counting)
    return opened


# ---------------------------------------------------------------------------------------------
# Reading a finished grid loads each checkpoint once
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("train_missing", [False, True])
def test_reading_a_finished_grid_of_two_runs_loads_each_checkpoint_once(
        tiny_data, tmp_path, monkeypatch, train_missing):
    kw = dict(rules=["dfa"], seeds=[42], frozen=True, data=tiny_data, executor="inprocess",
              progress=False)
    trained = run_grid(TINY, tmp_path, **kw)
    assert len(trained) == 2
    _no_training(monkeypatch)
    opened = _count_checkpoint_reads(monkeypatch)
    read = run_grid(TINY, tmp_path, train_missing=train_missing, **kw)
    assert opened == {r.result.run_dir.name: 1 for r in trained}
    for a, b in zip(read, trained):
        assert a.status == "reused" and a.result.trace == b.result.trace
        assert a.result.metadata["resumed_from_epoch"] == TINY.epochs
        for p, q in zip(a.result.model.state_dict().values(),
                        b.result.model.state_dict().values()):
            assert torch.equal(p, q)
        assert torch.equal(a.result.rule.feedback, b.result.rule.feedback)
        assert not a.result.model.training


# ---------------------------------------------------------------------------------------------
# The state of a run folder made by hand
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_state(tiny_data, tmp_path_factory):
    """The checkpoint of a finished tiny DFA run (2 epochs), and its config."""
    config = TINY.config("dfa", 42, device="cpu")
    result = train(config, data=tiny_data, runs_root=tmp_path_factory.mktemp("runs"))
    state = load_checkpoint(result.run_dir / CHECKPOINT_NAME)
    return config, {k: v for k, v in state.items() if k not in ("format", "schema_version")}


def _made(tmp_path, config, data, state=None, raw=None, diverged=None):
    run = Run(tmp_path, config, data)
    run.dir.mkdir(parents=True)
    if state is not None:
        save_checkpoint(run.checkpoint, state)
    if raw is not None:
        run.checkpoint.write_bytes(raw)
    if diverged is not None:
        (run.dir / DIVERGED_NAME).write_text(json.dumps(diverged))
    return Run(tmp_path, config, data)     # a fresh look, as a reader's


def test_the_store_names_each_state_of_a_hand_made_run_folder(finished_state, tiny_data,
                                                              tmp_path, monkeypatch):
    config, state = finished_state
    _no_training(monkeypatch)
    stop = {"diagnostic": "a", "name": "(a) residual stream explosion", "value": 60.0,
            "threshold": 50.0, "epoch": 1, "message": "(a) fired at epoch 1"}
    partial = {**state, "epoch": 1, "trace": state["trace"][:2]}
    nan_trace = [dict(e) for e in state["trace"]]
    nan_trace[-1]["train_loss"] = float("nan")
    other = TINY.config("dfa", 43, device="cpu")
    runs = {
        MISSING: _made(tmp_path / "missing", config, tiny_data),
        PARTIAL: _made(tmp_path / "partial", config, tiny_data, state=partial),
        STOPPED: _made(tmp_path / "stopped", config, tiny_data,
                       state={**partial, "stop_reason": stop}),
        FAILED: _made(tmp_path / "failed", config, tiny_data, state=partial,
                      diverged={"reason": "diverged at epoch 2 (train loss nan)", "epoch": 2}),
        "failed (old)": _made(tmp_path / "old", config, tiny_data,
                              state={**state, "trace": nan_trace}),
        FINISHED: _made(tmp_path / "finished", config, tiny_data, state=state),
        DAMAGED: _made(tmp_path / "damaged", config, tiny_data, raw=b"not a checkpoint"),
        "damaged (other run)": _made(tmp_path / "other", other, tiny_data, state=state),
    }
    assert {k: r.state for k, r in runs.items()} == {
        MISSING: MISSING, PARTIAL: PARTIAL, STOPPED: STOPPED, FAILED: FAILED,
        "failed (old)": FAILED, FINISHED: FINISHED, DAMAGED: DAMAGED,
        "damaged (other run)": DAMAGED}
    why = {k: r.why for k, r in runs.items()}
    assert why[MISSING] == f"no checkpoint in {runs[MISSING].dir}"
    assert why[PARTIAL].startswith(f"unfinished: checkpoint at epoch 1 of {config.epochs}")
    assert why[STOPPED] == why[FINISHED] == ""
    assert why[FAILED] == "failed: diverged at epoch 2 (train loss nan)"
    assert why["failed (old)"].startswith("failed: diverged at epoch 2 (train loss nan; rule "
                                          "'dfa'")
    assert why[DAMAGED].startswith(f"unreadable checkpoint {runs[DAMAGED].checkpoint}")
    assert why["damaged (other run)"].startswith("unusable checkpoint") and \
        "belongs to another run" in why["damaged (other run)"]
    # finished work for a reader: finished, and stopped (read as it is, never continued)
    assert {k for k, r in runs.items() if r.reusable()} == {STOPPED, FINISHED}
    stopped = runs[STOPPED].result()
    assert stopped.stop_reason.message == stop["message"] and len(stopped.trace) == 2
    assert not runs[STOPPED].reusable(accept_stopped=False)     # a caller asking for the budget
    finished = runs[FINISHED].result()
    assert finished.status == "reused" and finished.stop_reason is None
    assert torch.equal(finished.rule.feedback, state["rule"]["feedback"])
    with pytest.raises(RuntimeError, match="unfinished: checkpoint at epoch 1.*train it first"):
        runs[PARTIAL].result()
    # a grid that only reads lists every run that is not finished work, with its reason
    with pytest.raises(MissingRunsError) as exc:
        run_grid(TINY, tmp_path / "results", rules=["dfa"], seeds=[42], frozen=False,
                 data=tiny_data, train_missing=False, progress=False)
    assert "dfa seed 42: no checkpoint in" in str(exc.value)


# ---------------------------------------------------------------------------------------------
# A rule's options: parsed once per run, keyed as before
# ---------------------------------------------------------------------------------------------
def test_a_rules_options_are_parsed_once_per_run_and_kept_off_the_configs_dict(
        tiny_data, tmp_path, monkeypatch):
    config = TINY.config("ep", 42, epochs=1, device="cpu")
    assert config.options == RULES["ep"].Options(steps=3)      # the profile's, defaults filled
    assert "options" not in config.to_dict() and "_parsed" not in config.to_dict()
    assert dataclasses.asdict(config) == config.to_dict()
    assert pickle.loads(pickle.dumps(config)) == config
    assert pickle.loads(pickle.dumps(config)).options == config.options
    calls = []
    real = RULES["ep"].parse_options.__func__
    monkeypatch.setattr(RULES["ep"], "parse_options",
                        classmethod(lambda cls, o: calls.append(o) or real(cls, o)))
    train(config, data=tiny_data, runs_root=tmp_path)
    assert len(calls) == 1       # train's own validate; the key, the rule and the grid reuse it
    config.rule_options = {"steps": 4}                 # edited after construction: parsed again
    assert config.options.steps == 4


def test_run_keys_and_folders_of_the_built_in_rules_do_not_change(tiny_data):
    for rule in sorted(RULES):
        for options in ({}, dataclasses.asdict(RULES[rule].parse_options({}))):
            config = TrainConfig(rule=rule, rule_options=options)
            key = run_key_of(config, "fp", "0.1.0")
            assert key == run_key_of(config.to_dict(), "fp", "0.1.0")   # as a checkpoint's
            assert run_name(config, key) == f"{rule}-s42-{key[:12]}"
    assert run_key_of(TrainConfig(rule="bp"), "fp", "0.1.0") == \
        "242227236c9e6ad1f6ef3c7cf385bfc9c22b607bda0f0799bf7ba53deb13ebc5"    # test_user_rules
    config = TINY.config("dfa", 42, device="cpu")
    run = Run("runs", config, tiny_data)
    assert run.dir == Path("runs") / run_name(config, run_key_of(config.to_dict(),
                                                                 tiny_data.fingerprint))


def test_a_profiles_options_apply_to_a_rule_named_by_its_import_path():
    by_path = TINY.config("fa_nb_utils.ep:EP", 42)
    assert by_path.rule == "ep" and by_path.rule_options == {"steps": 3}
    assert by_path == TINY.config("ep", 42)
