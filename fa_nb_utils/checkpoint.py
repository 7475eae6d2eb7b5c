"""Checkpoints: everything needed to resume a run bit-identically, stored safely.

A checkpoint is one `torch.save`d dict of tensors and plain Python values, loaded with
`torch.load(weights_only=True)` (no pickled code runs). It holds the model weights, the rule's
state (feedback matrices, auxiliary nets), optimizer and scheduler state, every random generator's
state, the config as a plain dict, the trace so far, the run metadata and a `schema_version`.
It is written atomically (temporary file + os.replace), so a run killed mid-write leaves the
previous checkpoint intact. Not here: the training loop (train.py).
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import torch

from .io import write_bytes_atomic

CHECKPOINT_FORMAT = "fa-eval-checkpoint"
SCHEMA_VERSION = 1
# Config fields that do not change the numbers, left out of the run key.
NON_SEMANTIC_FIELDS = ("progress",)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: foreign, corrupt, truncated, newer, or of another run."""


def run_key(config_dict: dict, data_fingerprint: str, package_version: str) -> str:
    """sha256 over the config (minus display-only fields), the data and the package version.

    Finished work is reused only under the same key, so a changed config, changed data or a new
    package version recomputes instead of reusing a stale result.
    """
    semantic = {k: v for k, v in config_dict.items() if k not in NON_SEMANTIC_FIELDS}
    blob = json.dumps({"config": semantic, "data": data_fingerprint, "version": package_version},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def save_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    """Write `state` (tensors and plain values only) atomically, stamped with format and schema."""
    payload = {"format": CHECKPOINT_FORMAT, "schema_version": SCHEMA_VERSION, **state}
    buf = io.BytesIO()
    torch.save(payload, buf)
    return write_bytes_atomic(Path(path), buf.getvalue())


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely, with a clear error for anything that is not one of ours."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; train first (python -m fa_nb_utils.train "
                                "... --runs-root DIR) or check the path")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise CheckpointError(
            f"{path} could not be read as a checkpoint (truncated, corrupt, or not written by "
            f"fa-eval: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}). Delete it and rerun "
            "the training; a finished run is recomputed, an interrupted one restarts.") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an fa-eval checkpoint (no '{CHECKPOINT_FORMAT}' "
                              "format tag); pass a file written by fa_nb_utils.train")
    version = state.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise CheckpointError(f"{path} has checkpoint schema_version {version!r}, newer than this "
                              f"fa-eval understands ({SCHEMA_VERSION}); upgrade fa-eval to read it")
    return state


def config_differences(saved: dict, current: dict) -> list[str]:
    """Human-readable list of the semantic fields where two config dicts differ."""
    keys = sorted((set(saved) | set(current)) - set(NON_SEMANTIC_FIELDS))
    return [f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}"
            for k in keys if saved.get(k) != current.get(k)]
