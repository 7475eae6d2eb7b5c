"""Writing results so that nothing computed is lost: atomic JSON (strict: no NaN) and file moves.

A file is written to a temporary sibling and moved into place with os.replace, so a crash leaves
either the old file or the new one, never half of one. Not here: checkpoints (checkpoint.py).
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any


def _strict(obj: Any) -> Any:
    """Replace non-finite floats by None so that the JSON is strict (RFC 8259 has no NaN)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    return obj


def write_bytes_atomic(path: Path, payload: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: Path, obj: Any) -> Path:
    """Strict JSON (non-finite floats become null), written atomically."""
    text = json.dumps(_strict(obj), indent=2, allow_nan=False, sort_keys=False)
    return write_bytes_atomic(path, (text + "\n").encode())
