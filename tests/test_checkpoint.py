"""Checkpoints: safe loading, clear errors, bit-identical resume after a kill, reuse of finished runs."""
import io
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import importlib
from fa_nb_utils.checkpoint import (CHECKPOINT_NAME, SCHEMA_VERSION, CheckpointError,
                                    load_checkpoint, save_checkpoint)
from fa_nb_utils.config import TrainConfig
from fa_nb_utils.trainer import train

# the module (the package re-exports the function `train` under the same name)
train_mod = importlib.import_module("fa_nb_utils.trainer")

BASE = dict(rule="dfa", epochs=5, seed=3, data="synthetic", synthetic_n_train=2000,
            synthetic_n_test=1280, d_hidden=64, num_blocks=2, limit_train=1000, threads=1,
            progress=False, device="cpu")


def config(data_root, **kw):
    return TrainConfig(**{**BASE, "data_root": str(data_root), **kw})


def strip(trace):
    return [{k: v for k, v in e.items() if k != "seconds"} for e in trace]


def test_killed_run_resumes_bit_identically(tmp_path, data_root, synthetic_folder):
    """A run SIGKILLed in the middle of epoch 4 resumes from epoch 3 to the same numbers."""
    runs = tmp_path / "runs"
    script = textwrap.dedent(f"""
        import os, signal
        import importlib
        from fa_nb_utils.config import TrainConfig
        t = importlib.import_module("fa_nb_utils.trainer")
        real, calls = t.train_step, [0]
        def step(*a, **k):
            calls[0] += 1
            if calls[0] == 3 * 8 + 4:          # 8 steps per epoch: mid-way through epoch 4
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*a, **k)
        t.train_step = step
        cfg = TrainConfig(**{dict(BASE, data_root=str(data_root))!r})
        t.train(cfg, runs_root={str(runs)!r}, checkpoint_every=1)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -9, proc.stderr
    (run_dir,) = runs.iterdir()
    assert load_checkpoint(run_dir / CHECKPOINT_NAME)["epoch"] == 3

    resumed = train(config(data_root), runs_root=runs)
    assert resumed.metadata["resumed_from_epoch"] == 3
    fresh = train(config(data_root), runs_root=tmp_path / "fresh")
    assert strip(resumed.trace) == strip(fresh.trace)
    for p, q in zip(resumed.model.state_dict().values(), fresh.model.state_dict().values()):
        assert torch.equal(p, q)
    assert torch.equal(resumed.rule.feedback, fresh.rule.feedback)


def test_finished_run_is_reused_and_changed_config_recomputed(tmp_path, data_root, synthetic_folder,
                                                             monkeypatch):
    first = train(config(data_root, epochs=2), runs_root=tmp_path)
    calls = []
    real = train_mod.train_step
    monkeypatch.setattr(train_mod, "train_step", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = train(config(data_root, epochs=2), runs_root=tmp_path)
    assert calls == [] and again.trace == first.trace
    assert again.run_dir == first.run_dir
    changed = train(config(data_root, epochs=2, lr=2e-3), runs_root=tmp_path)
    assert calls and changed.run_dir != first.run_dir
    assert (first.run_dir / "trace.json").exists()


def test_a_resume_at_another_thread_count_is_said_and_recorded(checkpoint_each_epoch, tmp_path, data_root,
                                                              synthetic_folder, monkeypatch,
                                                              capsys):
    """Valid numbers, but no longer bit-identical to one thread count: the trainer says so once
    and keeps every change in metadata["threads_changed"]; reusing a finished run says nothing."""
    threads = torch.get_num_threads()
    real, calls = train_mod.train_step, []

    def interrupt_in_epoch_2(*a, **k):
        calls.append(1)
        if len(calls) == 8 + 3:     # 8 steps per epoch
            raise KeyboardInterrupt
        return real(*a, **k)

    try:
        monkeypatch.setattr(train_mod, "train_step", interrupt_in_epoch_2)
        with pytest.raises(KeyboardInterrupt):
            train(config(data_root, epochs=3, threads=1), runs_root=tmp_path)
        monkeypatch.setattr(train_mod, "train_step", real)
        capsys.readouterr()
        resumed = train(config(data_root, epochs=3, threads=2), runs_root=tmp_path)
        err = capsys.readouterr().err
        assert "trained with 1 torch thread(s) up to epoch 1 and continues with 2" in err
        assert resumed.metadata["threads_changed"] == [{"epoch": 1, "from": 1, "to": 2}]
        reused = train(config(data_root, epochs=3, threads=1), runs_root=tmp_path)
        assert "continues with" not in capsys.readouterr().err
        assert reused.metadata["threads_changed"] == [{"epoch": 1, "from": 1, "to": 2}]
    finally:
        torch.set_num_threads(threads)


def test_checkpoint_contents(tmp_path, data_root, synthetic_folder):
    res = train(config(data_root, epochs=1), runs_root=tmp_path)
    state = load_checkpoint(res.run_dir / CHECKPOINT_NAME)
    assert state["schema_version"] == SCHEMA_VERSION and state["epoch"] == 1
    assert isinstance(state["config"], dict) and state["config"]["rule"] == "dfa"
    assert "feedback" in state["rule"]
    assert set(state["generators"]) == {"data_order", "augment"}
    assert state["optimizer"]["state"] and state["scheduler"]["last_epoch"] == 1
    assert [e["epoch"] for e in state["trace"]] == [0, 1]


def test_resume_from_another_config_is_refused(tmp_path, data_root, synthetic_folder):
    res = train(config(data_root, epochs=1), runs_root=tmp_path)
    with pytest.raises(CheckpointError, match=r"another run.*lr: checkpoint 0.001 vs now 0.005"):
        train(config(data_root, epochs=1, lr=5e-3), resume_from=res.run_dir / CHECKPOINT_NAME)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_bad_checkpoints_get_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not an fa-eval checkpoint"):
        load_checkpoint(foreign)
    good = save_checkpoint(tmp_path / "good.pt", {"epoch": 1, "w": torch.ones(1000)})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="truncated, corrupt"):
        load_checkpoint(truncated)
    newer = save_checkpoint(tmp_path / "newer.pt", {"epoch": 1})
    state = torch.load(newer, weights_only=True)
    state["schema_version"] = SCHEMA_VERSION + 1
    torch.save(state, newer)
    with pytest.raises(CheckpointError, match="newer than this fa-eval"):
        load_checkpoint(newer)
    evil = tmp_path / "evil.pt"
    buf = io.BytesIO()
    torch.save({"format": "fa-eval-checkpoint", "schema_version": 1, "x": _Evil()}, buf)
    evil.write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError, match="could not be read"):
        load_checkpoint(evil)


def test_penalty_and_checkpoint_every_are_validated(data_root):
    with pytest.raises(ValueError, match="penalty_lambda must be a finite number >= 0"):
        config(data_root, penalty_lambda=-0.1)
    with pytest.raises(ValueError, match="checkpoint_every"):
        train(config(data_root), checkpoint_every=0)
    with pytest.raises(ValueError, match="checkpoint_every"):
        train(config(data_root), checkpoint_every=True)


def test_checkpoints_come_every_n_epochs_or_about_once_a_minute(tmp_path, data_root,
                                                                synthetic_folder, monkeypatch):
    """Default: only epochs ending CHECKPOINT_SECONDS after the last save (and the last epoch);
    checkpoint_every=N: every N epochs and the last."""
    from fa_nb_utils.runs import Run
    saved, real = [], Run.save

    def spy(self, state, metadata, trace):
        saved.append(state["epoch"])
        return real(self, state, metadata, trace)
    monkeypatch.setattr(Run, "save", spy)
    cfg = config(data_root, epochs=3, limit_train=256)
    train(cfg, runs_root=tmp_path / "default")       # a 3-epoch run takes seconds: one save
    train(cfg, runs_root=tmp_path / "every2", checkpoint_every=2)
    monkeypatch.setattr(train_mod, "CHECKPOINT_SECONDS", 0.0)
    train(cfg, runs_root=tmp_path / "timed")
    assert saved == [3, 2, 3, 1, 2, 3]
