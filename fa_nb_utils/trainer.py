"""The trainer: the paper's recipe as defaults, one optimizer and one backward per step.

    model, trace = train(TrainConfig(rule="dfa", epochs=5, seed=42, data="synthetic"))

`train` sets a run up, resumes or starts it through the run store, trains its epochs and
finishes it. Every source of randomness has its own named generator (seeding.py), so the same
seed on the same device gives identical numbers. The trace (trace.py) has an epoch-0 entry at
init, then one per epoch, with the protocol's per-layer numbers on the fixed eval batches; under
a `Monitor` the protocol runs in training and stops a degenerate run with a named reason, and
without one a run whose numbers turn non-finite raises RunDivergedError instead of being saved.
Not here: the config (config.py), the run's folder, files and reading (runs.py), the rules
(rules.py), the monitor (monitor.py).
"""
from __future__ import annotations

import contextlib
import copy
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .checkpoint import CorruptCheckpointError, restore_state
from .config import TrainConfig, build_model, load_data, make_rule, resolve_device
from .data import DeviceData
from .io import ensure_writable_dir
from .loggers import TensorBoardLogger, require_tensorboard
from .measures import accuracy
from .model import ResidualMLP
from .monitor import NONFINITE, Monitor, StopReason
from .rules import Rule
from .runs import (DIVERGED_NAME, RUNS_FIX, Run, TrainResult, divergence,
                   divergence_summary, nonfinite_numbers, run_key_of, run_label, run_name,
                   taken_over, verified_state)
from .seeding import make_generator
from .trace import TRACE_CONVENTIONS, TRACE_FORMAT, trace_entry
from .version import __version__


class RunDivergedError(RuntimeError):
    """Training diverged at `epoch` (non-finite numbers, no monitor stopping on them). The epoch
    is never saved; `diverged.json` keeps the run from being taken for finished work."""

    def __init__(self, message: str, epoch: int):
        super().__init__(message)
        self.epoch = epoch


def run_metadata(config: TrainConfig, rule: Rule, data: DeviceData, device: torch.device) -> dict:
    return {
        "package_version": __version__,
        "torch_version": str(torch.__version__),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "data": {"name": data.name, "fingerprint": data.fingerprint, "num_train": data.num_train,
                 "num_test": int(data.test_y.shape[0]), "num_classes": data.num_classes,
                 "input_dim": data.input_dim, "augment": data.augment},
        "rule": rule.metadata(),
        "config": config.to_dict(),
        "trace_format": TRACE_FORMAT,
        "trace_conventions": TRACE_CONVENTIONS,
    }


def make_optimizer(model: ResidualMLP, rule: Rule, config: TrainConfig) -> torch.optim.AdamW:
    """One AdamW over every trainable parameter (model and the rule's auxiliary nets).

    Feedback matrices are buffers, so they are never optimised or decayed."""
    params = [p for p in list(model.parameters()) + list(rule.parameters()) if p.requires_grad]
    aux = [p for p in rule.parameters() if p.requires_grad]
    scale = rule.aux_lr_scale()
    groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    if aux:  # the rule's auxiliary nets (bridges), at their own learning rate
        groups.append({"params": aux, "lr": config.lr * scale})
    # fused: one kernel over all parameters (CPU and CUDA) instead of a few small ops per tensor,
    # which dominate a CPU step at d=256 (timings in docs/measurements.md, "Speed"). Same maths
    # as the default AdamW (tested against one AdamW per module).
    fused = all(p.dtype in (torch.float32, torch.float64) for p in params)
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay, fused=fused)


def train_step(model: ResidualMLP, rule: Rule, opt: torch.optim.Optimizer, x: torch.Tensor,
               y: torch.Tensor, config: TrainConfig):
    """One step: the rule's loss, one backward, one optimizer step. Returns the rule's output."""
    out = rule.step_loss(model, x, y, penalty_lambda=config.penalty_lambda,
                         frozen_blocks=config.freeze_blocks)
    backward(out.loss, opt)
    opt.step()
    return out


def backward(loss: torch.Tensor, opt: torch.optim.Optimizer) -> None:
    """Fresh gradients of `loss` for the optimizer's parameters only: a rule's other leaves
    (State Bridge's detached states, which its credit differentiated already) get none."""
    opt.zero_grad(set_to_none=True)
    loss.backward(inputs=[p for group in opt.param_groups for p in group["params"]
                          if p.requires_grad] or None)


def _fresh_state(config: TrainConfig, data: DeviceData, device: torch.device):
    """Model, rule, optimizer, scheduler and named generators as they are at epoch 0."""
    model = build_model(config, data).to(device)
    rule = make_rule(config, model).to(device)
    opt = make_optimizer(model, rule, config)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, T_max=config.cosine_epochs or max(config.epochs, 1))
             if config.schedule == "cosine" else None)
    gens = {"data_order": make_generator(config.seed, "data_order"),
            "augment": make_generator(config.seed, "augment", device=device)}
    return model, rule, opt, sched, gens


def train(config: TrainConfig, data: DeviceData | None = None, *,
          runs_root: str | Path | None = None, resume_from: str | Path | None = None,
          checkpoint_every: int | None = None, monitor: Monitor | None = None,
          accept_stopped: bool | None = None, on_epoch: Callable[[dict], Any] | None = None,
          tensorboard: str | Path | None = None) -> TrainResult:
    """Train one model with one rule; returns a TrainResult (`model, trace = train(...)`).

    With `runs_root` the run lives in its folder of that run store (runs.py): a checkpoint every
    `checkpoint_every` epochs (default None: at the first epoch ending CHECKPOINT_SECONDS after
    the last one), at a stop and at the end, `trace.json` beside it. The same call again resumes
    an interrupted run (bit-identical at equal device and thread count) or returns a finished
    one; a damaged checkpoint there is moved aside and recomputed, a bad `resume_from` refused
    (CheckpointError). A second process waits on the run's lock, then reuses the run.

    A non-finite number raises RunDivergedError (unless a monitor stops on "nonfinite") and
    `diverged.json` marks the run. A `monitor` runs the protocol every `monitor.every` epochs and
    stops on its `stop_on` (`result.stop_reason`); a caller without one asked for the full
    budget, so training continues (`accept_stopped` overrides that). `on_epoch(entry)` gets each
    checkpointed epoch's trace entry; `tensorboard=DIR` logs them to DIR/<run folder name>.
    """
    config.validate()
    if on_epoch is not None and not callable(on_epoch):
        raise TypeError(f"on_epoch must be callable (entry -> None), got {on_epoch!r}")
    if tensorboard is not None:
        require_tensorboard()   # before any data are loaded
    if checkpoint_every is not None and (not isinstance(checkpoint_every, int)
                                         or isinstance(checkpoint_every, bool)
                                         or checkpoint_every < 1):
        raise ValueError(f"checkpoint_every must be None or an int >= 1, got {checkpoint_every!r}")
    if monitor is not None and not isinstance(monitor, Monitor):
        raise TypeError(f"monitor must be a fa_nb_utils.monitor.Monitor, got {type(monitor).__name__}")
    if not (accept_stopped is None or isinstance(accept_stopped, bool)):
        raise TypeError(f"accept_stopped must be None, True or False, got {accept_stopped!r}")
    if accept_stopped is None:
        accept_stopped = monitor is not None
    run = board = None
    try:
        run = _set_up(config, data, runs_root=runs_root, resume_from=resume_from,
                      monitor=monitor)
        if tensorboard is not None:  # one sub-folder per run, named as its run folder
            board = TensorBoardLogger(Path(tensorboard) / run_name(config, run.key))
        run.loggers = [f for f in (board, on_epoch) if f is not None]
        with run.stored.lock() if run.stored is not None else contextlib.nullcontext():
            start_epoch = _resume_or_start(run, resume_from, accept_stopped=accept_stopped)
            _train_epochs(run, start_epoch, checkpoint_every)
            return _finish(run, start_epoch)
    except KeyboardInterrupt:
        print(_interrupted(run, runs_root), file=sys.stderr)
        raise
    finally:
        if board is not None:
            board.close()


def _interrupted(run: _Run | None, runs_root: str | Path | None) -> str:
    """What Ctrl-C prints: the epoch it stopped at, the last checkpoint, how to resume."""
    epoch, saved = (None, None) if run is None else (run.epoch, run.saved)
    at = (f"interrupted at epoch {epoch}" if epoch is not None
          else "interrupted before training started")
    if runs_root is None:
        return (f"{at}; nothing was saved (no runs folder). To make a run resumable, pass "
                "--runs-root DIR (train(..., runs_root=DIR)) and rerun.")
    folder = runs_root if run is None else run.run_dir
    if saved is None:
        return (f"{at}; no checkpoint was written yet in {folder}; rerun the same "
                "command/config to start the run again.")
    return (f"{at}; the last checkpoint is epoch {saved} in {folder}; rerun the same "
            "command/config to resume from it.")


# --- The steps of `train`: set up -> lock the run -> resume or start -> epochs -> finish ----------
@dataclass(eq=False)
class _Run:
    """A run in progress: what the steps of `train` share and update."""

    config: TrainConfig
    data: DeviceData
    device: torch.device
    monitor: Monitor | None
    model: ResidualMLP
    rule: Rule
    opt: torch.optim.Optimizer
    sched: Any                          # CosineAnnealingLR, or None for a constant lr
    gens: dict[str, torch.Generator]    # "data_order", "augment"
    eval_pairs: list                    # the protocol's fixed eval batches, (x, y) pairs
    eval_x: torch.Tensor                # the same, concatenated
    eval_y: torch.Tensor
    metadata: dict
    key: str                            # run_key: what changes the numbers
    stored: Run | None = None           # the run in its runs folder (None without runs_root)
    trace: list[dict] = field(default_factory=list)
    stop_reason: StopReason | None = None
    epoch: int | None = None            # the epoch being trained
    saved: int | None = None            # the epoch of the last checkpoint in the run folder
    loggers: list = field(default_factory=list)   # on_epoch callbacks (loggers.py)
    logged: int = 0                     # trace entries handed to them (or taken over)

    def hand_over(self) -> None:
        """Give the loggers the entries recorded since the last hand-over: at each checkpoint
        (without a run folder, at each epoch), so a resumed run never logs an epoch twice."""
        for entry in self.trace[self.logged:]:
            for logger in self.loggers:
                logger(entry)
        self.logged = len(self.trace)

    @property
    def run_dir(self) -> Path | None:
        return None if self.stored is None else self.stored.dir

    def record(self, epoch: int, **extra: Any) -> dict:
        """Append the epoch's trace entry; under a monitor, check the epoch (report and stop in
        the entry), its diagnose supplying the per-layer numbers too."""
        model, data, monitor = self.model, self.data, self.monitor
        if monitor is None:
            entry, stop = trace_entry(model, data, self.eval_x, self.eval_y, epoch, **extra), None
        else:
            acc = accuracy(model, data.test_x, data.test_y)
            stop = monitor.check(model, self.eval_pairs, epoch, acc, extra.get("train_loss"))
            report = monitor.last_report if monitor.due(epoch) else None
            entry = trace_entry(model, data, self.eval_x, self.eval_y, epoch, acc_eval=acc,
                                report=report, **extra)
            rec = monitor.record_for(epoch)
            if rec is not None and rec["report"] is not None:
                entry["protocol"] = copy.deepcopy(rec["report"])  # diagnose's report.to_dict()
            if stop is not None:
                entry["stop_reason"] = stop.to_dict()
                self.metadata["stop_reason"] = stop.to_dict()
        self.trace.append(entry)
        self.stop_reason = stop
        return entry

    def save(self, epoch: int) -> None:
        """Checkpoint (atomic, verified on load) and trace.json, in the run folder."""
        self.stored.save({
            "epoch": epoch, "run_key": self.key, "config": self.config.to_dict(),
            "data_fingerprint": self.data.fingerprint,
            "package_version": self.metadata["package_version"],
            "model": self.model.state_dict(), "rule": self.rule.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict() if self.sched is not None else None,
            "generators": {name: gen.get_state() for name, gen in self.gens.items()},
            "trace": self.trace, "metadata": self.metadata,
            **({"stop_reason": self.stop_reason.to_dict()} if self.stop_reason is not None
               else {}),
        }, self.metadata, self.trace)
        self.saved = epoch
        self.hand_over()


def _set_up(config: TrainConfig, data: DeviceData | None, *, runs_root: str | Path | None,
            resume_from: str | Path | None, monitor: Monitor | None) -> _Run:
    """Check the paths, load the data, and build the run as it is at epoch 0.

    The folders are checked before any data are loaded, so a bad path fails in seconds."""
    if runs_root is not None:
        ensure_writable_dir(runs_root, fix=RUNS_FIX)
    if resume_from is not None and not Path(resume_from).is_file():
        raise FileNotFoundError(f"no checkpoint at {resume_from}; check the path, or train "
                                "without resume_from")
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    if data is None:
        data = load_data(config, device)
    elif data.device != device:
        raise ValueError(f"the data are on {data.device} but the config asks for {device}; "
                         "build DeviceData with the same device")
    model, rule, opt, sched, gens = _fresh_state(config, data, device)
    metadata = run_metadata(config, rule, data, device)
    stored = None if runs_root is None else Run(runs_root, config, data)
    key = run_key_of(config, data.fingerprint) if stored is None else stored.key
    metadata["run_key"] = key
    if monitor is not None:
        monitor.reset(method_name=rule.label)
        metadata["monitor"] = monitor.settings()
    eval_pairs = data.eval_batches(config.eval_batches, config.eval_batch_size)
    return _Run(config=config, data=data, device=device, monitor=monitor,
                model=model, rule=rule, opt=opt, sched=sched, gens=gens, eval_pairs=eval_pairs,
                eval_x=torch.cat([x for x, _ in eval_pairs]),
                eval_y=torch.cat([y for _, y in eval_pairs]), metadata=metadata, key=key,
                stored=stored)


def _resume_or_start(run: _Run, resume_from: str | Path | None, *,
                     accept_stopped: bool) -> int:
    """Continue from a verified checkpoint (the one `resume_from` names, else the run folder's),
    or record epoch 0; return the last epoch done (damaged checkpoints: as `train` says)."""
    stored = run.stored
    found = resume_from is None and stored is not None and stored.checkpoint.exists()
    path, state = stored.checkpoint if found else resume_from, None
    try:
        if path is not None:
            state = stored.load() if found else verified_state(
                path, run.config, run.data.fingerprint, run.key, map_location=run.device)
            finished = ((state.get("stop_reason") is not None and accept_stopped)
                        or state["epoch"] >= run.config.epochs)
            # generator states are needed (and device-specific) only to train further
            restore_state(Path(path), state, model=run.model, rule=run.rule, optimizer=run.opt,
                          scheduler=run.sched, generators=None if finished else run.gens)
    except CorruptCheckpointError as exc:
        if not found:
            raise
        print(f"warning: {exc.problem} Moved it to {stored.move_aside()}; retraining the run "
              "from scratch.", file=sys.stderr)
        state, (run.model, run.rule, run.opt, run.sched, run.gens) = None, _fresh_state(
            run.config, run.data, run.device)
    if state is None:
        run.record(0, train_loss=None, seconds=0.0, lr=run.opt.param_groups[0]["lr"])
    else:
        own = stored is not None and Path(path).resolve() == stored.checkpoint.resolve()
        _continue_from(run, state, path, own=own, accept_stopped=accept_stopped)
    return run.trace[-1]["epoch"]


def _continue_from(run: _Run, state: dict, path: str | Path, *, own: bool,
                   accept_stopped: bool) -> None:
    """Take over the checkpoint's trace and stop (runs.taken_over: a stop the caller does not
    accept is dropped and training continues); repair the run folder's trace.json from it."""
    saved_stop = state.get("stop_reason")
    if saved_stop is not None and accept_stopped and run.monitor is not None and \
            saved_stop.get("diagnostic") not in (*run.monitor.stop_on, NONFINITE):
        # stopped by a monitor that stopped on something this one does not (e.g. (b) in paper
        # mode, for a robust-mode monitor): this caller's monitor would have trained on
        accept_stopped = False
    bad = divergence(state["trace"], saved_stop if accept_stopped else None)
    if bad is not None:  # saved as finished by an older fa-eval, or a nonfinite stop continued
        moved = f"{path}.diverged"
        raise RunDivergedError(
            f"{run_label(run.config)}: {path} holds a run that "
            f"{divergence_summary(*bad, run.config.to_dict(), run.metadata['rule']['options'])}"
            f", so it is neither reused nor trained further. {_DIVERGED_FIX} (to retrain this "
            f"config, move the checkpoint aside: mv {shlex.quote(str(path))} "
            f"{shlex.quote(moved)}).", bad[0])
    run.trace, run.stop_reason = taken_over(state, run.metadata, accept_stopped)
    run.logged = len(run.trace)   # logged when they were saved
    if run.monitor is not None:
        run.monitor.restore(run.trace)
    saved_metadata = state.get("metadata") if isinstance(state.get("metadata"), dict) else {}
    continues = state["epoch"] < run.config.epochs and run.stop_reason is None
    _note_thread_change(run.metadata, saved_metadata, state["epoch"], continues)
    if own:
        run.saved = state["epoch"]
        run.stored.repair_trace(state)


def _note_thread_change(metadata: dict, saved: dict, epoch: int, continues: bool) -> None:
    """Record (and say once) that a run resumes at another torch thread count: its numbers stay
    valid, but it is no longer bit-identical to a run trained at one thread count (CPU sums may
    run in another order). metadata["threads_changed"] keeps every change, with its epoch."""
    history = list(saved.get("threads_changed") or [])
    before, now = saved.get("threads"), metadata.get("threads")
    if continues and before is not None and now is not None and before != now \
            and metadata.get("device", "cpu").startswith("cpu"):
        history.append({"epoch": epoch, "from": before, "to": now})
        print(f"note: this run was trained with {before} torch thread(s) up to epoch {epoch} and "
              f"continues with {now}; its numbers are valid but not bit-identical to a run "
              "trained at one thread count (recorded as metadata['threads_changed'])",
              file=sys.stderr)
    if history:
        metadata["threads_changed"] = history


# Without checkpoint_every, a run checkpoints at most about once a minute: a save (16 MB at the
# paper's sizes, serialised, hashed and synced) took 50-110 ms, a tenth of a smoke epoch, and an
# interruption then costs at most a minute of training (docs/measurements.md, "Reproduction times").
CHECKPOINT_SECONDS = 60.0


def _train_epochs(run: _Run, start_epoch: int, checkpoint_every: int | None) -> None:
    """Epochs start_epoch + 1 .. config.epochs, until the monitor stops the run; checkpoint
    every `checkpoint_every` epochs (None: CHECKPOINT_SECONDS after the last), at a stop and at
    the last epoch."""
    config = run.config
    last_save = time.monotonic()
    bar = _progress(config, run.data, done_epochs=start_epoch)
    stops_on_nonfinite = run.monitor is not None and NONFINITE in run.monitor.stop_on
    run.model.train()
    try:
        for epoch in range(start_epoch + 1, config.epochs + 1):
            if run.stop_reason is not None:  # stopped at epoch 0, or a stopped run rerun
                break
            run.epoch = epoch
            entry = _train_epoch(run, epoch, bar)
            # numbers already on the host (no extra synchronisation); a monitor that stops on
            # non-finite values handles them itself (the next epoch's loss, if not this one's)
            why = (None if stops_on_nonfinite and (run.stop_reason is not None
                                                   or epoch < config.epochs)
                   else nonfinite_numbers(entry))
            if why is not None:
                raise _diverged(run, epoch, entry, why)
            if bar is not None:
                bar.set_postfix(epoch=epoch, loss=f"{entry['train_loss']:.3f}",
                                acc=f"{entry['acc_eval']:.3f}",
                                h_L=f"{entry['residual_norms'][-1]:.2g}")
            if run.run_dir is None:
                run.hand_over()
            elif (run.stop_reason is not None or epoch == config.epochs
                  or (epoch % checkpoint_every == 0 if checkpoint_every is not None
                      else time.monotonic() - last_save >= CHECKPOINT_SECONDS)):
                run.save(epoch)
                last_save = time.monotonic()
    finally:
        if bar is not None:
            bar.close()


_DIVERGED_FIX = ("Lower the lr (--lr, TrainConfig.lr) or change the rule's options "
                 "(--rule-option KEY=VALUE, TrainConfig.rule_options), then rerun")


def _diverged(run: _Run, epoch: int, entry: dict, why: str) -> RunDivergedError:
    """The error for an epoch with non-finite numbers; `diverged.json` in the run folder
    records it (the diverged epoch itself is not saved)."""
    summary = divergence_summary(epoch, why, run.config.to_dict(),
                                 run.metadata["rule"]["options"])
    if run.stored is None:
        kept = "Nothing was saved (no runs folder)."
    else:
        kept = (f"Its last checkpoint (epoch {run.saved}) stays in {run.run_dir}"
                if run.saved is not None else f"No checkpoint was saved in {run.run_dir}")
        kept += (f"; {DIVERGED_NAME} there records the failure, so no rerun or grid takes the "
                 "run for finished.")
        run.stored.mark_diverged({"reason": summary, "epoch": epoch, "entry": entry})
    return RunDivergedError(f"{run_label(run.config)}: training {summary}. {kept} "
                            f"{_DIVERGED_FIX}.", epoch)


def _train_epoch(run: _Run, epoch: int, bar) -> dict:
    """One pass over the training set (one backward and one optimizer step per batch), the
    scheduler's step, then the epoch's trace entry. train_loss is the mean CE over the epoch's
    samples at the weights each batch saw."""
    config, opt = run.config, run.opt
    lr = opt.param_groups[0]["lr"]
    t0 = time.perf_counter()
    loss_sum = torch.zeros((), device=run.device, dtype=torch.float64)
    n_seen = 0
    for x, y in run.data.train_batches(config.batch_size, run.gens["data_order"],
                                       run.gens["augment"]):
        out = train_step(run.model, run.rule, opt, x, y, config)
        loss_sum += F.cross_entropy(out.logits, y, reduction="sum").double()
        n_seen += len(y)
        if bar is not None:
            bar.update(1)
    if run.sched is not None:
        run.sched.step()
    if run.device.type == "cuda":
        torch.cuda.synchronize(run.device)
    seconds = time.perf_counter() - t0
    return run.record(epoch, train_loss=float(loss_sum) / max(n_seen, 1), seconds=seconds, lr=lr)


def _finish(run: _Run, start_epoch: int) -> TrainResult:
    """Say how the run ended, leave a checkpoint for an epochs=0 run, return the result."""
    config, trace = run.config, run.trace
    if config.progress and run.stop_reason is not None:
        print(f"{run_label(config)}: stopped at epoch {run.stop_reason.epoch} of "
              f"{config.epochs}: {run.stop_reason.message}", file=sys.stderr)
    if config.progress and _lines_only():  # headless: one line per run instead of a bar
        last = trace[-1]
        done = "reused" if last["epoch"] == start_epoch and start_epoch else "trained"
        print(f"{run_label(config)}: {done} to epoch {last['epoch']}/{config.epochs}, acc_eval "
              f"{last['acc_eval']:.3f}, {sum(e['seconds'] or 0 for e in trace):.0f} s of training",
              file=sys.stderr)
    if run.stored is not None and not run.stored.checkpoint.exists():
        run.save(start_epoch)  # an epochs=0 run (or one stopped at epoch 0): its init checkpoint
    if run.stored is not None:  # diverged before, finished now (another device, a monitor)
        run.stored.mark_diverged(None)
    run.hand_over()  # without a run folder: an epochs=0 run, or one stopped at epoch 0
    run.model.eval()
    return TrainResult(model=run.model, trace=trace, rule=run.rule, config=config,
                       data=run.data, metadata=run.metadata, run_dir=run.run_dir,
                       monitor=run.monitor, stop_reason=run.stop_reason)


PROGRESS_ENV = "FA_EVAL_PROGRESS"  # "lines": one line per run (set by reproduce for papermill)


def _lines_only() -> bool:
    """FA_EVAL_PROGRESS=lines: no progress bar, one line per run (papermill's logs)."""
    return os.environ.get(PROGRESS_ENV) == "lines"


def _progress(config: TrainConfig, data: DeviceData, done_epochs: int = 0):
    """A tqdm bar over the run's steps, or None (progress off, or one line per run)."""
    if not config.progress or _lines_only():
        return None
    from tqdm.auto import tqdm
    per_epoch = data.steps_per_epoch(config.batch_size)
    return tqdm(total=config.epochs * per_epoch, initial=done_epochs * per_epoch,
                desc=run_label(config), unit="step", dynamic_ncols=True,
                mininterval=1.0)
