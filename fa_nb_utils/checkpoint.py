"""The checkpoint file format: everything needed to resume a run bit-identically, stored safely and
verified.

A checkpoint holds the model, the rule's state, optimizer, scheduler and generator states, the
config, the trace and metadata: tensors and plain values only, read with
`torch.load(weights_only=True)`. Schema 2 stores the state as a `torch.save` payload together with
its sha256, checked before the payload is unpickled (torch does not check its own CRC-32s), so a
flipped bit or a partial copy is refused rather than resumed; schema-1 files are read only when
every zip member passes its CRC-32. Files are written atomically.
Not here: a run's folder, key and lock (runs.py), the training loop (trainer.py).
"""
from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from .io import write_bytes_atomic

CHECKPOINT_FORMAT = "fa-eval-checkpoint"
CHECKPOINT_NAME = "checkpoint.pt"   # its file in a run folder (runs.py)
SCHEMA_VERSION = 2

_DELETE = "Delete it (or move it aside) and retrain"
_RETRAIN = ("Delete it (or move it aside) and rerun the training: a finished run is recomputed, "
            "an interrupted one restarts")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: foreign, corrupt, truncated, newer, or of another run."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint whose bytes or contents are damaged or incomplete: it can never be used, so a
    run folder's copy is moved aside and the run recomputed. The message is `problem` + `fix`;
    `problem` alone is there for callers that apply a fix themselves."""

    def __init__(self, problem: str, fix: str = ""):
        super().__init__(f"{problem} {fix}." if fix else problem)
        self.problem, self.fix = problem, fix


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__


def save_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    """Write `state` (tensors and plain values only) atomically, with its sha256 digest."""
    inner = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "schema_version": SCHEMA_VERSION, **state}, inner)
    payload = bytearray(inner.getbuffer())
    outer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "schema_version": SCHEMA_VERSION,
                "payload_sha256": hashlib.sha256(payload).hexdigest(),
                "payload": torch.frombuffer(payload, dtype=torch.uint8)}, outer)
    return write_bytes_atomic(Path(path), outer.getvalue())


def _unreadable(path: Path, exc: BaseException) -> CorruptCheckpointError:
    return CorruptCheckpointError(
        f"{path} could not be read as a checkpoint (truncated, corrupt, or not written by "
        f"fa-eval: {_first_line(exc)}).", fix=_RETRAIN)


def _verify_crcs(path: Path) -> None:
    """Schema 1: every zip member must pass the CRC-32 that torch.save stored with it."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if not infos or all(i.CRC == 0 for i in infos if i.file_size):
                raise CorruptCheckpointError(
                    f"{path} is a schema-1 checkpoint written without CRC-32 checksums, so its "
                    "integrity cannot be verified.", fix="Retrain: delete it (or move it aside) and "
                    "rerun the training, which writes a verified checkpoint")
            bad = zf.testzip()
    except CorruptCheckpointError:
        raise
    except Exception as exc:  # BadZipFile, OSError, zlib errors on a damaged archive
        raise _unreadable(path, exc) from exc
    if bad is not None:
        raise CorruptCheckpointError(
            f"{path} is corrupt: its member {bad!r} fails its CRC-32 check (a flipped bit on disk, "
            f"a partial copy or an edit).", fix=_RETRAIN)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and verify a checkpoint; a clear CheckpointError for anything that is not one of ours
    or does not verify (CorruptCheckpointError for damaged files)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; train first (python -m fa_nb_utils.train "
                                "... --runs-root DIR) or check the path")
    if path.stat().st_size == 0:
        raise CorruptCheckpointError(f"{path} is empty (0 bytes): its write was cut off or the file "
                                     f"was truncated.", fix=_RETRAIN)
    try:
        outer = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise _unreadable(path, exc) from exc
    if not isinstance(outer, dict) or outer.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an fa-eval checkpoint (no '{CHECKPOINT_FORMAT}' "
                              "format tag); pass a file written by fa_nb_utils.train")
    version = outer.get("schema_version")
    if not isinstance(version, int) or version < 1:
        raise CorruptCheckpointError(f"{path} has no valid schema_version ({version!r}).",
                                     fix=_RETRAIN)
    if version > SCHEMA_VERSION:
        raise CheckpointError(f"{path} has checkpoint schema_version {version!r}, newer than this "
                              f"fa-eval understands ({SCHEMA_VERSION}); upgrade fa-eval to read it")
    if version == 1:
        _verify_crcs(path)
        if map_location == "cpu":
            return outer
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except Exception as exc:
            raise _unreadable(path, exc) from exc
    payload, digest = outer.get("payload"), outer.get("payload_sha256")
    if (not isinstance(payload, torch.Tensor) or payload.dtype != torch.uint8
            or payload.dim() != 1 or not isinstance(digest, str)):
        raise CorruptCheckpointError(f"{path} lacks its payload or digest.", fix=_RETRAIN)
    data = payload.contiguous().numpy()
    if hashlib.sha256(data).hexdigest() != digest:
        raise CorruptCheckpointError(
            f"{path} is corrupt: its contents do not match the sha256 digest stored with them (a "
            f"flipped bit on disk, a partial copy or an edit).", fix=_RETRAIN)
    try:
        state = torch.load(io.BytesIO(data.tobytes()), map_location=map_location,
                           weights_only=True)
    except Exception as exc:
        raise _unreadable(path, exc) from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CorruptCheckpointError(f"{path} holds a payload that is not an fa-eval state.",
                                     fix=_RETRAIN)
    return state


# --- Checking that a state fits what it is loaded into --------------------------------------------
_MISFIT_FIX = ("Use the config the checkpoint was trained with, or delete it (or move it aside) "
               "and retrain")


def check_keys(path: Path, state: Mapping[str, Any], keys: Iterable[str]) -> None:
    """Refuse a checkpoint that lacks one of `keys` (written by another trainer, or damaged)."""
    missing = [k for k in keys if k not in state]
    if missing:
        raise CorruptCheckpointError(
            f"{path} has no {', '.join(repr(k) for k in missing)} entr"
            f"{'y' if len(missing) == 1 else 'ies'}, so it cannot be resumed (written by another "
            f"or an older trainer, or damaged).", fix=_DELETE)


def _shape(x: Any) -> tuple | str:
    return tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__


def _check_module(path: Path, what: str, saved: Any, module: torch.nn.Module) -> None:
    if not isinstance(saved, Mapping):
        raise CorruptCheckpointError(f"{path}: its {what!r} entry is a {type(saved).__name__}, not "
                                     f"a state dict.", fix=_DELETE)
    expected = module.state_dict()
    missing = [k for k in expected if k not in saved]
    extra = [k for k in saved if k not in expected]
    if missing or extra:
        parts = ([f"missing {', '.join(map(repr, missing[:5]))}"] if missing else []) + \
                ([f"unexpected {', '.join(map(repr, extra[:5]))}"] if extra else [])
        raise CorruptCheckpointError(
            f"{path}: the {what} state does not match this {what} ({'; '.join(parts)}): it was "
            f"saved with another architecture or rule.", fix=_MISFIT_FIX)
    for name, want in expected.items():
        got = saved[name]
        if not isinstance(want, torch.Tensor):  # a module's extra state (e.g. a generator's)
            if type(got) is not type(want):
                raise CorruptCheckpointError(
                    f"{path}: {what} entry {name!r} is a {type(got).__name__} in the checkpoint "
                    f"but a {type(want).__name__} in this {what}.", fix=_MISFIT_FIX)
            continue
        if not isinstance(got, torch.Tensor) or got.shape != want.shape:
            raise CorruptCheckpointError(
                f"{path}: {what} parameter {name!r} has shape {_shape(got)} in the checkpoint but "
                f"{tuple(want.shape)} in this {what} (saved at another width or depth?).",
                fix=_MISFIT_FIX)


def _check_optimizer(path: Path, saved: Any, optimizer: torch.optim.Optimizer,
                     names: Mapping[int, str]) -> None:
    if (not isinstance(saved, Mapping) or not isinstance(saved.get("state"), Mapping)
            or not isinstance(saved.get("param_groups"), list)):
        raise CorruptCheckpointError(f"{path}: its optimizer entry is not an optimizer state dict.",
                                     fix=_DELETE)
    groups = optimizer.param_groups
    if len(saved["param_groups"]) != len(groups) or any(
            len(g.get("params", ())) != len(h["params"])
            for g, h in zip(saved["param_groups"], groups)):
        raise CorruptCheckpointError(
            f"{path}: the optimizer state has parameter groups of sizes "
            f"{[len(g.get('params', ())) for g in saved['param_groups']]} but this run's optimizer "
            f"has {[len(h['params']) for h in groups]}.", fix=_MISFIT_FIX)
    for g, h in zip(saved["param_groups"], groups):
        for pid, param in zip(g["params"], h["params"]):
            for slot, value in (saved["state"].get(pid) or {}).items():
                if isinstance(value, torch.Tensor) and value.dim() and value.shape != param.shape:
                    name = names.get(id(param), f"#{pid}")
                    raise CorruptCheckpointError(
                        f"{path}: optimizer state {slot!r} for parameter {name!r} has shape "
                        f"{tuple(value.shape)} in the checkpoint but {tuple(param.shape)} in this "
                        f"run.", fix=_MISFIT_FIX)


def _check_generators(path: Path, saved: Any, generators: Mapping[str, torch.Generator]) -> None:
    if not isinstance(saved, Mapping):
        raise CorruptCheckpointError(f"{path}: its generators entry is not a dict of generator "
                                     "states.", fix=_DELETE)
    missing = [n for n in generators if n not in saved]
    if missing:
        raise CorruptCheckpointError(f"{path} has no state for the random generator(s) "
                                     f"{', '.join(map(repr, missing))}.", fix=_DELETE)
    for name, gen in generators.items():
        got, want = saved[name], gen.get_state()
        if not isinstance(got, torch.Tensor) or got.dtype != torch.uint8:
            raise CorruptCheckpointError(f"{path}: the state of random generator {name!r} is not a "
                                         "byte tensor.", fix=_DELETE)
        if got.numel() != want.numel():
            raise CheckpointError(
                f"{path}: the state of random generator {name!r} has {got.numel()} bytes but this "
                f"run's {gen.device.type} generator needs {want.numel()}: the checkpoint was saved "
                "on another kind of device (cuda vs cpu) and the run cannot continue on this one "
                "bit-identically. Continue it on that kind of device (config device), or retrain "
                "it here.")


def restore_state(path: Path, state: Mapping[str, Any], *, model: torch.nn.Module,
                  rule: torch.nn.Module | None = None,
                  optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None,
                  generators: Mapping[str, torch.Generator] | None = None) -> None:
    """Load a checkpoint's state into the given objects, after checking that it fits all of them
    (entries present, tensor shapes, the generators' device kind), so a refused checkpoint leaves
    them as they were. Raises CheckpointError (CorruptCheckpointError for missing entries and
    mismatched shapes) naming `path`, the entry and the fix.
    """
    path = Path(path)
    parts = {"model": model, "rule": rule, "optimizer": optimizer, "scheduler": scheduler,
             "generators": generators}
    check_keys(path, state, [k for k, v in parts.items() if v is not None])
    _check_module(path, "model", state["model"], model)
    names = {id(p): n for n, p in model.named_parameters()}
    if rule is not None:
        _check_module(path, "rule", state["rule"], rule)
        names.update({id(p): f"rule.{n}" for n, p in rule.named_parameters()})
    if optimizer is not None:
        _check_optimizer(path, state["optimizer"], optimizer, names)
    if scheduler is not None and not isinstance(state["scheduler"], Mapping):
        raise CorruptCheckpointError(f"{path}: its scheduler entry is "
                                     f"{type(state['scheduler']).__name__}, not a scheduler state "
                                     f"(saved with another schedule?).", fix=_MISFIT_FIX)
    if generators is not None:
        _check_generators(path, state["generators"], generators)
    try:
        model.load_state_dict(state["model"])
        if rule is not None:
            rule.load_state_dict(state["rule"])
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        for name, gen in (generators or {}).items():
            gen.set_state(state["generators"][name].cpu())
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise CorruptCheckpointError(f"{path} could not be loaded into this run "
                                     f"({_first_line(exc)}).", fix=_MISFIT_FIX) from exc
