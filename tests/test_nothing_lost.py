"""Nothing wrong, nothing lost: verified checkpoints, readable output files, repairable run folders,
a run key free of machine details, stopped runs continued on request, a resumable Ctrl-C and clear
errors for unwritable outputs and checkpoints that do not fit."""
import importlib
import json
import os
import shutil
import stat

import numpy as np
import pytest
import torch

from fa_nb_utils.data import cifar, cifar_writer
from fa_nb_utils.checkpoint import (CHECKPOINT_NAME, SCHEMA_VERSION, CheckpointError,
                                    load_checkpoint, restore_state, save_checkpoint)
from fa_nb_utils.io import OutputPathError, write_bytes_atomic, write_json_atomic
from fa_nb_utils.monitor import Monitor, StopReason
from fa_nb_utils.cli import train_main as main
from fa_nb_utils.config import TrainConfig
from fa_nb_utils.runs import TRACE_NAME, config_differences, run_key_of, run_name
from fa_nb_utils.trainer import train

# the module (the package re-exports the function `train` under the same name)
train_mod = importlib.import_module("fa_nb_utils.trainer")

BASE = dict(rule="dfa", epochs=2, seed=3, data="synthetic", synthetic_n_train=2000,
            synthetic_n_test=1280, d_hidden=32, num_blocks=2, limit_train=500, progress=False,
            device="cpu")
MONITOR_KEYS = ("protocol", "stop_reason", "seconds")


def config(data_root, **kw):
    return TrainConfig(**{**BASE, "data_root": str(data_root), **kw})


def numbers(trace):
    """A trace without wall-clock times and without what a monitor adds."""
    return [{k: v for k, v in e.items() if k not in MONITOR_KEYS} for e in trace]


def count_steps(monkeypatch):
    calls = []
    real = train_mod.train_step
    monkeypatch.setattr(train_mod, "train_step", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def flip(path, start, n=64):
    raw = bytearray(path.read_bytes())
    for i in range(start, start + n):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


def feedback_offset(path):
    """Where the DFA rule's `feedback` tensor lies in the checkpoint file."""
    fb = load_checkpoint(path)["rule"]["feedback"].numpy().tobytes()
    pos = path.read_bytes().find(fb)
    assert pos > 0
    return pos + len(fb) // 2 - 32


@pytest.fixture
def finished(tmp_path, data_root, synthetic_folder):
    """A finished two-epoch DFA run under tmp_path/runs."""
    return train(config(data_root), runs_root=tmp_path / "runs")


# ---------------------------------------------------------------------------------------------
# 1. a corrupted checkpoint never loads
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["middle", "feedback"])
def test_flipped_bytes_in_a_checkpoint_are_refused(finished, where):
    path = finished.run_dir / CHECKPOINT_NAME
    start = len(path.read_bytes()) // 2 if where == "middle" else feedback_offset(path)
    flip(path, start)
    with pytest.raises(CheckpointError, match="corrupt") as exc:
        load_checkpoint(path)
    assert str(path) in str(exc.value)


def test_empty_and_truncated_checkpoints_and_empty_error_messages(tmp_path, monkeypatch):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty") as exc:
        load_checkpoint(empty)
    assert str(empty) in str(exc.value)
    good = save_checkpoint(tmp_path / "good.pt", {"epoch": 1, "w": torch.ones(1000)})
    half = tmp_path / "half.pt"
    half.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(CheckpointError, match="truncated, corrupt"):
        load_checkpoint(half)
    # torch can raise with an empty message: the error must still be a CheckpointError
    monkeypatch.setattr(torch, "load", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("")))
    with pytest.raises(CheckpointError, match="RuntimeError"):
        load_checkpoint(good)


def test_schema_1_checkpoints_load_only_when_their_crcs_verify(tmp_path):
    state = {"format": "fa-eval-checkpoint", "schema_version": 1, "epoch": 1,
             "w": torch.arange(4096, dtype=torch.float32)}
    old = tmp_path / "old.pt"
    torch.save(state, old)
    assert torch.equal(load_checkpoint(old)["w"], state["w"])
    w = state["w"].numpy().tobytes()
    flip(old, old.read_bytes().find(w) + 1000)
    with pytest.raises(CheckpointError, match=f"{old}.*corrupt"):
        load_checkpoint(old)
    if not hasattr(torch.serialization, "set_crc32_options"):
        return
    nocrc = tmp_path / "nocrc.pt"
    torch.serialization.set_crc32_options(False)
    try:
        torch.save(state, nocrc)
    finally:
        torch.serialization.set_crc32_options(True)
    with pytest.raises(CheckpointError, match="(?i)cannot be verified.*retrain"):
        load_checkpoint(nocrc)


def test_a_flipped_byte_anywhere_is_refused_or_changes_nothing(tmp_path):
    state = {"epoch": 1, "w": torch.arange(2048, dtype=torch.float32), "trace": [{"a": 0.5}]}
    good = save_checkpoint(tmp_path / "good.pt", state)
    assert load_checkpoint(good)["schema_version"] == SCHEMA_VERSION == 2
    raw = good.read_bytes()
    bad = tmp_path / "bad.pt"
    for pos in range(0, len(raw), max(len(raw) // 40, 1)):
        bad.write_bytes(raw[:pos] + bytes([raw[pos] ^ 0x01]) + raw[pos + 1:])
        try:
            loaded = load_checkpoint(bad)
        except CheckpointError as exc:
            assert str(bad) in str(exc)
            continue
        assert torch.equal(loaded["w"], state["w"]) and loaded["trace"] == state["trace"], pos


# ---------------------------------------------------------------------------------------------
# 2. output files get the usual permissions
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o002, 0o664)])
def test_new_files_get_0666_minus_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        paths = [write_bytes_atomic(tmp_path / "a.bin", b"x"),
                 write_json_atomic(tmp_path / "sub" / "b.json", {"a": 1}),
                 save_checkpoint(tmp_path / "c.pt", {"epoch": 0})]
        # a file left 0600 by an older version gets the usual mode when it is rewritten
        private = tmp_path / "private.json"
        private.write_text("{}")
        private.chmod(0o600)
        paths.append(write_json_atomic(private, {"b": 2}))
        rng = np.random.default_rng(0)
        folder = cifar_writer.write_cifar10_folder(
            tmp_path / "cifar", rng.integers(0, 256, (5, 3, 32, 32), dtype=np.uint8),
            np.zeros(5, dtype=np.int64), rng.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8),
            np.zeros(2, dtype=np.int64), ["a", "b"], {})
        paths += sorted(folder.iterdir())
        # the data archive, and the same archive downloaded (its temporary file renamed into place)
        archive = tmp_path / "served" / "cifar.tar.gz"
        md5 = cifar_writer.write_cifar10_archive(folder, archive)
        paths += [archive, cifar.download_cifar10(tmp_path / "downloaded", url=archive.as_uri(),
                                                  expected_md5=md5, progress=False)]
    finally:
        os.umask(old)
    for p in paths:
        assert stat.S_IMODE(p.stat().st_mode) == mode, p
    assert not list(tmp_path.rglob("*.tmp"))


# ---------------------------------------------------------------------------------------------
# 3. a rerun reports and repairs what does not verify
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["flipped", "truncated", "empty", "no-rule"])
def test_rerun_moves_a_bad_checkpoint_aside_and_retrains(finished, damage, capsys, monkeypatch):
    path = finished.run_dir / CHECKPOINT_NAME
    raw = path.read_bytes()
    if damage == "flipped":
        flip(path, feedback_offset(path))
    elif damage == "truncated":
        path.write_bytes(raw[: len(raw) // 3])
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # intact bytes, but an entry is missing
        state = load_checkpoint(path)
        del state["rule"]
        save_checkpoint(path, {k: v for k, v in state.items()
                               if k not in ("format", "schema_version")})
    damaged = path.read_bytes()
    capsys.readouterr()
    calls = count_steps(monkeypatch)
    again = train(config(finished.config.data_root), runs_root=finished.run_dir.parent)
    err = capsys.readouterr().err
    assert calls, "the run must be recomputed"
    assert str(path) in err and "retrain" in err
    assert (finished.run_dir / "checkpoint.pt.corrupt").read_bytes() == damaged
    assert numbers(again.trace) == numbers(finished.trace)
    assert load_checkpoint(path)["epoch"] == 2
    saved = json.loads((finished.run_dir / TRACE_NAME).read_text())
    assert numbers(saved["trace"]) == numbers(finished.trace)


@pytest.mark.parametrize("damage", ["missing", "truncated", "disagrees"])
def test_rerun_rewrites_a_bad_trace_json_from_the_checkpoint(finished, damage, capsys,
                                                             monkeypatch):
    trace_path = finished.run_dir / TRACE_NAME
    good = json.loads(trace_path.read_text())
    if damage == "missing":
        trace_path.unlink()
    elif damage == "truncated":
        trace_path.write_text(trace_path.read_text()[:100])
    else:
        bad = json.loads(trace_path.read_text())
        bad["trace"][-1]["acc_eval"] = 0.99
        trace_path.write_text(json.dumps(bad))
    capsys.readouterr()
    calls = count_steps(monkeypatch)
    again = train(config(finished.config.data_root), runs_root=finished.run_dir.parent)
    err = capsys.readouterr().err
    assert calls == [] and again.trace == finished.trace
    assert str(trace_path) in err and "rewr" in err
    assert json.loads(trace_path.read_text()) == good


def test_an_intact_run_folder_is_reused_silently(finished, capsys, monkeypatch):
    capsys.readouterr()
    calls = count_steps(monkeypatch)
    train(config(finished.config.data_root), runs_root=finished.run_dir.parent)
    assert calls == [] and capsys.readouterr().err == ""


def test_explicit_resume_from_a_corrupt_checkpoint_is_refused(finished, monkeypatch):
    path = finished.run_dir / CHECKPOINT_NAME
    flip(path, feedback_offset(path))
    calls = count_steps(monkeypatch)
    for runs_root in (None, finished.run_dir.parent):
        with pytest.raises(CheckpointError, match="corrupt") as exc:
            train(config(finished.config.data_root), resume_from=path, runs_root=runs_root)
        assert str(path) in str(exc.value)
    assert calls == [] and not (finished.run_dir / "checkpoint.pt.corrupt").exists()


# ---------------------------------------------------------------------------------------------
# 4. the run key holds only what changes the numbers
# ---------------------------------------------------------------------------------------------
def test_run_key_ignores_device_threads_and_data_location(tmp_path):
    def key(**kw):
        return run_key_of(config(kw.pop("data_root", tmp_path), **kw).to_dict(), "fp", "1.0")

    base = key()
    assert key(device="auto") == key(threads=1) == key(threads=2) == base
    assert key(data_root=str(tmp_path / "elsewhere"), download=False, progress=True) == base
    assert key(lr=2e-3) != base and key(seed=4) != base
    assert run_key_of(config(tmp_path).to_dict(), "other data", "1.0") != base
    a = config(tmp_path, threads=2, device="auto")
    assert run_name(a, key(threads=2, device="auto")) == run_name(config(tmp_path), base)
    assert config_differences(config(tmp_path).to_dict(), a.to_dict()) == []
    assert config_differences(config(tmp_path).to_dict(), config(tmp_path, lr=2e-3).to_dict()) \
        == ["lr: checkpoint 0.001 vs now 0.002"]


def test_a_finished_run_is_reused_on_other_threads_and_data_root(finished, tmp_path, monkeypatch,
                                                                 synthetic_folder, data_root):
    other_root = tmp_path / "other-data"
    shutil.copytree(synthetic_folder, other_root / synthetic_folder.relative_to(data_root))
    calls = count_steps(monkeypatch)
    threads = torch.get_num_threads()
    try:
        again = train(config(other_root, threads=1, device="auto"),
                      runs_root=finished.run_dir.parent)
    finally:
        torch.set_num_threads(threads)
    assert calls == [] and again.run_dir == finished.run_dir and again.trace == finished.trace


# ---------------------------------------------------------------------------------------------
# 5. a run stopped by a monitor is continued for a caller that asks for the full budget
# ---------------------------------------------------------------------------------------------
class StopAt(Monitor):
    """Stops the run at a given epoch (the real protocol still runs and is recorded)."""

    def __init__(self, epoch):
        super().__init__(stop_on=())
        self.stop_epoch = epoch

    def check(self, model, eval_batches, epoch, acc_eval, train_loss=None):
        stop = super().check(model, eval_batches, epoch, acc_eval, train_loss)
        if epoch == self.stop_epoch:
            stop = StopReason("a", "test stop", 2.0, 1.0, epoch, f"test stop at epoch {epoch}")
            self.stop_reason = stop
        return stop


def test_a_stopped_run_is_continued_without_a_monitor_bit_identically(
        tmp_path, data_root, synthetic_folder, monkeypatch):
    cfg = config(data_root, epochs=4)
    plain = train(cfg, runs_root=tmp_path / "plain")
    stopped = train(cfg, runs_root=tmp_path / "mon", monitor=StopAt(2), checkpoint_every=3)
    assert stopped.stop_reason.epoch == 2 and len(stopped.trace) == 3
    stop = stopped.stop_reason.to_dict()

    calls = count_steps(monkeypatch)
    full = train(cfg, runs_root=tmp_path / "mon")
    assert calls, "the caller asked for the full budget"
    assert full.stop_reason is None and "stop_reason" not in full.metadata
    assert full.metadata["continued_after_stop"] == stop
    assert full.metadata["resumed_from_epoch"] == 2
    assert numbers(full.trace) == numbers(plain.trace)
    assert not any("stop_reason" in e for e in full.trace)
    for p, q in zip(full.model.state_dict().values(), plain.model.state_dict().values()):
        assert torch.equal(p, q)
    assert torch.equal(full.rule.feedback, plain.rule.feedback)
    state = load_checkpoint(full.run_dir / CHECKPOINT_NAME)
    assert state["epoch"] == 4 and "stop_reason" not in state
    saved = json.loads((full.run_dir / TRACE_NAME).read_text())
    assert "stop_reason" not in saved["metadata"]
    assert saved["metadata"]["continued_after_stop"] == stop
    # the finished continuation is reused, and keeps its record of the stop
    n = len(calls)
    again = train(cfg, runs_root=tmp_path / "mon")
    assert len(calls) == n and again.metadata["continued_after_stop"] == stop


def test_a_stopped_run_is_finished_work_for_a_monitored_caller(tmp_path, data_root,
                                                               synthetic_folder, monkeypatch):
    cfg = config(data_root, epochs=4)
    stopped = train(cfg, runs_root=tmp_path, monitor=StopAt(1))
    calls = count_steps(monkeypatch)
    m = Monitor()
    again = train(cfg, runs_root=tmp_path, monitor=m)
    assert calls == [] and again.stop_reason == stopped.stop_reason == m.stop_reason
    assert again.trace == stopped.trace


# ---------------------------------------------------------------------------------------------
# 6. Ctrl-C says how to resume
# ---------------------------------------------------------------------------------------------
def interrupt_in_epoch_2(monkeypatch, runs):
    """Raise KeyboardInterrupt at the first step after the epoch-1 checkpoint exists."""
    real = train_mod.train_step
    state = {"epochs_done": 0}

    def step(*a, **k):
        if runs is None:
            state["epochs_done"] += 1
            if state["epochs_done"] > 5:  # limit_train=500, batch 128: 4 steps per epoch
                raise KeyboardInterrupt
        elif list(runs.rglob(CHECKPOINT_NAME)):
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(train_mod, "train_step", step)


def test_ctrl_c_names_the_last_checkpoint_and_how_to_resume(checkpoint_each_epoch, tmp_path, data_root, synthetic_folder,
                                                            monkeypatch, capsys):
    runs = tmp_path / "runs"
    interrupt_in_epoch_2(monkeypatch, runs)
    with pytest.raises(KeyboardInterrupt):
        train(config(data_root, epochs=3), runs_root=runs)
    err = capsys.readouterr().err.strip()
    (run_dir,) = runs.iterdir()
    assert len(err.splitlines()) == 1
    assert "interrupted at epoch 2" in err and "last checkpoint is epoch 1" in err
    assert str(run_dir) in err and "rerun" in err and "resume" in err
    monkeypatch.undo()
    resumed = train(config(data_root, epochs=3), runs_root=runs)
    assert resumed.metadata["resumed_from_epoch"] == 1


def test_ctrl_c_without_runs_root_says_nothing_was_saved(data_root, synthetic_folder, monkeypatch,
                                                         capsys):
    interrupt_in_epoch_2(monkeypatch, None)
    with pytest.raises(KeyboardInterrupt):
        train(config(data_root, epochs=3))
    err = capsys.readouterr().err
    assert "interrupted at epoch 2" in err and "nothing was saved" in err and "--runs-root" in err


def test_cli_ctrl_c_exits_130_without_a_traceback(checkpoint_each_epoch, tmp_path, data_root, synthetic_folder,
                                                  monkeypatch, capsys):
    runs = tmp_path / "runs"
    interrupt_in_epoch_2(monkeypatch, runs)
    rc = main(["--rule", "dfa", "--epochs", "3", "--seed", "3", "--data", "synthetic",
               "--data-root", str(data_root), "--synthetic-n-train", "2000",
               "--synthetic-n-test", "1280", "--d-hidden", "16", "--num-blocks", "2",
               "--no-progress", "--device", "cpu", "--runs-root", str(runs)])
    err = capsys.readouterr().err
    assert rc == 130
    assert "Traceback" not in err and "last checkpoint is epoch 1" in err


# ---------------------------------------------------------------------------------------------
# 7. unwritable output paths fail early with the cause and the fix
# ---------------------------------------------------------------------------------------------
def test_output_under_a_file_names_the_file_and_the_fix(tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("not a folder")
    for target in (blocker / "table.json", blocker / "deeper" / "table.json"):
        with pytest.raises(OutputPathError) as exc:
            write_json_atomic(target, {"a": 1})
        msg = str(exc.value)
        assert isinstance(exc.value, OSError)
        assert str(target) in msg and f"{blocker} is a file" in msg
        assert "choose another results folder" in msg
    folder = tmp_path / "a-folder"
    folder.mkdir()
    with pytest.raises(OutputPathError, match="is a folder"):
        write_bytes_atomic(folder, b"x")
    assert blocker.read_text() == "not a folder" and not list(tmp_path.rglob("*.tmp"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permissions")
def test_output_in_a_read_only_folder_says_no_write_permission(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(OutputPathError, match=f"no write permission on {ro}"):
            write_bytes_atomic(ro / "x.bin", b"x")
        with pytest.raises(OutputPathError, match="no write permission"):
            save_checkpoint(ro / "sub" / "c.pt", {"epoch": 0})
    finally:
        ro.chmod(0o755)


def test_train_checks_runs_root_before_loading_data(tmp_path, data_root, monkeypatch):
    blocker = tmp_path / "runs"
    blocker.write_text("")

    def no_data(*a, **k):
        raise AssertionError("data were loaded before the output folder was checked")

    monkeypatch.setattr(train_mod, "load_data", no_data)
    with pytest.raises(OutputPathError, match=f"{blocker} is a file.*runs_root"):
        train(config(data_root), runs_root=blocker / "sub")


def test_cli_checks_trace_out_and_runs_root_before_training(tmp_path, data_root, monkeypatch,
                                                            capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setattr(train_mod, "load_data", lambda *a, **k: (_ for _ in ()).throw(
        AssertionError("data were loaded before the output paths were checked")))
    args = ["--rule", "dfa", "--epochs", "1", "--data", "synthetic", "--data-root",
            str(data_root), "--no-progress", "--device", "cpu"]
    assert main(args + ["--trace-out", str(blocker / "trace.json")]) == 2
    err = capsys.readouterr().err
    assert f"{blocker} is a file" in err and "--trace-out" in err and "Traceback" not in err
    assert main(args + ["--runs-root", str(blocker / "runs")]) == 2
    assert f"{blocker} is a file" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# 8. checkpoints that do not fit the run: missing entries, other shapes
# ---------------------------------------------------------------------------------------------
def _rewrite(path, dest, edit):
    state = {k: v for k, v in load_checkpoint(path).items()
             if k not in ("format", "schema_version")}
    edit(state)
    return save_checkpoint(dest, state)


@pytest.mark.parametrize("key", ["model", "rule", "optimizer", "scheduler", "generators", "trace"])
def test_resume_from_a_checkpoint_missing_an_entry_names_it(finished, tmp_path, key):
    bad = _rewrite(finished.run_dir / CHECKPOINT_NAME, tmp_path / f"no-{key}.pt",
                   lambda s: s.pop(key))
    with pytest.raises(CheckpointError, match=f"{bad}.*'{key}'.*retrain"):
        train(config(finished.config.data_root), resume_from=bad)


def test_resume_with_other_shapes_names_the_parameter_and_both_shapes(
        finished, tmp_path, data_root):
    narrow = train(config(data_root, d_hidden=16, epochs=1), runs_root=tmp_path / "narrow")
    narrow_state = load_checkpoint(narrow.run_dir / CHECKPOINT_NAME)
    path = finished.run_dir / CHECKPOINT_NAME

    bad = _rewrite(path, tmp_path / "model.pt", lambda s: s.update(model=narrow_state["model"]))
    with pytest.raises(CheckpointError, match=r"model parameter 'embed.weight' has shape "
                                              r"\(16, 3072\) in .* but \(32, 3072\)"):
        train(config(data_root), resume_from=bad)
    bad = _rewrite(path, tmp_path / "rule.pt", lambda s: s.update(rule=narrow_state["rule"]))
    with pytest.raises(CheckpointError, match=r"rule .*'feedback' has shape \(2, 16, 10\)"):
        train(config(data_root), resume_from=bad)
    bad = _rewrite(path, tmp_path / "opt.pt",
                   lambda s: s.update(optimizer=narrow_state["optimizer"]))
    with pytest.raises(CheckpointError, match=r"optimizer state .*embed.weight.* \(16, 3072\)"):
        train(config(data_root), resume_from=bad)


def test_restore_state_checks_before_loading_anything(finished, data_root):
    path = finished.run_dir / CHECKPOINT_NAME
    state = load_checkpoint(path)
    fresh = train(config(data_root, epochs=0))
    before = {k: v.clone() for k, v in fresh.model.state_dict().items()}
    state["rule"] = {"feedback": state["rule"]["feedback"][:, :4]}
    with pytest.raises(CheckpointError, match=str(path)):
        restore_state(path, state, model=fresh.model, rule=fresh.rule)
    for k, v in fresh.model.state_dict().items():
        assert torch.equal(v, before[k]), "nothing may be loaded when a check fails"
    # a generator state of another device kind (a CUDA generator's is 16 bytes)
    state = load_checkpoint(path)
    state["generators"]["augment"] = torch.zeros(16, dtype=torch.uint8)
    gens = {"augment": torch.Generator(), "data_order": torch.Generator()}
    with pytest.raises(CheckpointError, match="augment.*another kind of device"):
        restore_state(path, state, model=fresh.model, generators=gens)


def test_accept_stopped_overrides_the_choice_made_from_the_monitor(tmp_path, data_root,
                                                                   synthetic_folder, monkeypatch):
    cfg = config(data_root, epochs=3)
    stopped = train(cfg, runs_root=tmp_path, monitor=StopAt(1))
    calls = count_steps(monkeypatch)
    read = train(cfg, runs_root=tmp_path, accept_stopped=True)  # a reader: never trains
    assert calls == [] and read.stop_reason == stopped.stop_reason and read.trace == stopped.trace
    full = train(cfg, runs_root=tmp_path, monitor=Monitor(stop_on=()), accept_stopped=False)
    assert calls and full.stop_reason is None and full.trace[-1]["epoch"] == 3
    assert full.metadata["continued_after_stop"] == stopped.stop_reason.to_dict()
    with pytest.raises(TypeError, match="accept_stopped"):
        train(cfg, accept_stopped="yes")
