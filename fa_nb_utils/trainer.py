"""The trainer: the paper's recipe as defaults, one optimizer and one backward per step.

    model, trace = train(TrainConfig(rule="dfa", epochs=5, seed=42, data="synthetic"))
    python -m fa_nb_utils.train --rule dfa --epochs 5 --seed 42 --data synthetic

Recipe (SPEC §3): AdamW (lr 1e-3, weight decay 0.01), cosine schedule stepped once per epoch
(T_max = epochs), batch 128, 100 epochs, crop+flip augmentation. Randomness comes from named
generators (seeding.py): model init, data order, augmentation and feedback matrices each have
their own, so the same seed on the same device gives identical numbers, and adding a rule never
shifts another's init.

The trace has an epoch-0 entry at init, then one per epoch, with the protocol's per-layer numbers
(measures.py: the same code `diagnose` uses) on the fixed eval batches (the first 10 x 128 test
samples) and accuracy on the full test split. `train(..., monitor=Monitor())` runs the protocol
during training and stops a degenerate run with a named reason (monitor.py, SPEC §5).
Not here: the rules (rules.py), data (data.py), the monitor's logic (monitor.py).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .data import cifar, synthetic
from .data import DeviceData
from .checkpoint import (CheckpointError, CorruptCheckpointError, check_keys,
                         config_differences, load_checkpoint, restore_state, run_key,
                         save_checkpoint)
from .io import (ensure_writable_dir, strict_json,
                 write_json_atomic)
from .measures import accuracy, layer_stats
from .model import ResidualMLP
from .monitor import Monitor, StopReason
from .rules import RULES, Rule, build_rule
from .seeding import make_generator

DATA_SOURCES = ("cifar10", "synthetic")
CHECKPOINT_NAME = "checkpoint.pt"
TRACE_NAME = "trace.json"


@dataclass
class TrainConfig:
    """Every knob of a run. Defaults are the paper's main-audit recipe (SPEC §3)."""

    rule: str = "bp"
    rule_options: dict = field(default_factory=dict)
    epochs: int = 100
    seed: int = 42
    data: str = "cifar10"             # "cifar10" | "synthetic" (ignored when tensors are passed)
    data_root: str | None = None      # default: $FA_EVAL_DATA, else <project>/data
    download: bool = True             # CIFAR-10 only: fetch the archive when it is not on disk
    synthetic_preset: str = "standard"
    synthetic_n_train: int = 10_000
    synthetic_n_test: int = 2_000
    limit_train: int | None = None    # use only the first N training samples
    d_hidden: int = 256
    num_blocks: int = 4
    terminal_ln: bool = True
    residual: bool = True
    freeze_blocks: bool = False       # the frozen-random-blocks baseline (blocks + their LN fixed)
    penalty_lambda: float = 0.0       # residual penalty, mean form (SPEC §3)
    lr: float = 1e-3
    weight_decay: float = 0.01
    batch_size: int = 128
    schedule: str = "cosine"          # "cosine" | "constant"
    cosine_epochs: int | None = None  # horizon T_max of the cosine (default: epochs); a larger one
                                      # runs the first `epochs` epochs of a longer run
    augment: bool = True
    device: str = "auto"              # "auto" | "cpu" | "cuda" | "cuda:N"
    threads: int | None = None        # torch CPU threads; None leaves torch's default
    eval_batches: int = 10
    eval_batch_size: int = 128
    progress: bool = True

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Refuse a bad config with a message that names the field and the fix."""
        ints = {"epochs": 0, "seed": 0, "synthetic_n_train": 5, "synthetic_n_test": 1,
                "d_hidden": 1, "num_blocks": 0, "batch_size": 1, "eval_batches": 1,
                "eval_batch_size": 1}
        for name, lo in ints.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"TrainConfig.{name} must be an int >= {lo}, got {v!r}")
        for name in ("lr", "weight_decay", "penalty_lambda"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"TrainConfig.{name} must be a finite number >= 0, got {v!r}")
        if self.rule not in RULES:
            raise ValueError(f"unknown rule {self.rule!r}; registered rules: "
                             f"{', '.join(sorted(RULES))}")
        if not isinstance(self.rule_options, dict):
            raise TypeError(f"TrainConfig.rule_options must be a dict, got {self.rule_options!r}")
        RULES[self.rule].parse_options(self.rule_options)
        if self.data not in DATA_SOURCES:
            raise ValueError(f"TrainConfig.data must be one of {DATA_SOURCES}, got {self.data!r} "
                             "(your own tensors go through train(config, data=DeviceData.from_tensors(...)))")
        if self.synthetic_preset not in synthetic.PRESETS:
            raise ValueError(f"unknown synthetic_preset {self.synthetic_preset!r}; "
                             f"choose from {', '.join(synthetic.PRESETS)}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"TrainConfig.schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if self.cosine_epochs is not None and (not isinstance(self.cosine_epochs, int)
                                               or self.cosine_epochs < max(self.epochs, 1)):
            raise ValueError(f"TrainConfig.cosine_epochs must be None or an int >= epochs, "
                             f"got {self.cosine_epochs!r}")
        if self.limit_train is not None and (not isinstance(self.limit_train, int) or self.limit_train < 1):
            raise ValueError(f"TrainConfig.limit_train must be None or an int >= 1, got {self.limit_train!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"TrainConfig.threads must be None or an int >= 1, got {self.threads!r}")
        if self.freeze_blocks and self.num_blocks == 0:
            raise ValueError("freeze_blocks=True needs num_blocks >= 1: there are no blocks to freeze")
        resolve_device(self.device)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s): {', '.join(unknown)}")
        return cls(**d)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"TrainConfig.device {name!r} is not a device; use 'auto', 'cpu' or 'cuda'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"TrainConfig.device={name!r} but CUDA is not available; use 'auto' or 'cpu'")
    return dev


def load_data(config: TrainConfig, device: torch.device) -> DeviceData:
    """The configured dataset, read through CIFAR-10's on-disk format, resident on `device`."""
    root = Path(config.data_root).expanduser() if config.data_root else cifar.default_data_root()
    if config.data == "synthetic":
        folder = synthetic.ensure_synthetic(root, preset=config.synthetic_preset,
                                            n_train=config.synthetic_n_train,
                                            n_test=config.synthetic_n_test)
        arrays = cifar.read_cifar10_folder(folder)
    else:
        arrays = cifar.load_cifar10(root, download=config.download)
    return DeviceData.from_cifar(arrays, device=device, augment=config.augment, name=config.data,
                                 limit_train=config.limit_train)


def build_model(config: TrainConfig, data: DeviceData) -> ResidualMLP:
    model = ResidualMLP(data.input_dim, config.d_hidden, data.num_classes, config.num_blocks,
                        terminal_ln=config.terminal_ln, residual=config.residual,
                        generator=make_generator(config.seed, "init"))
    if config.freeze_blocks:
        model.blocks.requires_grad_(False)
    return model


class TrainResult(tuple):
    """`model, trace = train(...)`; also `.rule`, `.config`, `.data`, `.metadata`, `.run_dir`,
    `.monitor` and `.stop_reason` (a StopReason if a Monitor stopped the run, else None)."""

    def __new__(cls, model, trace, rule, config, data, metadata):
        obj = super().__new__(cls, (model, trace))
        obj.rule, obj.config, obj.data, obj.metadata = rule, config, data, metadata
        return obj

    @property
    def model(self) -> ResidualMLP:
        return self[0]

    @property
    def trace(self) -> list[dict]:
        return self[1]


def trace_entry(model: ResidualMLP, data: DeviceData, eval_x: torch.Tensor, eval_y: torch.Tensor,
                epoch: int, *, acc_eval: float | None = None, report=None, **extra: Any) -> dict:
    """One trace record: accuracy on the full test split + the protocol's per-layer numbers.

    `report`: this epoch's DiagnosticReport on the same eval batches (the monitor's), whose
    numbers are the same computation, so they are reused instead of a second forward/backward.
    """
    if report is not None:
        residual_norms, bp_grad_norms = list(report.residual_norms), list(report.bp_grad_norms)
    else:
        stats = layer_stats(model, eval_x, eval_y)
        residual_norms, bp_grad_norms = stats.residual_norms, stats.bp_grad_norms
    return {
        "epoch": epoch,
        "acc_eval": accuracy(model, data.test_x, data.test_y) if acc_eval is None else acc_eval,
        "hidden_norms": residual_norms,
        "bp_grad_norms_per_sample_med": bp_grad_norms,
        **extra,
    }


def run_metadata(config: TrainConfig, rule: Rule, data: DeviceData, device: torch.device) -> dict:
    from . import __version__
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
        "trace_conventions": "hidden_norms / bp_grad_norms_per_sample_med: SPEC §4 medians on the "
                             "first eval_batches x eval_batch_size test samples; grads on the "
                             "paper scale (summed-CE backward / 128); acc_eval on the full test split",
    }


def make_optimizer(model: ResidualMLP, rule: Rule, config: TrainConfig) -> torch.optim.AdamW:
    """One AdamW over every trainable parameter (model and the rule's auxiliary nets).

    Feedback matrices are buffers, so they are never optimised or decayed."""
    params = [p for p in list(model.parameters()) + list(rule.parameters()) if p.requires_grad]
    # fused: one kernel over all parameters (CPU and CUDA); 0.7 ms vs 6 ms per step on 2 CPU
    # cores for the d=256 model. Same maths as the default AdamW (tested against per-block ones).
    fused = all(p.dtype in (torch.float32, torch.float64) for p in params)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=fused)


def train_step(model: ResidualMLP, rule: Rule, opt: torch.optim.Optimizer, x: torch.Tensor,
               y: torch.Tensor, config: TrainConfig):
    """One step: the rule's loss, one backward, one optimizer step. Returns the rule's output."""
    out = rule.step_loss(model, x, y, penalty_lambda=config.penalty_lambda,
                         frozen_blocks=config.freeze_blocks)
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    opt.step()
    return out


def run_name(config: TrainConfig, key: str) -> str:
    """Folder name of a run under `runs_root`: readable prefix + the first 12 hex of its key."""
    frozen = "-frozen" if config.freeze_blocks else ""
    return f"{config.rule}{frozen}-s{config.seed}-{key[:12]}"


def _fresh_state(config: TrainConfig, data: DeviceData, device: torch.device):
    """Model, rule, optimizer, scheduler and named generators as they are at epoch 0."""
    model = build_model(config, data).to(device)
    rule = build_rule(config.rule, model, config.rule_options,
                      make_generator(config.seed, "feedback")).to(device)
    opt = make_optimizer(model, rule, config)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, T_max=config.cosine_epochs or max(config.epochs, 1))
             if config.schedule == "cosine" else None)
    gens = {"data_order": make_generator(config.seed, "data_order"),
            "augment": make_generator(config.seed, "augment", device=device)}
    return model, rule, opt, sched, gens


def _check_same_run(path: Path, state: dict, config: TrainConfig, data: DeviceData,
                    package_version: str, key: str) -> None:
    """Refuse a checkpoint of another config, data or package version.

    The checkpoint's key is recomputed from its stored config, data fingerprint and version, so a
    checkpoint written under an older definition of the key (one that still held the device or
    thread count) is judged by what changes the numbers only."""
    saved_config = state.get("config")
    if isinstance(saved_config, dict) and "data_fingerprint" in state and "package_version" in state:
        saved_key = run_key(saved_config, state["data_fingerprint"], state["package_version"])
    else:
        saved_key = state.get("run_key")
    if saved_key == key:
        return
    diffs = config_differences(saved_config if isinstance(saved_config, dict) else {},
                               config.to_dict())
    if state.get("data_fingerprint") != data.fingerprint:
        diffs.append("the data differ (fingerprint)")
    if state.get("package_version") != package_version:
        diffs.append(f"package version: checkpoint {state.get('package_version')!r} vs "
                     f"now {package_version!r}")
    raise CheckpointError(
        f"{path} belongs to another run, so it cannot be resumed with this config: "
        + "; ".join(diffs or ["run keys differ"])
        + ". Use the matching config, or start afresh without resume_from.")


def _move_aside(path: Path) -> Path:
    """Rename a damaged file to `<name>.corrupt` (`.corrupt-2`, ... if taken): nothing is deleted."""
    dest, n = path.with_name(path.name + ".corrupt"), 2
    while os.path.lexists(dest):
        dest, n = path.with_name(f"{path.name}.corrupt-{n}"), n + 1
    os.replace(path, dest)
    return dest


def _repair_trace_file(run_dir: Path, state: dict) -> None:
    """Rewrite `trace.json` from the checkpoint when it is missing, unreadable or disagrees.

    The checkpoint is verified (checkpoint.py) and the trace file is not, so the checkpoint is
    the record; the file is what it would have written."""
    path = run_dir / TRACE_NAME
    content = {"metadata": state.get("metadata", {}), "trace": state["trace"]}
    expected = json.loads(strict_json(content))
    try:
        problem = None if json.loads(path.read_text()) == expected else \
            "disagrees with the checkpoint's trace"
    except FileNotFoundError:
        problem = "is missing"
    except (OSError, ValueError):  # ValueError: truncated JSON, undecodable bytes
        problem = "is unreadable (truncated or corrupt)"
    if problem is not None:
        write_json_atomic(path, content, fix=RUNS_FIX)
        print(f"warning: {path} {problem}; rewrote it from the verified checkpoint "
              f"{run_dir / CHECKPOINT_NAME}", file=sys.stderr)


@dataclass
class _Whereabouts:
    """How far a run got, for the message printed when it is interrupted."""

    runs_root: Path | None = None
    run_dir: Path | None = None
    epoch: int | None = None          # the epoch being trained
    saved: int | None = None          # the epoch of the last checkpoint in run_dir

    def interrupted(self) -> str:
        at = (f"interrupted at epoch {self.epoch}" if self.epoch is not None
              else "interrupted before training started")
        if self.runs_root is None:
            return (f"{at}; nothing was saved (no runs folder). To make a run resumable, pass "
                    "--runs-root DIR (train(..., runs_root=DIR)) and rerun.")
        folder = self.run_dir or self.runs_root
        if self.saved is None:
            return (f"{at}; no checkpoint was written yet in {folder}; rerun the same "
                    "command/config to start the run again.")
        return (f"{at}; the last checkpoint is epoch {self.saved} in {folder}; rerun the same "
                "command/config to resume from it.")


RUNS_FIX = "choose another results folder (--results-dir / --runs-root / runs_root)"


def train(config: TrainConfig, data: DeviceData | None = None, *,
          runs_root: str | Path | None = None, resume_from: str | Path | None = None,
          checkpoint_every: int = 1, monitor: Monitor | None = None,
          accept_stopped: bool | None = None) -> TrainResult:
    """Train one model with one rule; returns (model, trace) plus the rule and metadata.

    With `runs_root`, the run lives in `runs_root/<rule>-s<seed>-<key>/` (key: a hash of what
    changes the numbers: the config without device, threads and data location, the data
    fingerprint and the package version): a checkpoint is written atomically every
    `checkpoint_every` epochs and at the end, with `trace.json` beside it. Calling again with the
    same config resumes an interrupted run at its last epoch boundary (bit-identical on the same
    device and thread count) and returns a finished one without training. The folder is checked
    to be writable before any data are loaded. Files that do not verify are never used: a damaged
    checkpoint in the run folder is reported, moved aside (`checkpoint.pt.corrupt`) and the run
    recomputed; a missing, truncated or disagreeing `trace.json` is rewritten from the verified
    checkpoint. `resume_from` names a checkpoint explicitly; one that is damaged, of another
    config or data, or does not fit the model is refused (CheckpointError).

    With a `monitor` (monitor.py) the protocol runs at epoch 0 and every `monitor.every` epochs,
    its report stored in the trace entry as "protocol". When a diagnostic in `monitor.stop_on`
    fires (or the train loss is non-finite and "nonfinite" is in it), that epoch is checkpointed,
    training stops and `result.stop_reason` names why; the reason is saved in the checkpoint and
    the trace's metadata. A rerun with a monitor returns the stopped run as finished work; a rerun
    without one asked for the full budget, so training continues from the stopped epoch to
    `config.epochs` (bit-identical to a run never stopped: the monitor uses no random numbers),
    the stop is dropped and recorded as metadata["continued_after_stop"]. `accept_stopped`
    overrides that choice: True returns a stopped run as finished work whatever the monitor
    (readers that must never train), False continues it even for a monitored caller. Without a
    monitor nothing else changes (`stop_reason` is None).

    Ctrl-C (KeyboardInterrupt) prints one line saying at which epoch the run stopped, where its
    last checkpoint is and that rerunning the same command resumes it, then propagates.
    """
    config.validate()
    if not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be an int >= 1, got {checkpoint_every!r}")
    if monitor is not None and not isinstance(monitor, Monitor):
        raise TypeError(f"monitor must be a fa_nb_utils.monitor.Monitor, got {type(monitor).__name__}")
    if accept_stopped not in (None, True, False):
        raise TypeError(f"accept_stopped must be None, True or False, got {accept_stopped!r}")
    if accept_stopped is None:
        accept_stopped = monitor is not None
    where = _Whereabouts(runs_root=None if runs_root is None else Path(runs_root))
    try:
        return _train(config, data, runs_root=runs_root, resume_from=resume_from,
                      checkpoint_every=checkpoint_every, monitor=monitor,
                      accept_stopped=accept_stopped, where=where)
    except KeyboardInterrupt:
        print(where.interrupted(), file=sys.stderr)
        raise


def _train(config: TrainConfig, data: DeviceData | None, *, runs_root: str | Path | None,
           resume_from: str | Path | None, checkpoint_every: int, monitor: Monitor | None,
           accept_stopped: bool, where: _Whereabouts) -> TrainResult:
    if runs_root is not None:  # before any data are loaded or any epoch is trained
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

    eval_pairs = data.eval_batches(config.eval_batches, config.eval_batch_size)
    eval_x = torch.cat([x for x, _ in eval_pairs])
    eval_y = torch.cat([y for _, y in eval_pairs])
    metadata = run_metadata(config, rule, data, device)
    key = run_key(config.to_dict(), data.fingerprint, metadata["package_version"])
    metadata["run_key"] = key

    stop_reason: StopReason | None = None
    if monitor is not None:
        monitor.reset(method_name=config.rule.upper())
        metadata["monitor"] = monitor.settings()

    def record(epoch: int, **extra: Any) -> tuple[dict, StopReason | None]:
        """The epoch's trace entry and, under a monitor, its check (report and stop in the entry).

        On a monitored epoch the monitor's diagnose supplies the per-layer numbers too: one
        forward/backward on the eval batches, not two."""
        if monitor is None:
            return trace_entry(model, data, eval_x, eval_y, epoch, **extra), None
        acc = accuracy(model, data.test_x, data.test_y)
        stop = monitor.check(model, eval_pairs, epoch, acc, extra.get("train_loss"))
        report = monitor.last_report if monitor.due(epoch) else None
        entry = trace_entry(model, data, eval_x, eval_y, epoch, acc_eval=acc, report=report,
                            **extra)
        rec = monitor.record_for(epoch)
        if rec is not None and rec["report"] is not None:
            entry["protocol"] = copy.deepcopy(rec["report"])  # diagnose's report.to_dict()
        if stop is not None:
            entry["stop_reason"] = stop.to_dict()
            metadata["stop_reason"] = stop.to_dict()
        return entry, stop

    run_dir = None
    found = False           # resume_from is the run folder's checkpoint, found, not asked for
    own_checkpoint = False  # resume_from is the run folder's checkpoint
    if runs_root is not None:
        run_dir = Path(runs_root) / run_name(config, key)
        ensure_writable_dir(run_dir, fix=RUNS_FIX)
        where.run_dir = run_dir
        if resume_from is None and (run_dir / CHECKPOINT_NAME).exists():
            resume_from, found = run_dir / CHECKPOINT_NAME, True
        own_checkpoint = (resume_from is not None and
                          Path(resume_from).resolve() == (run_dir / CHECKPOINT_NAME).resolve())

    state, saved_stop = None, None
    if resume_from is not None:
        try:
            state = load_checkpoint(resume_from, map_location=device)
            _check_same_run(resume_from, state, config, data, metadata["package_version"], key)
            check_keys(resume_from, state, ("epoch", "trace", "model", "rule", "optimizer",
                                            "generators")
                       + (("scheduler",) if sched is not None else ()))
            saved_stop = state.get("stop_reason")
            finished = ((saved_stop is not None and accept_stopped)
                        or state["epoch"] >= config.epochs)
            # generator states are needed (and device-specific) only to train further
            restore_state(resume_from, state, model=model, rule=rule, optimizer=opt,
                          scheduler=sched, generators=None if finished else gens)
        except CorruptCheckpointError as exc:
            if not found:
                raise
            moved = _move_aside(Path(resume_from))
            print(f"warning: {exc.problem} Moved it to {moved}; retraining the run from scratch.",
                  file=sys.stderr)
            state = None
            model, rule, opt, sched, gens = _fresh_state(config, data, device)
    if state is not None:
        trace = [dict(e) for e in state["trace"]]
        metadata["resumed_from_epoch"] = state["epoch"]
        saved_metadata = state.get("metadata") if isinstance(state.get("metadata"), dict) else {}
        if "continued_after_stop" in saved_metadata:
            metadata["continued_after_stop"] = saved_metadata["continued_after_stop"]
        if saved_stop is not None and not accept_stopped:  # the caller asked for the full budget
            metadata["continued_after_stop"] = saved_stop
            for e in trace:
                e.pop("stop_reason", None)
        elif saved_stop is not None:  # a stopped run is finished work for this caller
            stop_reason = StopReason.from_dict(saved_stop)
            metadata["stop_reason"] = stop_reason.to_dict()
        if monitor is not None:
            monitor.restore(trace)
        if own_checkpoint:
            where.saved = state["epoch"]
            _repair_trace_file(run_dir, state)
    else:
        entry, stop_reason = record(0, train_loss=None, seconds=0.0, lr=opt.param_groups[0]["lr"])
        trace = [entry]
    start_epoch = trace[-1]["epoch"]

    def save(epoch: int) -> None:
        save_checkpoint(run_dir / CHECKPOINT_NAME, {
            "epoch": epoch, "run_key": key, "config": config.to_dict(),
            "data_fingerprint": data.fingerprint, "package_version": metadata["package_version"],
            "model": model.state_dict(), "rule": rule.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict() if sched is not None else None,
            "generators": {name: gen.get_state() for name, gen in gens.items()},
            "trace": trace, "metadata": metadata,
            **({"stop_reason": stop_reason.to_dict()} if stop_reason is not None else {}),
        })
        where.saved = epoch
        write_json_atomic(run_dir / TRACE_NAME, {"metadata": metadata, "trace": trace},
                          fix=RUNS_FIX)

    bar = _progress(config, data, done_epochs=start_epoch)
    model.train()
    try:
        for epoch in range(start_epoch + 1, config.epochs + 1):
            if stop_reason is not None:  # stopped at epoch 0, or a stopped run rerun
                break
            where.epoch = epoch
            lr = opt.param_groups[0]["lr"]
            t0 = time.perf_counter()
            loss_sum = torch.zeros((), device=device, dtype=torch.float64)
            n_seen = 0
            for x, y in data.train_batches(config.batch_size, gens["data_order"], gens["augment"]):
                out = train_step(model, rule, opt, x, y, config)
                loss_sum += F.cross_entropy(out.logits, y, reduction="sum").double()
                n_seen += len(y)
                if bar is not None:
                    bar.update(1)
            if sched is not None:
                sched.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - t0
            entry, stop_reason = record(epoch, train_loss=float(loss_sum) / max(n_seen, 1),
                                        seconds=seconds, lr=lr)
            trace.append(entry)
            if bar is not None:
                bar.set_postfix(epoch=epoch, loss=f"{entry['train_loss']:.3f}",
                                acc=f"{entry['acc_eval']:.3f}",
                                h_L=f"{entry['hidden_norms'][-1]:.2g}")
            if run_dir is not None and (stop_reason is not None or epoch % checkpoint_every == 0
                                        or epoch == config.epochs):
                save(epoch)
    finally:
        if bar is not None:
            bar.close()
    if config.progress and stop_reason is not None:
        print(f"{config.rule} seed {config.seed}: stopped at epoch {stop_reason.epoch} of "
              f"{config.epochs}: {stop_reason.message}", file=sys.stderr)
    if config.progress and bar is None:  # headless (FA_EVAL_PROGRESS=lines): one line per run
        last = trace[-1]
        done = "reused" if last["epoch"] == start_epoch and start_epoch else "trained"
        print(f"{run_label(config)}: {done} to epoch {last['epoch']}/{config.epochs}, acc_eval "
              f"{last['acc_eval']:.3f}, {sum(e['seconds'] or 0 for e in trace):.0f} s of training",
              file=sys.stderr)
    if run_dir is not None and not (run_dir / CHECKPOINT_NAME).exists():
        save(start_epoch)  # an epochs=0 run (or one stopped at epoch 0) leaves its init checkpoint
    model.eval()
    result = TrainResult(model, trace, rule, config, data, metadata)
    result.run_dir = run_dir
    result.monitor = monitor
    result.stop_reason = stop_reason
    return result


PROGRESS_ENV = "FA_EVAL_PROGRESS"  # "lines": one line per run (set by reproduce for papermill)


def run_label(config: TrainConfig) -> str:
    frozen = " (frozen blocks)" if config.freeze_blocks else ""
    pen = f" λ={config.penalty_lambda:g}" if config.penalty_lambda else ""
    return f"{config.rule}{frozen}{pen} seed {config.seed}"


def _progress(config: TrainConfig, data: DeviceData, done_epochs: int = 0):
    if not config.progress or os.environ.get(PROGRESS_ENV) == "lines":
        return None
    from tqdm.auto import tqdm
    per_epoch = data.steps_per_epoch(config.batch_size)
    return tqdm(total=config.epochs * per_epoch, initial=done_epochs * per_epoch,
                desc=run_label(config), unit="step", dynamic_ncols=True,
                mininterval=1.0)
