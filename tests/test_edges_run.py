"""Edges of a run and of the command lines: what a user sees when something is off.

- A diverged run (non-finite train loss) stops with a named reason, is never saved or reused as
  finished work, and the grid and the readers list it as failed; a monitor that stops on
  non-finite numbers keeps its stop.
- Bad configs are refused before any work: no blocks, a rule that cannot train an architecture
  (said before the architecture's own checks), an unwritable data root, a CUDA device on a
  machine without CUDA.
- Two trainings of one run at once train it once (the run's lock); a killed grid takes its
  workers with it; a failed submitit job says the worker's own error.
- The command lines suggest what was meant, refuse abbreviations, and document every option.
"""
import dataclasses
import json
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from fa_nb_utils.cli import diagnose_main, reproduce_main, train_main

TINY_CLI = ["--data", "synthetic", "--synthetic-n-train", "250", "--synthetic-n-test", "1280",
            "--d-hidden", "16", "--num-blocks", "2", "--device", "cpu", "--no-progress"]


# ---------------------------------------------------------------------------------------------
# Configs refused before any work
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", ["bp", "dfa", "fa", "ep", "state_bridge"])
def test_a_model_without_blocks_is_refused_naming_the_field_and_the_fix(rule, capsys):
    from fa_nb_utils.config import TrainConfig
    with pytest.raises(ValueError, match=r"num_blocks must be an int >= 1, got 0.*--num-blocks"):
        TrainConfig(rule=rule, num_blocks=0, data="synthetic")
    assert train_main(["--rule", rule, "--num-blocks", "0", "--epochs", "1"]) == 2
    assert "error: TrainConfig.num_blocks must be an int >= 1" in capsys.readouterr().err


def test_a_rule_that_cannot_train_the_architecture_is_said_before_the_architectures_checks(
        capsys):
    # the CNN's default depth is 3 blocks, so the default num_blocks=4 is wrong for it too: the
    # user must first hear that EP does not train CNNs at all
    assert train_main(["--rule", "ep", "--architecture", "cnn", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "rule 'ep' does not train architecture 'cnn'" in err
    assert "num_blocks must be 3" not in err


def _tiny(data_root, **kw):
    from fa_nb_utils.config import TrainConfig
    return TrainConfig(**{**dict(data="synthetic", synthetic_n_train=250,
                                 synthetic_n_test=1280, d_hidden=16, num_blocks=2, epochs=0,
                                 eval_batches=2, eval_batch_size=64, progress=False,
                                 device="cpu", data_root=str(data_root)), **kw})


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """An init checkpoint of a tiny DFA run (epochs=0)."""
    from fa_nb_utils.trainer import train
    root = tmp_path_factory.mktemp("tiny_run")
    result = train(_tiny(root / "data", rule="dfa"), runs_root=root / "runs")
    return result.run_dir / "checkpoint.pt"


def test_diagnose_on_cuda_without_cuda_says_so_not_that_the_checkpoint_is_bad(
        tiny_checkpoint, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert diagnose_main(["--checkpoint", str(tiny_checkpoint), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --device cuda: CUDA is not available on this machine")
    assert "--device cpu" in err and "--device auto" in err
    assert "restore the original file" not in err and str(tiny_checkpoint) not in err


def test_another_runs_checkpoint_in_the_run_folder_says_how_to_move_it_aside(tmp_path):
    from fa_nb_utils.checkpoint import CheckpointError
    from fa_nb_utils.trainer import train
    runs = tmp_path / "runs"
    first = train(_tiny(tmp_path / "data", seed=1), runs_root=runs)
    second = train(_tiny(tmp_path / "data", seed=2), runs_root=runs)
    mine = second.run_dir / "checkpoint.pt"
    shutil.copy(first.run_dir / "checkpoint.pt", mine)
    with pytest.raises(CheckpointError) as exc:
        train(_tiny(tmp_path / "data", seed=2), runs_root=runs)
    msg = str(exc.value)
    assert "seed: checkpoint 1 vs now 2" in msg
    assert f"mv {mine} {mine}.other-run" in msg
    assert "resume_from" not in msg      # the user passed none
    # named explicitly, the fix is the resume_from the user passed
    with pytest.raises(CheckpointError, match="without resume_from"):
        train(_tiny(tmp_path / "data", seed=2), resume_from=first.run_dir / "checkpoint.pt")


def _unwritable_data_root(tmp_path, how):
    if how == "under_a_file":
        (tmp_path / "a_file").write_text("not a folder")
        return tmp_path / "a_file" / "data", "is a file, not a folder"
    if os.geteuid() == 0:
        pytest.skip("root writes to read-only folders; the case under a file covers root")
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder, "no write permission"


@pytest.mark.parametrize("how", ["under_a_file", "read_only"])
def test_an_unwritable_data_root_is_one_error_line_before_any_work(how, tmp_path, monkeypatch,
                                                                    capsys, tiny_checkpoint):
    from fa_nb_utils.data import synthetic
    from fa_nb_utils import trainer

    def boom(*a, **k):
        raise AssertionError("work started before the data root was checked")
    monkeypatch.setattr(synthetic, "generate_arrays", boom)
    monkeypatch.setattr(trainer, "build_model", boom)
    root, cause = _unwritable_data_root(tmp_path, how)
    assert train_main(["--rule", "dfa", "--epochs", "1", "--data-root", str(root), *TINY_CLI]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot create or write to the folder") and err.count("\n") == 1
    assert str(root) in err and cause in err and "--data-root" in err and "FA_EVAL_DATA" in err
    # diagnose regenerates the run's synthetic data under --data-root the same way
    assert diagnose_main(["--checkpoint", str(tiny_checkpoint), "--data-root", str(root),
                          "--device", "cpu", "--out", str(tmp_path / "report.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot create or write to the folder") and cause in err


# ---------------------------------------------------------------------------------------------
# A diverged run is a failure, never finished work
# ---------------------------------------------------------------------------------------------
DIVERGING = dict(rule="ep", rule_options={"beta": 1e30, "steps": 3}, epochs=2)


def _read_state(config, run_dir):
    """(finished work for a reader, why not) of the run of `config` in `run_dir`, as the run
    store reads it."""
    from fa_nb_utils.config import load_data
    from fa_nb_utils.runs import Run
    run = Run(run_dir.parent, config, load_data(config, torch.device("cpu")))
    assert run.dir == run_dir
    return run.reusable(), run.why


def test_a_diverged_run_is_an_error_line_and_never_reused_as_finished(tmp_path, capsys):
    runs = tmp_path / "runs"
    argv = ["--rule", "ep", "--rule-option", "beta=1e30", "--rule-option", "steps=3",
            "--epochs", "2", "--data-root", str(tmp_path / "data"), "--runs-root", str(runs),
            *TINY_CLI]
    for attempt in range(2):     # the rerun trains again and fails again: nothing is reused
        assert train_main(argv) == 1
        captured = capsys.readouterr()
        err = captured.err
        assert err.startswith("error: ep seed 42: training diverged at epoch 1 (train loss nan")
        assert err.count("\n") == 1 and "Traceback" not in err
        assert "beta=1e+30" in err and "Lower the lr" in err and "--rule-option" in err
        assert "epoch   2" not in captured.out
    (run_dir,) = runs.glob("ep-*")
    assert not (run_dir / "checkpoint.pt").exists()    # the diverged epoch is not saved
    from fa_nb_utils.config import TrainConfig
    config = TrainConfig(rule="ep", rule_options={"beta": 1e30, "steps": 3}, epochs=2,
                         data="synthetic", data_root=str(tmp_path / "data"),
                         synthetic_n_train=250, synthetic_n_test=1280, d_hidden=16,
                         num_blocks=2, device="cpu", progress=False)    # the command line's
    done, why = _read_state(config, run_dir)
    assert not done and why.startswith("failed: diverged at epoch 1 (train loss nan")


def test_a_run_diverging_later_keeps_its_last_checkpoint_and_a_good_rerun_finishes_it(checkpoint_each_epoch, 
        tmp_path, monkeypatch):
    from fa_nb_utils import trainer
    from fa_nb_utils.checkpoint import load_checkpoint
    config = _tiny(tmp_path / "data", rule="dfa", epochs=3)
    steps_per_epoch = 2   # 250 samples, batch 128
    real, calls = trainer.train_step, []

    def breaks_in_epoch_2(model, *args):
        calls.append(1)
        if len(calls) == steps_per_epoch + 1:
            with torch.no_grad():
                model.embed.weight.fill_(float("nan"))
        return real(model, *args)
    monkeypatch.setattr(trainer, "train_step", breaks_in_epoch_2)
    with pytest.raises(trainer.RunDivergedError, match="diverged at epoch 2 .train loss nan") as exc:
        trainer.train(config, runs_root=tmp_path / "runs")
    assert exc.value.epoch == 2 and "Its last checkpoint (epoch 1) stays in" in str(exc.value)
    (run_dir,) = (tmp_path / "runs").glob("dfa-*")
    kept = load_checkpoint(run_dir / "checkpoint.pt")
    assert kept["epoch"] == 1 and all(math.isfinite(e["acc_eval"]) for e in kept["trace"])
    assert json.loads((run_dir / "trace.json").read_text())["trace"][-1]["epoch"] == 1
    assert _read_state(config, run_dir) == (
        False, "failed: " + json.loads((run_dir / "diverged.json").read_text())["reason"])
    # the rerun resumes at epoch 1 (nothing computed is lost) and, not diverging, finishes
    monkeypatch.setattr(trainer, "train_step", real)
    result = trainer.train(config, runs_root=tmp_path / "runs")
    assert result.metadata["resumed_from_epoch"] == 1 and result.trace[-1]["epoch"] == 3
    assert _read_state(config, run_dir) == (True, "") and not (run_dir / "diverged.json").exists()


def test_the_grid_lists_a_diverged_run_as_failed_and_the_readers_as_failed(tmp_path):
    from fa_nb_utils.paper.executors import GridRunError
    from fa_nb_utils.paper.experiments import MissingRunsError, run_grid
    from fa_nb_utils.paper.profiles import get_profile
    profile = dataclasses.replace(get_profile("tiny"),
                                  rule_options={"ep": {"beta": 1e30, "steps": 3}})
    kw = dict(rules=["ep"], seeds=[42], frozen=False, data_root=str(tmp_path / "data"),
              progress=False)
    with pytest.raises(GridRunError) as exc:
        run_grid(profile, tmp_path / "results", executor="inprocess", **kw)
    assert [f.label for f in exc.value.failures] == ["ep seed 42"]
    assert "RunDivergedError: ep seed 42: training diverged at epoch 1" in str(exc.value)
    with pytest.raises(MissingRunsError) as exc:     # a reading notebook
        run_grid(profile, tmp_path / "results", train_missing=False, **kw)
    assert "ep seed 42: failed: diverged at epoch 1 (train loss nan" in str(exc.value)


def _finished_then_made_nan(tmp_path, **stop):
    """A finished tiny run whose checkpoint says what an older fa-eval saved for a diverged
    run: the last epoch's train loss NaN, the checkpoint still finished."""
    from fa_nb_utils.checkpoint import load_checkpoint, save_checkpoint
    from fa_nb_utils.trainer import train
    config = _tiny(tmp_path / "data", rule="dfa", epochs=1)
    result = train(config, runs_root=tmp_path / "runs")
    path = result.run_dir / "checkpoint.pt"
    state = load_checkpoint(path)
    state["trace"][-1]["train_loss"] = float("nan")
    state = {k: v for k, v in state.items() if k not in ("format", "schema_version")}
    save_checkpoint(path, {**state, **stop})
    return config, result.run_dir


def test_an_old_finished_checkpoint_of_a_diverged_run_is_not_reused(tmp_path):
    from fa_nb_utils.trainer import RunDivergedError, train
    config, run_dir = _finished_then_made_nan(tmp_path)
    assert _read_state(config, run_dir) == (
        False, "failed: diverged at epoch 1 (train loss nan; rule 'dfa' with "
               "credit_norm='none', lr 0.001)")
    with pytest.raises(RunDivergedError, match="neither reused nor trained further") as exc:
        train(config, runs_root=tmp_path / "runs")
    assert f"mv {run_dir / 'checkpoint.pt'} " in str(exc.value)


def test_a_monitor_stopping_on_nonfinite_keeps_its_stop_and_one_that_does_not_fails(tmp_path):
    from fa_nb_utils.monitor import Monitor
    from fa_nb_utils.trainer import RunDivergedError, train
    config = _tiny(tmp_path / "data", **DIVERGING)
    stopped = train(config, runs_root=tmp_path / "runs", monitor=Monitor())
    assert stopped.stop_reason.diagnostic == "nonfinite" and stopped.stop_reason.epoch == 1
    assert _read_state(config, stopped.run_dir) == (True, "")   # a monitor's stop
    with pytest.raises(RunDivergedError, match="diverged at epoch 1"):
        train(config, runs_root=tmp_path / "other_runs", monitor=Monitor(stop_on=("a",)))
    # continued for the full budget (no monitor), the stopped run is a diverged one
    with pytest.raises(RunDivergedError, match="neither reused nor trained further"):
        train(config, runs_root=tmp_path / "runs")


# ---------------------------------------------------------------------------------------------
# One run, one trainer at a time
# ---------------------------------------------------------------------------------------------
def test_two_command_lines_on_one_run_train_it_once(tmp_path):
    from fa_nb_utils import __version__
    from fa_nb_utils.config import TrainConfig, load_data
    from fa_nb_utils.runs import run_key_of, run_lock, run_name
    config = TrainConfig(rule="dfa", epochs=2, seed=5, data="synthetic", synthetic_n_train=250,
                         synthetic_n_test=1280, d_hidden=16, num_blocks=2, device="cpu",
                         data_root=str(tmp_path / "data"))      # what the command line makes
    data = load_data(config, torch.device("cpu"))     # generated once, before either starts
    name = run_name(config, run_key_of(config.to_dict(), data.fingerprint, __version__))
    runs = tmp_path / "runs"
    argv = ["--rule", "dfa", "--epochs", "2", "--seed", "5", "--data-root",
            str(tmp_path / "data"), "--runs-root", str(runs), *TINY_CLI]
    procs, errs = [], [tmp_path / f"err{i}.txt" for i in range(2)]
    (runs / name).mkdir(parents=True)
    with run_lock(runs / name):     # both start while the run is held, then race for it
        for i in range(2):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "fa_nb_utils.train", *argv, "--trace-out",
                 str(tmp_path / f"trace{i}.json")], stdout=subprocess.PIPE,
                stderr=errs[i].open("w"), text=True))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not all(
                "waiting for another process on this run" in e.read_text() for e in errs):
            if all(p.poll() is not None for p in procs):
                break
            time.sleep(0.1)
    try:
        outs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], [e.read_text()[-2000:] for e in errs]
    resumed = sorted((json.loads((tmp_path / f"trace{i}.json").read_text())["metadata"]
                      .get("resumed_from_epoch") or 0) for i in range(2))
    assert resumed == [0, 2]     # one trained both epochs, the other reused its work
    assert sum(f"{name}: reused (finished earlier" in out for out in outs) == 1, outs


def test_killing_a_process_pool_grid_ends_its_workers_and_the_resource_tracker(tmp_path):
    psutil = pytest.importorskip("psutil")
    from fa_nb_utils.paper.experiments import profile_data
    from fa_nb_utils.paper.profiles import get_profile
    data_root = str(tmp_path / "data")
    profile_data(get_profile("tiny"), data_root=data_root)   # before any worker starts
    results = tmp_path / "results"
    script = tmp_path / "grid.py"
    script.write_text(textwrap.dedent(f"""
        from fa_nb_utils.paper.experiments import run_grid
        from fa_nb_utils.paper.profiles import get_profile
        if __name__ == "__main__":
            run_grid(get_profile("tiny"), {str(results)!r}, executor="process", workers=2,
                     threads=1, rules=["dfa"], seeds=[42, 123], frozen=False,
                     data_root={data_root!r}, epochs=500, d_hidden=64)
    """))
    grid = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    children = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:   # both workers are training a run
            children = psutil.Process(grid.pid).children(recursive=True)
            if len(list(results.glob("runs/*/worker.log"))) == 2 and len(children) >= 3:
                break
            assert grid.poll() is None, "the grid ended before it could be killed"
            time.sleep(0.1)
        cmdlines = [" ".join(c.cmdline()) for c in children]
        assert sum("spawn_main" in c for c in cmdlines) == 2, cmdlines
        assert any("resource_tracker" in c for c in cmdlines), cmdlines
        grid.kill()
        grid.wait()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(_alive(psutil, c) for c in children):
            time.sleep(0.2)
        left = [" ".join(c.cmdline())[:120] for c in children if _alive(psutil, c)]
        assert not left, f"still running after their grid was killed: {left}"
    finally:
        for c in [grid, *children]:
            try:
                c.kill()
            except Exception:
                pass


def _alive(psutil, proc) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_failed_submitit_job_says_the_workers_own_error(tmp_path):
    submitit = pytest.importorskip("submitit")
    from fa_nb_utils.paper.executors import GridRunError
    from fa_nb_utils.paper.experiments import profile_data, run_grid
    from fa_nb_utils.paper.profiles import get_profile
    tiny = get_profile("tiny")
    planned = profile_data(tiny, data_root=str(tmp_path / "planned"), synthetic_n_train=600)
    profile_data(tiny, data_root=str(tmp_path / "data"))
    local = submitit.LocalExecutor(folder=str(tmp_path / "submitit_jobs"))
    local.update_parameters(timeout_min=10)
    # the worker reads other data than the grid planned with, and refuses the run
    with pytest.raises(GridRunError) as exc:
        run_grid(tiny, tmp_path / "results", rules=["bp"], seeds=[42], frozen=False,
                 data=planned, data_root=str(tmp_path / "data"), executor=local, workers=1,
                 threads=1, progress=False)
    (failure,) = exc.value.failures
    assert failure.error.startswith("RuntimeError: bp seed 42: this worker loaded data with "
                                    "fingerprint"), failure.error
    assert "submitit logs:" in failure.error and "FailedJobError" not in failure.error


# ---------------------------------------------------------------------------------------------
# The command lines
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("main, argv, suggestion", [
    (train_main, ["--rule", "dfaa"], "unknown rule 'dfaa'; registered rules: "),
    (train_main, ["--rule", "dfaa"], "did you mean 'dfa'?"),
    (train_main, ["--penalty-lamda", "0.5"], "did you mean --penalty-lambda for --penalty-lamda?"),
    (train_main, ["--data", "synthtic"], "did you mean 'synthetic'?"),
    (diagnose_main, ["--checkpoint", "x", "--frozen-baseline", "0.3"],
     "did you mean --frozen-baseline-acc for --frozen-baseline?"),
    (reproduce_main, ["--profile", "tiny", "--only", "02", "-p", "trainmissing=True"],
     "did you mean train_missing for trainmissing?"),
])
def test_a_misspelt_option_or_value_exits_2_saying_what_was_meant(main, argv, suggestion,
                                                                   capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and suggestion in err, err


@pytest.mark.parametrize("main, argv, abbreviated", [
    (train_main, ["--epoch", "3", "--num-blocks", "0"], "--epoch 3"),
    (train_main, ["--freeze-block", "--num-blocks", "0"], "--freeze-block"),
    (diagnose_main, ["--checkpoint", "no_such.pt", "--no-gam"], "--no-gam"),
    (reproduce_main, ["--profile", "huge", "--result", "r"], "--result r"),
])
def test_abbreviated_options_are_refused(main, argv, abbreviated, capsys):
    assert main(argv) == 2
    assert f"unrecognized arguments: {abbreviated}" in capsys.readouterr().err


def test_a_rule_named_by_import_path_goes_to_the_config_untouched(monkeypatch):
    from fa_nb_utils import cli
    seen, real = {}, cli.TrainConfig

    def config(**kw):
        if "rule" not in kw:      # the parser's defaults
            return real(**kw)
        seen.update(kw)
        raise ValueError("stop here")
    monkeypatch.setattr(cli, "TrainConfig", config)
    assert train_main(["--rule", "my_rules:MyRule", "--epochs", "1"]) == 2
    assert seen["rule"] == "my_rules:MyRule"


def _entries(help_text: str) -> dict[str, str]:
    """Each option's entry in a --help text, by its first option string, whitespace joined."""
    options = help_text.split("\noptions:\n", 1)[1].split("\n\n", 1)[0]
    out = {}
    for chunk in re.split(r"\n(?=  -)", options):
        out[chunk.split()[0].rstrip(",")] = " ".join(chunk.split())
    return out


@pytest.mark.parametrize("name", ["train", "diagnose", "reproduce"])
def test_help_documents_every_option_with_its_default(name):
    import argparse
    from fa_nb_utils import cli
    parser = getattr(cli, f"{name}_parser")()
    text = parser.format_help()
    entries = _entries(text)
    squeezed = "".join(text.split())
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        flag = action.option_strings[0]
        assert action.help, f"{flag} has no help"
        assert "".join(action.help.split()) in squeezed, flag
        entry = entries[flag]
        assert "default" in entry or "(required)" in entry, entry
        if action.default not in (None, False, []):
            assert f"(default: {action.default})" in entry or "default" in action.help, entry


def test_train_help_lists_every_registered_rule_with_its_options():
    from fa_nb_utils import cli
    from fa_nb_utils.rules import RULES
    text = cli.train_parser().format_help()
    listed = text.split("rules and their options", 1)[1]
    for name, cls in RULES.items():
        line = next(l for l in listed.splitlines() if l.split()[:1] == [name])
        options = cls.parse_options({})
        for f in dataclasses.fields(options):
            assert f"{f.name}={getattr(options, f.name)}" in " ".join(listed.split()), (name, f)
        if not dataclasses.fields(options):
            assert "no options" in line


@pytest.mark.parametrize("monitored", [False, True])
def test_weights_broken_by_the_last_step_are_a_divergence_too(checkpoint_each_epoch, monitored, tmp_path, monkeypatch):
    """The train loss is summed before each step, so a last step that breaks the weights leaves
    it finite: the epoch's per-layer numbers show it (a monitor checking every 5 epochs would
    not see it before the run ends)."""
    from fa_nb_utils import trainer
    from fa_nb_utils.monitor import Monitor
    real, calls = trainer.train_step, []

    def breaks_at_the_last_step(model, *args):
        out = real(model, *args)
        calls.append(1)
        if len(calls) == 4:          # 2 epochs of 2 steps
            with torch.no_grad():
                model.embed.weight.fill_(float("nan"))
        return out
    monkeypatch.setattr(trainer, "train_step", breaks_at_the_last_step)
    with pytest.raises(trainer.RunDivergedError,
                       match=r"diverged at epoch 2 \(median \|\|h_l\|\| non-finite"):
        trainer.train(_tiny(tmp_path / "data", rule="dfa", epochs=2),
                      runs_root=tmp_path / "runs", monitor=Monitor(every=5) if monitored else None)
    (run_dir,) = (tmp_path / "runs").glob("dfa-*")
    assert json.loads((run_dir / "trace.json").read_text())["trace"][-1]["epoch"] == 1
