"""The run store: a run of a runs folder on disk, with its key, state, files and lock.

    run = Run("results/runs", config, data)
    run.state, run.why        # "partial", "unfinished: checkpoint at epoch 3 of 15 in ..."
    result = run.result()     # a finished run: model and rule rebuilt, its checkpoint read once

A run's folder `<runs folder>/<run_name>/` holds `checkpoint.pt` (checkpoint.py), `trace.json`
(the same trace, readable; rewritten from the checkpoint when it disagrees), `diverged.json` when
training diverged, and `.lock`, held by the one process that trains or reuses the run. Its key
hashes what changes the numbers: the config without NON_SEMANTIC_FIELDS, the data's fingerprint
and the package version. States: missing, partial, stopped (by a monitor), failed (diverged),
finished, damaged. Not here: the file format (checkpoint.py), training (trainer.py).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .version import __version__
from .architectures import parse_architecture
from .checkpoint import (CHECKPOINT_NAME, CheckpointError, CorruptCheckpointError, check_keys,
                         load_checkpoint, restore_state, save_checkpoint)
from .config import TrainConfig, build_model, make_rule
from .data import DeviceData
from .io import ensure_writable_dir, strict_json, write_json_atomic
from .monitor import NONFINITE, Monitor, StopReason
from .rules import RULES, Rule
from .trace import upgrade, upgrade_entry
from .validation import is_finite_number

TRACE_NAME = "trace.json"
DIVERGED_NAME = "diverged.json"   # the run diverged at the epoch it names
LOCK_NAME = ".lock"
RUNS_FIX = "choose another results folder (--results-dir / --runs-root / runs_root)"
# Config fields that do not change the numbers, left out of the run key: display, the machine's
# device and thread count, and where the data live (their content is in the key as a fingerprint).
NON_SEMANTIC_FIELDS = ("progress", "device", "threads", "data_root", "download")

MISSING, PARTIAL, STOPPED, FAILED, FINISHED, DAMAGED = (
    "missing", "partial", "stopped", "failed", "finished", "damaged")


# --- A run's key, folder and label ----------------------------------------------------------------
def config_key(config: TrainConfig | dict) -> dict:
    """A config (or a checkpoint's config dict) as the run key sees it: the rule's (and a
    non-default architecture's) options with every field, defaults included. An invalid saved
    config keys on what it says (it matches no valid run)."""
    d = config.to_dict() if isinstance(config, TrainConfig) else dict(config)
    # the architecture fields came later: at their defaults they are left out, so that the
    # ResidualMLP's runs keep the keys they had (and their finished work is reused)
    arch = d.get("architecture", "resmlp")
    if arch == "resmlp" and not d.get("architecture_options"):
        d.pop("architecture", None)
        d.pop("architecture_options", None)
    else:
        with contextlib.suppress(TypeError, ValueError):
            d["architecture_options"] = dataclasses.asdict(
                parse_architecture(arch, d.get("architecture_options") or {}))
    if isinstance(config, TrainConfig):
        d["rule_options"] = dataclasses.asdict(config.options)
    elif d.get("rule") in RULES:
        with contextlib.suppress(TypeError, ValueError):
            d["rule_options"] = dataclasses.asdict(
                RULES[d["rule"]].parse_options(d.get("rule_options") or {}))
    return d


def run_key_of(config: TrainConfig | dict, data_fingerprint: str,
               package_version: str = __version__) -> str:
    """The run key: sha256 over `config_key(config)` minus NON_SEMANTIC_FIELDS, the data and the
    package version. Finished work is reused only under the same key."""
    semantic = {k: v for k, v in config_key(config).items() if k not in NON_SEMANTIC_FIELDS}
    blob = json.dumps({"config": semantic, "data": data_fingerprint, "version": package_version},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def run_name(config: TrainConfig, key: str) -> str:
    """Folder name of a run under its runs folder: readable prefix + the first 12 hex of its key."""
    frozen = "-frozen" if config.freeze_blocks else ""
    arch = "" if config.architecture == "resmlp" else f"{config.architecture}-"
    return f"{arch}{config.rule}{frozen}-s{config.seed}-{key[:12]}"


def run_label(config: TrainConfig) -> str:
    """How progress lines and errors name a run: "dfa seed 42 (vit, frozen blocks) λ=0.01"."""
    parts = ([config.architecture] if config.architecture != "resmlp" else []) \
        + (["no terminal LN"] if not config.terminal_ln else []) \
        + (["no residual"] if not config.residual else []) \
        + (["frozen blocks"] if config.freeze_blocks else [])
    return (f"{config.rule} seed {config.seed}" + (f" ({', '.join(parts)})" if parts else "")
            + (f" λ={config.penalty_lambda:g}" if config.penalty_lambda else ""))


def config_differences(saved: dict, current: dict) -> list[str]:
    """Human-readable list of the semantic fields where two config dicts differ."""
    keys = sorted((set(saved) | set(current)) - set(NON_SEMANTIC_FIELDS))
    return [f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}"
            for k in keys if saved.get(k) != current.get(k)]


def nonfinite_numbers(entry: dict) -> str | None:
    """What is non-finite (null in JSON) among a trained epoch's train loss and per-layer
    numbers, in words, or None. A non-finite median norm means non-finite weights: the loss
    of an epoch is summed before each step, so a step that breaks the weights shows there first."""
    why, entry = [], upgrade_entry(entry)
    if not is_finite_number(loss := entry.get("train_loss")):
        why.append(f"train loss {float('nan') if loss is None else loss}")
    for label, key in (("median ||h_l||", "residual_norms"), ("median ||g_l||", "bp_grad_norms")):
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


def divergence_summary(epoch: int, why: str, config: dict, rule_options: dict) -> str:
    opts = ", ".join(f"{k}={v!r}" for k, v in rule_options.items())
    return (f"diverged at epoch {epoch} ({why}; rule {config.get('rule')!r}"
            + (f" with {opts}" if opts else "") + f", lr {config.get('lr')})")


def _failed_by_trace(state: dict) -> str | None:
    """Why a checkpoint an older fa-eval saved as finished is a diverged run, or None."""
    if not isinstance(state.get("trace"), list):
        return None
    bad = divergence(state["trace"], state.get("stop_reason"))
    if bad is None:
        return None
    config = state.get("config") if isinstance(state.get("config"), dict) else {}
    rule = (state.get("metadata") or {}).get("rule") or {}
    return divergence_summary(*bad, config, rule.get("options") or config.get("rule_options")
                              or {})


def verified_state(path: str | Path, config: TrainConfig, data_fingerprint: str, key: str, *,
                   found: bool = False, map_location: Any = "cpu") -> dict:
    """The checkpoint at `path`, verified, of this run (its key recomputed from its own config,
    data and version) and complete; else CheckpointError. `found`: it was found in the run's
    folder rather than named by the caller, so the fix for another run's is to move it aside."""
    state = load_checkpoint(path, map_location=map_location)
    saved_config = state.get("config")
    if isinstance(saved_config, dict) and "data_fingerprint" in state and "package_version" in state:
        saved_key = run_key_of(saved_config, state["data_fingerprint"], state["package_version"])
    else:
        saved_key = state.get("run_key")
    if saved_key != key:
        diffs = config_differences(config_key(saved_config) if isinstance(saved_config, dict)
                                   else {}, config_key(config))
        if state.get("data_fingerprint") != data_fingerprint:
            diffs.append("the data differ (fingerprint)")
        if state.get("package_version") != __version__:
            diffs.append(f"package version: checkpoint {state.get('package_version')!r} vs "
                         f"now {__version__!r}")
        fix = (f". It sits in this run's folder (copied or moved there?): move it aside (mv "
               f"{shlex.quote(str(path))} {shlex.quote(str(path) + '.other-run')}) and rerun to "
               "train this run afresh" if found else
               ". Use the matching config, or start afresh without resume_from")
        raise CheckpointError(
            f"{path} belongs to another run, so it cannot be resumed with this config: "
            + "; ".join(diffs or ["run keys differ"]) + fix + ".")
    check_keys(Path(path), state, ("epoch", "trace", "model", "rule", "optimizer", "generators")
               + (("scheduler",) if config.schedule == "cosine" else ()))
    state["trace"] = upgrade(state["trace"])  # a trace of format 1 read as format 2
    return state


def taken_over(state: dict, metadata: dict, accept_stopped: bool
               ) -> tuple[list[dict], StopReason | None]:
    """The trace and stop a run goes on with from its verified `state`, recorded in `metadata`:
    a caller that does not accept a monitor's stop drops it (metadata["continued_after_stop"])."""
    trace = [dict(e) for e in state["trace"]]
    saved = state["metadata"] if isinstance(state.get("metadata"), dict) else {}
    metadata.pop("stop_reason", None)
    metadata["resumed_from_epoch"] = state["epoch"]
    if "continued_after_stop" in saved:
        metadata["continued_after_stop"] = saved["continued_after_stop"]
    if (stop := state.get("stop_reason")) is not None and not accept_stopped:
        metadata["continued_after_stop"] = stop
        for e in trace:
            e.pop("stop_reason", None)
    elif stop is not None:
        reason = StopReason.from_dict(stop)
        metadata["stop_reason"] = reason.to_dict()
        return trace, reason
    return trace, None


@dataclass(eq=False)
class TrainResult:
    """What `train` returns, and what a reader gets from a finished run: the trained model (eval
    mode), its trace, the rule (the state Γ needs), metadata, run_dir and stop_reason. It
    unpacks as `model, trace = train(...)`."""

    model: torch.nn.Module = field(repr=False)
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


# --- The store and its runs -----------------------------------------------------------------------
def rebuild(path: str | Path, state: dict, config: TrainConfig, data: DeviceData, *,
            with_rule: bool = True) -> tuple[torch.nn.Module, Rule | None]:
    """The config's model (and rule) on the data's device, in eval mode, loaded from the
    checkpoint `state` read from `path` (restore_state checks every tensor first)."""
    model = build_model(config, data).to(data.device)
    rule = make_rule(config, model).to(data.device) if with_rule else None
    restore_state(Path(path), state, model=model, rule=rule)
    model.eval()
    return model, rule


class Run:
    """The run of `config` on `data` in the runs folder `root`: its files, state and result. Its
    checkpoint is read once; a finished run's model and rule are kept until this object writes
    or moves a file."""

    def __init__(self, root: str | Path, config: TrainConfig, data: DeviceData):
        self.config, self.data = config, data
        self.key = run_key_of(config, data.fingerprint)
        self.dir = Path(root) / run_name(config, self.key)
        self.checkpoint = self.dir / CHECKPOINT_NAME
        self.label = run_label(config)
        self.forget()

    def forget(self) -> None:
        """Drop what was read: the next look reads the files again."""
        self._status: tuple[str, str] | None = None
        self._finished: tuple[torch.nn.Module, Rule, dict] | None = None

    # -- the files ------------------------------------------------------------------------------
    def lock(self):
        """Create the run's folder (checked writable) and hold its lock (`run_lock`)."""
        ensure_writable_dir(self.dir, fix=RUNS_FIX)
        return run_lock(self.dir, lambda path: print(
            f"{self.label}: waiting for another process on this run (it holds {path}); the run "
            "is reused or resumed once it is done", file=sys.stderr, flush=True))

    def load(self) -> dict:
        """The run's checkpoint, verified (`verified_state`), on the data's device."""
        return verified_state(self.checkpoint, self.config, self.data.fingerprint, self.key,
                              found=True, map_location=self.data.device)

    def save(self, state: dict[str, Any], metadata: dict, trace: list[dict]) -> None:
        """Write the checkpoint, then trace.json, each atomically."""
        self.forget()
        save_checkpoint(self.checkpoint, state)
        write_json_atomic(self.dir / TRACE_NAME, {"metadata": metadata, "trace": trace},
                          fix=RUNS_FIX)

    def move_aside(self) -> Path:
        """Rename a damaged checkpoint to `checkpoint.pt.corrupt` (`.corrupt-2`, ... if taken):
        nothing is deleted."""
        self.forget()
        dest, n = self.checkpoint.with_name(CHECKPOINT_NAME + ".corrupt"), 2
        while os.path.lexists(dest):
            dest, n = self.checkpoint.with_name(f"{CHECKPOINT_NAME}.corrupt-{n}"), n + 1
        os.replace(self.checkpoint, dest)
        return dest

    def repair_trace(self, state: dict) -> None:
        """Rewrite `trace.json` from the verified checkpoint `state` when it is missing,
        unreadable or disagrees: the checkpoint is verified and the trace file is not."""
        path = self.dir / TRACE_NAME
        content = {"metadata": state.get("metadata", {}), "trace": state["trace"]}
        try:
            on_disk = json.loads(path.read_text())
            on_disk["trace"] = upgrade(on_disk["trace"])  # format 1 on disk is not a problem
            problem = None if on_disk == json.loads(strict_json(content)) \
                else "disagrees with the checkpoint's trace"
        except FileNotFoundError:
            problem = "is missing"
        except (OSError, ValueError, KeyError, TypeError):  # truncated, undecodable, not a trace
            problem = "is unreadable (truncated or corrupt)"
        if problem is not None:
            write_json_atomic(path, content, fix=RUNS_FIX)
            print(f"warning: {path} {problem}; rewrote it from the verified checkpoint "
                  f"{self.checkpoint}", file=sys.stderr)

    def mark_diverged(self, record: dict | None) -> None:
        """Record that training diverged (`diverged.json`: reason, epoch, entry), or (None) that
        the run finished since."""
        self.forget()
        if record is None:
            (self.dir / DIVERGED_NAME).unlink(missing_ok=True)
        else:
            write_json_atomic(self.dir / DIVERGED_NAME, {**record, "run_key": self.key},
                              fix=RUNS_FIX)

    # -- the state ------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        """missing, partial, stopped, failed, finished or damaged (`why` says why)."""
        return self._inspect()[0]

    @property
    def why(self) -> str:
        """Why the run is not finished work for a reader ("" when finished or stopped)."""
        return self._inspect()[1]

    def reusable(self, accept_stopped: bool = True) -> bool:
        """Finished work `train` returns without training: finished, or stopped for a caller
        that accepts stops (a stopped run at its last epoch has nothing left to train)."""
        return self.state == FINISHED or (self.state == STOPPED and (
            accept_stopped or self._finished[2]["epoch"] >= self.config.epochs))

    def _inspect(self) -> tuple[str, str]:
        if self._status is None:
            self._status = self._read()
        return self._status

    def _read(self) -> tuple[str, str]:
        try:
            record = json.loads((self.dir / DIVERGED_NAME).read_text())
            return FAILED, f"failed: {record['reason']}"
        except (OSError, ValueError, KeyError, TypeError):
            pass
        if not self.checkpoint.exists():
            return MISSING, f"no checkpoint in {self.dir}"
        try:
            state = self.load()
            epoch = state["epoch"]
            if (failed := _failed_by_trace(state)) is not None:
                return FAILED, f"failed: {failed}"
            if state.get("stop_reason") is None and epoch < self.config.epochs:
                return PARTIAL, (f"unfinished: checkpoint at epoch {epoch!r} of "
                                 f"{self.config.epochs} in {self.dir}")
            # finished work: read it now, so that no reader holds a grid's checkpoints at once
            model, rule = rebuild(self.checkpoint, state, self.config, self.data)
        except CheckpointError as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            what = "unreadable" if isinstance(exc, CorruptCheckpointError) else "unusable"
            return DAMAGED, f"{what} checkpoint {self.checkpoint} ({first[:200]})"
        self._finished = (model, rule, {k: state.get(k) for k in
                                        ("epoch", "trace", "metadata", "stop_reason")})
        return (STOPPED if state.get("stop_reason") is not None else FINISHED), ""

    # -- reading ----------------------------------------------------------------------------------
    def result(self, accept_stopped: bool = True) -> TrainResult:
        """The finished run as `train` would return it, without training: model and rule rebuilt
        from the config on the data's device and loaded from the checkpoint (read once)."""
        if not self.reusable(accept_stopped):
            raise RuntimeError(f"{self.label}: {self.why or 'stopped by a monitor'}: no "
                               "finished work to read; train it first")
        model, rule, saved = self._finished
        metadata = copy.deepcopy(saved["metadata"]) if isinstance(saved["metadata"], dict) else {}
        trace, stop = taken_over(saved, metadata, accept_stopped)
        return TrainResult(model=model, trace=trace, rule=rule, config=self.config,
                           data=self.data, metadata=metadata, run_dir=self.dir,
                           stop_reason=stop)


# --- One process at a time on a run folder --------------------------------------------------------
@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike, waiting: Callable[[Path], None] | None = None):
    """Hold the run folder's lock file `<run_dir>/.lock` exclusively (the folder must exist);
    `waiting(path)` is called once if another process holds it, then this one blocks. The
    kernel releases the lock when its holder dies. Not re-entrant."""
    path = Path(run_dir) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if not _lock(fd, block=False):
            if waiting is not None:
                waiting(path)
            _lock(fd, block=True)
        try:
            yield
        finally:
            _unlock(fd)
    finally:
        os.close(fd)


if os.name == "nt":  # pragma: no cover - exercised on Windows only
    import msvcrt
    import time

    def _lock(fd: int, block: bool) -> bool:
        while True:
            try:
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
                return True
            except OSError:
                if not block:
                    return False
                time.sleep(1.0)

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def _lock(fd: int, block: bool) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
            return True
        except BlockingIOError:
            return False

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)
