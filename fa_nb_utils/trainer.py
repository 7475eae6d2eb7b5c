"""The trainer: the paper's recipe as defaults, one optimizer and one backward per step.

    model, trace = train(TrainConfig(rule="dfa", epochs=5, seed=42, data="synthetic"))
    python -m fa_nb_utils.train --rule dfa --epochs 5 --seed 42 --data synthetic

Recipe (the paper's, as defaults): AdamW (lr 1e-3, weight decay 0.01), cosine schedule stepped
once per epoch (T_max = epochs), batch 128, 100 epochs, crop+flip augmentation. Randomness comes
from named generators (seeding.py): model init, data order, augmentation and feedback matrices
each have their own, so the same seed on the same device gives identical numbers, and adding a
rule never shifts another's init.

The trace has an epoch-0 entry at init, then one per epoch, with the protocol's per-layer numbers
(measures.py: the same code `diagnose` uses) on the fixed eval batches (the first 10 x 128 test
samples) and accuracy on the full test split. `train(..., monitor=Monitor())` runs the protocol
during training and stops a degenerate run with a named reason (monitor.py; docs/protocol.md,
"In training: the monitor and replay"); without one, a run whose numbers turn non-finite
stops with RunDivergedError instead of being saved as finished.
Not here: the rules (rules.py), data (data/), the monitor's logic (monitor.py).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from .data import cifar, synthetic
from .data import DeviceData
from .checkpoint import (CheckpointError, CorruptCheckpointError, check_keys,
                         config_differences, load_checkpoint, restore_state, run_key, run_lock,
                         save_checkpoint)
from .io import (ensure_writable_dir, strict_json,
                 write_json_atomic)
from .architectures import (ARCHITECTURES, build_architecture, check_architecture,
                            parse_architecture)
from .measures import accuracy, layer_stats
from .model import ResidualMLP
from .monitor import NONFINITE, Monitor, StopReason
from .rules import RULES, Rule, build_rule, resolve_rule
from .seeding import make_generator
from .validation import is_finite_number

DATA_SOURCES = ("cifar10", "synthetic")
CHECKPOINT_NAME = "checkpoint.pt"
TRACE_NAME = "trace.json"
DIVERGED_NAME = "diverged.json"   # in a run folder: the run diverged at the epoch it names


class RunDivergedError(RuntimeError):
    """An epoch's train loss or per-layer numbers are non-finite (nan, inf) and no monitor
    stopped the run on them: training diverged at `epoch`. The diverged epoch is never saved,
    so no rerun or grid takes the run for finished work; the run folder keeps its last
    checkpoint and `diverged.json`, which the grid's missing-runs check reads."""

    def __init__(self, message: str, epoch: int):
        super().__init__(message)
        self.epoch = epoch


@dataclass
class TrainConfig:
    """Every knob of a run. Defaults are the paper's main-audit recipe (see the module)."""

    rule: str = "bp"                  # a registered name, or module:Class (stored as its name)
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
    architecture: str = "resmlp"      # "resmlp" | "vit" | "cnn" (architectures.py)
    architecture_options: dict = field(default_factory=dict)  # e.g. {"patch_size": 8} for "vit"
    d_hidden: int = 256
    num_blocks: int = 4
    terminal_ln: bool = True          # ResidualMLP controls: the terminal LayerNorm ...
    residual: bool = True             # ... and the residual add
    freeze_blocks: bool = False       # the frozen-random-blocks baseline (blocks + their LN fixed)
    penalty_lambda: float = 0.0       # residual penalty, mean form (docs/rules.md)
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
                "d_hidden": 1, "num_blocks": 1, "batch_size": 1, "eval_batches": 1,
                "eval_batch_size": 1}
        for name, lo in ints.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"TrainConfig.{name} must be an int >= {lo}, got {v!r}"
                                 + ("; the model needs at least one block (--num-blocks N, "
                                    "the paper's: 4)" if name == "num_blocks" else ""))
        for name in ("lr", "weight_decay", "penalty_lambda"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"TrainConfig.{name} must be a finite number >= 0, got {v!r}")
        rule = resolve_rule(self.rule)  # a name, or an import path module:Class (imported)
        self.rule = rule.name  # keyed and kept under its name, however it was named
        if not isinstance(self.rule_options, dict):
            raise TypeError(f"TrainConfig.rule_options must be a dict, got {self.rule_options!r}")
        options = rule.parse_options(self.rule_options)
        # the pairing first: fixing the architecture's options is no use if the rule cannot
        # train it (an unknown architecture is named by check_architecture)
        problem = (rule.unsupported(self.architecture, options)
                   if self.architecture in ARCHITECTURES else None)
        if problem:
            raise ValueError(f"TrainConfig: {problem}")
        try:
            check_architecture(self.architecture, self.architecture_options,
                               d_hidden=self.d_hidden, num_blocks=self.num_blocks,
                               terminal_ln=self.terminal_ln, residual=self.residual)
        except ValueError as exc:
            raise ValueError(f"TrainConfig: {exc}") from None
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
    """The configured architecture (the ResidualMLP by default) for `data`, with the run's init."""
    model = build_architecture(config.architecture, config.architecture_options,
                               sample_shape=tuple(data.train_x.shape[1:]),
                               d_hidden=config.d_hidden, num_classes=data.num_classes,
                               num_blocks=config.num_blocks, terminal_ln=config.terminal_ln,
                               residual=config.residual,
                               generator=make_generator(config.seed, "init"))
    if config.freeze_blocks:
        model.blocks.requires_grad_(False)
    return model


@dataclass(eq=False)
class TrainResult:
    """What `train` returns: the trained model (eval mode), its trace, and what made them.

    `rule` holds the state Γ needs (its feedback, auxiliary nets); `metadata` is what trace.json
    records; `run_dir` is the run folder (None without runs_root); `stop_reason` is a StopReason
    if a Monitor stopped the run, else None.

    It unpacks as `model, trace = train(...)` (`__iter__` yields those two) because that is the
    form every example and notebook has used since `train` returned a (model, trace) pair, and
    the two are what most callers want. It is not a tuple: no indexing, no length.
    """

    model: ResidualMLP = field(repr=False)
    trace: list[dict] = field(repr=False)
    rule: Rule
    config: TrainConfig = field(repr=False)
    data: DeviceData = field(repr=False)
    metadata: dict = field(repr=False)
    run_dir: Path | None = None
    monitor: Monitor | None = field(default=None, repr=False)
    stop_reason: StopReason | None = None

    def __iter__(self):
        return iter((self.model, self.trace))

    @property
    def status(self) -> str:
        """What this call did: "trained" (from epoch 0), "reused" (finished earlier) or
        "resumed at epoch k"."""
        resumed = (self.metadata or {}).get("resumed_from_epoch")
        if resumed is None:
            return "trained"
        return "reused" if resumed >= self.trace[-1]["epoch"] else f"resumed at epoch {resumed}"


def trace_entry(model: ResidualMLP, data: DeviceData, eval_x: torch.Tensor, eval_y: torch.Tensor,
                epoch: int, *, acc_eval: float | None = None, report=None, **extra: Any) -> dict:
    """One trace record: accuracy on the full test split + the protocol's per-layer numbers.

    `report`: this epoch's DiagnosticReport on the same eval batches (the monitor's), whose
    numbers are the same computation, so they are reused instead of a second forward/backward.
    """
    if report is not None:
        residual_norms, bp_grad_norms = list(report.residual_norms), list(report.bp_grad_norms)
        gains, error = list(report.backward_gains), report.output_error_norm
    else:
        stats = layer_stats(model, eval_x, eval_y)
        residual_norms, bp_grad_norms = stats.residual_norms, stats.bp_grad_norms
        gains, error = stats.backward_gains, stats.error_norm
    return {
        "epoch": epoch,
        "acc_eval": accuracy(model, data.test_x, data.test_y) if acc_eval is None else acc_eval,
        "hidden_norms": residual_norms,
        "bp_grad_norms_per_sample_med": bp_grad_norms,
        "backward_gains_med": gains,
        "output_error_norm_med": error,
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
        "trace_conventions": "hidden_norms / bp_grad_norms_per_sample_med: the protocol's medians "
                             "(docs/protocol.md) on the first eval_batches x eval_batch_size "
                             "test samples; grads on the paper scale (summed-CE backward / 128); "
                             "backward_gains_med: median ||J_l^T u||, u the unit output error; "
                             "output_error_norm_med: median ||softmax - onehot||; "
                             "acc_eval on the full test split",
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
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    opt.step()
    return out


def run_name(config: TrainConfig, key: str) -> str:
    """Folder name of a run under `runs_root`: readable prefix + the first 12 hex of its key."""
    frozen = "-frozen" if config.freeze_blocks else ""
    arch = "" if config.architecture == "resmlp" else f"{config.architecture}-"
    return f"{arch}{config.rule}{frozen}-s{config.seed}-{key[:12]}"


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


def config_key(config_dict: dict) -> dict:
    """A config dict as the run key sees it: the rule's options resolved to every field, defaults
    included, so that a run records (and is keyed on) the options it actually trained with, e.g.
    EP's beta, T and eta when none were passed."""
    d = dict(config_dict)
    # the architecture fields came later: at their defaults they are left out, so that the
    # ResidualMLP's runs keep the keys they had (and their finished work is reused)
    arch = d.get("architecture", "resmlp")
    if arch == "resmlp" and not d.get("architecture_options"):
        d.pop("architecture", None)
        d.pop("architecture_options", None)
    else:  # every option resolved, defaults included, as for the rule's options below
        try:
            d["architecture_options"] = dataclasses.asdict(
                parse_architecture(arch, d.get("architecture_options") or {}))
        except (TypeError, ValueError):
            pass  # an invalid saved config keys on what it says; it matches no valid run
    rule = d.get("rule")
    if rule in RULES:
        try:
            options = RULES[rule].parse_options(d.get("rule_options") or {})
            d["rule_options"] = dataclasses.asdict(options)
        except (TypeError, ValueError):
            pass  # an invalid saved config keys on what it says; it matches no valid run
    return d


def run_key_of(config_dict: dict, data_fingerprint: str, package_version: str) -> str:
    """The run key (checkpoint.run_key) of a config dict with its rule options resolved: the one
    definition the trainer and every reader of a results folder use."""
    return run_key(config_key(config_dict), data_fingerprint, package_version)


def _check_same_run(path: Path, state: dict, config: TrainConfig, data: DeviceData,
                    package_version: str, key: str, *, found: bool = False) -> None:
    """Refuse a checkpoint of another config, data or package version; `found`: it was found
    in the run folder rather than named by resume_from, so the fix is to move it aside.

    The checkpoint's key is recomputed from its stored config, data fingerprint and version, so a
    checkpoint written under an older definition of the key (one that still held the device or
    thread count) is judged by what changes the numbers only."""
    saved_config = state.get("config")
    if isinstance(saved_config, dict) and "data_fingerprint" in state and "package_version" in state:
        saved_key = run_key_of(saved_config, state["data_fingerprint"], state["package_version"])
    else:
        saved_key = state.get("run_key")
    if saved_key == key:
        return
    diffs = config_differences(config_key(saved_config) if isinstance(saved_config, dict)
                               else {}, config_key(config.to_dict()))
    if state.get("data_fingerprint") != data.fingerprint:
        diffs.append("the data differ (fingerprint)")
    if state.get("package_version") != package_version:
        diffs.append(f"package version: checkpoint {state.get('package_version')!r} vs "
                     f"now {package_version!r}")
    fix = (f". It sits in this run's folder (copied or moved there?): move it aside (mv "
           f"{shlex.quote(str(path))} {shlex.quote(str(path) + '.other-run')}) and rerun to "
           "train this run afresh" if found else
           ". Use the matching config, or start afresh without resume_from")
    raise CheckpointError(
        f"{path} belongs to another run, so it cannot be resumed with this config: "
        + "; ".join(diffs or ["run keys differ"]) + fix + ".")


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


def nonfinite_numbers(entry: dict) -> str | None:
    """What is non-finite (null in JSON) among a trained epoch's train loss and per-layer
    numbers, in words, or None. A non-finite median norm means non-finite weights: the loss
    of an epoch is summed before each step, so a step that breaks the weights shows there first."""
    why = []
    if not is_finite_number(loss := entry.get("train_loss")):
        why.append(f"train loss {float('nan') if loss is None else loss}")
    for label, key in (("median ||h_l||", "hidden_norms"),
                       ("median ||g_l||", "bp_grad_norms_per_sample_med")):
        bad = [l for l, v in enumerate(entry.get(key) or []) if not is_finite_number(v)]
        if bad:
            why.append(f"{label} non-finite at layer(s) {bad}")
    return "; ".join(why) or None


def divergence(trace: list[dict], stop_reason: dict | None = None) -> tuple[int, str] | None:
    """(epoch, what) of the first trained epoch of `trace` with non-finite numbers
    (`nonfinite_numbers`), or None; None too when the run's `stop_reason` is a monitor's
    "nonfinite" stop (a stopped run, finished work for callers that accept stops)."""
    if stop_reason is not None and stop_reason.get("diagnostic") == NONFINITE:
        return None
    for e in trace:
        if e.get("epoch", 0) > 0 and (why := nonfinite_numbers(e)) is not None:
            return int(e["epoch"]), why
    return None


def _divergence_summary(epoch: int, why: str, config: dict, rule_options: dict) -> str:
    opts = ", ".join(f"{k}={v!r}" for k, v in rule_options.items())
    return (f"diverged at epoch {epoch} ({why}; rule {config.get('rule')!r}"
            + (f" with {opts}" if opts else "") + f", lr {config.get('lr')})")


_DIVERGED_FIX = ("Lower the lr (--lr, TrainConfig.lr) or change the rule's options "
                 "(--rule-option KEY=VALUE, TrainConfig.rule_options), then rerun")


def failed_run(run_dir: Path, state: dict | None) -> str | None:
    """Why the run in `run_dir` (its checkpoint's `state`, None if none) failed, or None: it
    diverged, as its `diverged.json` records, or as the trace of a checkpoint an older fa-eval
    saved as finished shows. Readers list such a run as failed and never reuse it."""
    try:
        record = json.loads((Path(run_dir) / DIVERGED_NAME).read_text())
        return str(record["reason"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if not isinstance(state, dict) or not isinstance(state.get("trace"), list):
        return None
    bad = divergence(state["trace"], state.get("stop_reason"))
    if bad is None:
        return None
    config = state.get("config") if isinstance(state.get("config"), dict) else {}
    rule = (state.get("metadata") or {}).get("rule") or {}
    return _divergence_summary(*bad, config, rule.get("options") or config.get("rule_options")
                               or {})


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
    """Train one model with one rule; returns a TrainResult (`model, trace = train(...)`).

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
    config or data, or does not fit the model is refused (CheckpointError). While it finds,
    trains or reuses the run, `train` holds the run folder's lock (checkpoint.run_lock): a
    second process on the same run waits, then reuses or resumes it.

    An epoch whose train loss or per-layer numbers are non-finite raises RunDivergedError
    (unless a monitor stops on "nonfinite"): the diverged epoch is not saved, `diverged.json`
    records it, and no rerun or grid takes the run for finished work.

    With a `monitor` (monitor.py) the protocol runs at epoch 0 and every `monitor.every` epochs,
    its report stored in the trace entry as "protocol". When a diagnostic in `monitor.stop_on`
    fires (or the train loss is non-finite and "nonfinite" is in it), that epoch is checkpointed,
    training stops and `result.stop_reason` names why; the reason is saved in the checkpoint and
    the trace's metadata. A rerun with a monitor returns the stopped run as finished work; a rerun
    without one asked for the full budget, so training continues from the stopped epoch to
    `config.epochs` (bit-identical to a run never stopped: the monitor uses no random numbers),
    the stop is dropped and recorded as metadata["continued_after_stop"] (a run stopped on
    non-finite numbers cannot go on: RunDivergedError). `accept_stopped`
    overrides that choice: True returns a stopped run as finished work whatever the monitor
    (readers that must never train), False continues it even for a monitored caller. Without a
    monitor `stop_reason` is None.

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
        run = _set_up(config, data, runs_root=runs_root, resume_from=resume_from,
                      monitor=monitor, where=where)
        with _run_lock(run, runs_root):
            checkpoint = _find_run_folder(run, runs_root, resume_from)
            start_epoch = _resume_or_start(run, checkpoint, accept_stopped=accept_stopped)
            _train_epochs(run, start_epoch, checkpoint_every)
            return _finish(run, start_epoch)
    except KeyboardInterrupt:
        print(where.interrupted(), file=sys.stderr)
        raise


# ---------------------------------------------------------------------------------------------
# The steps of `train`: set up -> find the run folder -> resume or start -> epochs -> finish
# ---------------------------------------------------------------------------------------------
@dataclass(eq=False)
class _Run:
    """A run in progress: what the steps of `train` share and update."""

    config: TrainConfig
    data: DeviceData
    device: torch.device
    monitor: Monitor | None
    where: _Whereabouts
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
    run_dir: Path | None = None
    trace: list[dict] = field(default_factory=list)
    stop_reason: StopReason | None = None

    def start_afresh(self) -> None:
        """Model, rule, optimizer, scheduler and generators back to their epoch-0 state."""
        self.model, self.rule, self.opt, self.sched, self.gens = _fresh_state(
            self.config, self.data, self.device)

    def record(self, epoch: int, **extra: Any) -> dict:
        """Append the epoch's trace entry; under a monitor, check the epoch (report and stop in
        the entry, `stop_reason` set when it fires).

        On a monitored epoch the monitor's diagnose supplies the per-layer numbers too: one
        forward/backward on the eval batches, not two."""
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
        save_checkpoint(self.run_dir / CHECKPOINT_NAME, {
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
        })
        self.where.saved = epoch
        write_json_atomic(self.run_dir / TRACE_NAME,
                          {"metadata": self.metadata, "trace": self.trace}, fix=RUNS_FIX)


def _set_up(config: TrainConfig, data: DeviceData | None, *, runs_root: str | Path | None,
            resume_from: str | Path | None, monitor: Monitor | None,
            where: _Whereabouts) -> _Run:
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
    key = run_key_of(config.to_dict(), data.fingerprint, metadata["package_version"])
    metadata["run_key"] = key
    if monitor is not None:
        monitor.reset(method_name=rule.label)
        metadata["monitor"] = monitor.settings()
    eval_pairs = data.eval_batches(config.eval_batches, config.eval_batch_size)
    return _Run(config=config, data=data, device=device, monitor=monitor, where=where,
                model=model, rule=rule, opt=opt, sched=sched, gens=gens, eval_pairs=eval_pairs,
                eval_x=torch.cat([x for x, _ in eval_pairs]),
                eval_y=torch.cat([y for _, y in eval_pairs]), metadata=metadata, key=key)


class _Checkpoint(NamedTuple):
    """The checkpoint a run resumes from, and how it was chosen."""

    path: str | Path | None  # None: nothing to resume, the run starts at epoch 0
    found: bool              # the run folder's own checkpoint, found there rather than named
    own: bool                # the checkpoint is the run folder's (found, or named explicitly)


def _run_lock(run: _Run, runs_root: str | Path | None):
    """The run's folder under `runs_root` (created, checked writable) and its lock
    (checkpoint.run_lock), held from finding the checkpoint to the last save, so that a second
    process on the same run waits and then reuses (or resumes) it."""
    if runs_root is None:
        return contextlib.nullcontext()
    run.run_dir = ensure_writable_dir(Path(runs_root) / run_name(run.config, run.key),
                                      fix=RUNS_FIX)
    run.where.run_dir = run.run_dir

    def waiting(path: Path) -> None:
        print(f"{run_label(run.config)}: waiting for another process on this run (it holds "
              f"{path}); the run is reused or resumed once it is done", file=sys.stderr,
              flush=True)
    return run_lock(run.run_dir, waiting)


def _find_run_folder(run: _Run, runs_root: str | Path | None,
                     resume_from: str | Path | None) -> _Checkpoint:
    """What to resume from: the checkpoint named by `resume_from`, else the one already in the
    run folder (made by `_run_lock`), else none."""
    if runs_root is None:
        return _Checkpoint(resume_from, found=False, own=False)
    mine = run.run_dir / CHECKPOINT_NAME
    found = resume_from is None and mine.exists()
    if found:
        resume_from = mine
    own = resume_from is not None and Path(resume_from).resolve() == mine.resolve()
    return _Checkpoint(resume_from, found=found, own=own)


def _resume_or_start(run: _Run, checkpoint: _Checkpoint, *, accept_stopped: bool) -> int:
    """Continue from a verified checkpoint, or record epoch 0; return the last epoch done."""
    state = _load_verified(run, checkpoint, accept_stopped=accept_stopped)
    if state is None:
        run.record(0, train_loss=None, seconds=0.0, lr=run.opt.param_groups[0]["lr"])
    else:
        _continue_from(run, state, checkpoint.path, own=checkpoint.own,
                       accept_stopped=accept_stopped)
    return run.trace[-1]["epoch"]


def _load_verified(run: _Run, checkpoint: _Checkpoint, *, accept_stopped: bool) -> dict | None:
    """Load the checkpoint into the run's model, rule, optimizer, scheduler (and generators if
    training goes on); None if there is none to load.

    A damaged checkpoint that was found in the run folder is moved aside and the run starts
    afresh; one named by `resume_from` is refused, as is one of another run
    (CheckpointError)."""
    if checkpoint.path is None:
        return None
    path = checkpoint.path
    try:
        state = load_checkpoint(path, map_location=run.device)
        _check_same_run(path, state, run.config, run.data, run.metadata["package_version"],
                        run.key, found=checkpoint.found)
        check_keys(path, state, ("epoch", "trace", "model", "rule", "optimizer", "generators")
                   + (("scheduler",) if run.sched is not None else ()))
        finished = ((state.get("stop_reason") is not None and accept_stopped)
                    or state["epoch"] >= run.config.epochs)
        # generator states are needed (and device-specific) only to train further
        restore_state(path, state, model=run.model, rule=run.rule, optimizer=run.opt,
                      scheduler=run.sched, generators=None if finished else run.gens)
        return state
    except CorruptCheckpointError as exc:
        if not checkpoint.found:
            raise
        moved = _move_aside(Path(path))
        print(f"warning: {exc.problem} Moved it to {moved}; retraining the run from scratch.",
              file=sys.stderr)
        run.start_afresh()
        return None


def _continue_from(run: _Run, state: dict, path: str | Path, *, own: bool,
                   accept_stopped: bool) -> None:
    """Take over the checkpoint's trace and stop; repair the run folder's trace.json from it.

    A run a monitor stopped is finished work for a caller that accepts stopped runs; for one
    that asked for the full budget the stop is dropped (kept as metadata["continued_after_stop"])
    and training continues."""
    run.trace = [dict(e) for e in state["trace"]]
    metadata = run.metadata
    metadata["resumed_from_epoch"] = state["epoch"]
    saved_metadata = state.get("metadata") if isinstance(state.get("metadata"), dict) else {}
    if "continued_after_stop" in saved_metadata:
        metadata["continued_after_stop"] = saved_metadata["continued_after_stop"]
    saved_stop = state.get("stop_reason")
    if saved_stop is not None and accept_stopped and run.monitor is not None and \
            saved_stop.get("diagnostic") not in (*run.monitor.stop_on, "nonfinite"):
        # stopped by a monitor that stopped on something this one does not (e.g. (b) in paper
        # mode, for a robust-mode monitor): this caller's monitor would have trained on
        accept_stopped = False
    bad = divergence(run.trace, saved_stop if accept_stopped else None)
    if bad is not None:  # saved as finished by an older fa-eval, or a nonfinite stop continued
        moved = f"{path}.diverged"
        raise RunDivergedError(
            f"{run_label(run.config)}: {path} holds a run that "
            f"{_divergence_summary(*bad, run.config.to_dict(), run.metadata['rule']['options'])}"
            f", so it is neither reused nor trained further. {_DIVERGED_FIX} (to retrain this "
            f"config, move the checkpoint aside: mv {shlex.quote(str(path))} "
            f"{shlex.quote(moved)}).", bad[0])
    if saved_stop is not None and not accept_stopped:  # the caller asked for the full budget
        metadata["continued_after_stop"] = saved_stop
        for e in run.trace:
            e.pop("stop_reason", None)
    elif saved_stop is not None:  # a stopped run is finished work for this caller
        run.stop_reason = StopReason.from_dict(saved_stop)
        metadata["stop_reason"] = run.stop_reason.to_dict()
    if run.monitor is not None:
        run.monitor.restore(run.trace)
    continues = state["epoch"] < run.config.epochs and not (saved_stop is not None
                                                           and accept_stopped)
    _note_thread_change(metadata, saved_metadata, state["epoch"], continues)
    if own:
        run.where.saved = state["epoch"]
        _repair_trace_file(run.run_dir, state)


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


def _train_epochs(run: _Run, start_epoch: int, checkpoint_every: int) -> None:
    """Epochs start_epoch + 1 .. config.epochs, until the monitor stops the run; checkpoint
    every `checkpoint_every` epochs, at a stop and at the last epoch."""
    config = run.config
    bar = _progress(config, run.data, done_epochs=start_epoch)
    stops_on_nonfinite = run.monitor is not None and NONFINITE in run.monitor.stop_on
    run.model.train()
    try:
        for epoch in range(start_epoch + 1, config.epochs + 1):
            if run.stop_reason is not None:  # stopped at epoch 0, or a stopped run rerun
                break
            run.where.epoch = epoch
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
                                h_L=f"{entry['hidden_norms'][-1]:.2g}")
            if run.run_dir is not None and (run.stop_reason is not None
                                            or epoch % checkpoint_every == 0
                                            or epoch == config.epochs):
                run.save(epoch)
    finally:
        if bar is not None:
            bar.close()


def _diverged(run: _Run, epoch: int, entry: dict, why: str) -> RunDivergedError:
    """The error for an epoch with non-finite numbers; `diverged.json` in the run folder
    records it (the diverged epoch itself is not saved)."""
    summary = _divergence_summary(epoch, why, run.config.to_dict(),
                                  run.metadata["rule"]["options"])
    if run.run_dir is None:
        kept = "Nothing was saved (no runs folder)."
    else:
        kept = (f"Its last checkpoint (epoch {run.where.saved}) stays in {run.run_dir}"
                if run.where.saved is not None else f"No checkpoint was saved in {run.run_dir}")
        kept += (f"; {DIVERGED_NAME} there records the failure, so no rerun or grid takes the "
                 "run for finished.")
        write_json_atomic(run.run_dir / DIVERGED_NAME,
                          {"reason": summary, "epoch": epoch, "run_key": run.key,
                           "entry": entry}, fix=RUNS_FIX)
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
        print(f"{config.rule} seed {config.seed}: stopped at epoch {run.stop_reason.epoch} of "
              f"{config.epochs}: {run.stop_reason.message}", file=sys.stderr)
    if config.progress and _lines_only():  # headless: one line per run instead of a bar
        last = trace[-1]
        done = "reused" if last["epoch"] == start_epoch and start_epoch else "trained"
        print(f"{run_label(config)}: {done} to epoch {last['epoch']}/{config.epochs}, acc_eval "
              f"{last['acc_eval']:.3f}, {sum(e['seconds'] or 0 for e in trace):.0f} s of training",
              file=sys.stderr)
    if run.run_dir is not None and not (run.run_dir / CHECKPOINT_NAME).exists():
        run.save(start_epoch)  # an epochs=0 run (or one stopped at epoch 0): its init checkpoint
    if run.run_dir is not None:  # diverged before, finished now (another device, a monitor)
        (run.run_dir / DIVERGED_NAME).unlink(missing_ok=True)
    run.model.eval()
    return TrainResult(model=run.model, trace=trace, rule=run.rule, config=config,
                       data=run.data, metadata=run.metadata, run_dir=run.run_dir,
                       monitor=run.monitor, stop_reason=run.stop_reason)


PROGRESS_ENV = "FA_EVAL_PROGRESS"  # "lines": one line per run (set by reproduce for papermill)


def run_label(config: TrainConfig) -> str:
    frozen = " (frozen blocks)" if config.freeze_blocks else ""
    pen = f" λ={config.penalty_lambda:g}" if config.penalty_lambda else ""
    return f"{config.rule}{frozen}{pen} seed {config.seed}"


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
