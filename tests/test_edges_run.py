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
import json
import math
import os
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
    from fa_nb_utils.trainer import TrainConfig
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
    from fa_nb_utils.trainer import TrainConfig
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
