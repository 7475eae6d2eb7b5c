"""Writing results so that nothing computed is lost: atomic, readable files and clear errors.

A file is written to a temporary sibling and moved into place with os.replace, so a crash leaves
the old file or the new one, never half of one. An output that cannot be written raises
`OutputPathError` naming the path, the cause and the fix; `ensure_writable_dir` and
`check_output_file` run the same checks before a long computation starts.
Not here: the checkpoint format (checkpoint.py), tables and figures (paper/figures.py).
"""
from __future__ import annotations

import errno
import json
import math
import os
import secrets
from pathlib import Path
from typing import Any

OUTPUT_FIX = "choose another results folder (--results-dir / runs_root)"


class OutputPathError(OSError):
    """An output file or folder that cannot be written where asked; the message says why and what
    to do. `path` is the destination, `cause` the reason in words."""

    def __init__(self, message: str, path: Path | None = None, cause: str = "",
                 errno_: int | None = None):
        super().__init__(message)
        self.path, self.cause = path, cause
        self.errno = errno_


def _strict(obj: Any) -> Any:
    """Replace non-finite floats by None so that the JSON is strict (RFC 8259 has no NaN)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    return obj


def _cause(target: Path, exc: OSError | None, *, target_is_dir: bool = False) -> str:
    """Why `target` (a file, or a folder when `target_is_dir`) cannot be written, in words."""
    folder = target if target_is_dir else target.parent
    for p in (folder, *folder.parents):
        if p.is_dir():
            existing = p
            break
        if os.path.lexists(p):
            return f"{p} is a file, not a folder"
    else:
        existing = None
    if not target_is_dir and target.is_dir():
        return f"{target} is a folder, not a file"
    code = getattr(exc, "errno", None)
    if code == errno.EROFS:
        return f"{existing or folder} is on a read-only file system"
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return f"no space left (or quota exceeded) on the device holding {existing or folder}"
    if code in (errno.EACCES, errno.EPERM) or (
            existing is not None and not os.access(existing, os.W_OK | os.X_OK)):
        return f"no write permission on {existing or folder}"
    if exc is not None:
        return f"{type(exc).__name__}: {exc}"
    return "unknown cause"


def _output_error(target: Path, exc: OSError | None, fix: str, *,
                  target_is_dir: bool = False) -> OutputPathError:
    cause = _cause(target, exc, target_is_dir=target_is_dir)
    what = "create or write to the folder" if target_is_dir else "write"
    return OutputPathError(f"cannot {what} {target}: {cause}; {fix}", target, cause,
                           getattr(exc, "errno", None))


def create_temp(folder: Path, name: str) -> tuple[int, Path]:
    """A new file `folder/.<name>.<random>.tmp` opened for writing, mode 0o666 minus the umask
    (as readable as any file `open(path, "w")` makes; `tempfile.mkstemp` would make it 0o600)."""
    flags = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
             | getattr(os, "O_CLOEXEC", 0))
    for _ in range(100):
        tmp = folder / f".{name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            if not folder.is_dir():
                raise
    raise FileExistsError(errno.EEXIST, f"no free temporary name in {folder}")


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (POSIX); best effort where folders cannot be opened."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def ensure_writable_dir(folder: str | os.PathLike, *, fix: str = OUTPUT_FIX) -> Path:
    """Create `folder` if needed and prove, with a temporary file, that files can be created in
    it (permission bits do not show ACLs or read-only mounts); returns it. Raises OutputPathError.
    """
    folder = Path(folder)
    try:
        _probe(folder)
    except OSError as exc:
        raise _output_error(folder, exc, fix, target_is_dir=True) from exc
    return folder


def check_output_file(path: str | os.PathLike, *, fix: str = OUTPUT_FIX) -> Path:
    """Refuse, before any work, an output file path that `write_bytes_atomic` could not write
    (its folder is created if needed)."""
    path = Path(path)
    if path.is_dir():
        raise _output_error(path, None, fix)
    try:
        _probe(path.parent)
    except OSError as exc:
        raise _output_error(path, exc, fix) from exc
    return path


def _probe(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = create_temp(folder, "write-check")
    os.close(fd)
    tmp.unlink()


def write_bytes_atomic(path: str | os.PathLike, payload: bytes, *, fix: str = OUTPUT_FIX) -> Path:
    """Write `payload` to `path` atomically and durably; new files get mode 0o666 & ~umask.

    Missing parent folders are created; OutputPathError when the destination cannot be written.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = create_temp(path.parent, path.name)
    except OSError as exc:
        raise _output_error(path, exc, fix) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, OutputPathError):
            raise _output_error(path, exc, fix) from exc
        raise
    _fsync_dir(path.parent)
    return path


def project_root() -> Path | None:
    """The checkout this package runs from (the nearest parent holding a pyproject.toml), or None
    for a non-editable install."""
    return next((p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file()),
                None)


def strict_json(obj: Any) -> str:
    """The text `write_json_atomic` writes: strict JSON (non-finite floats become null)."""
    return json.dumps(_strict(obj), indent=2, allow_nan=False, sort_keys=False) + "\n"


def write_json_atomic(path: str | os.PathLike, obj: Any, *, fix: str = OUTPUT_FIX) -> Path:
    """Strict JSON (non-finite floats become null), written atomically."""
    return write_bytes_atomic(path, strict_json(obj).encode(), fix=fix)
