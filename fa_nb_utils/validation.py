"""Shared input checks: one definition of "a finite number", of "an accuracy" and of the eval
batches, so the same input gets the same answer everywhere.

Numpy scalars count as numbers, booleans do not. `prepare_eval_batches` reads any iterable of
(x, y) pairs (tensors or numpy arrays) exactly once; `degenerate_eval_reason` says when they
cannot measure (c).
Not here: checks of a model's forward contract (measures.py).
"""
from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple, Optional

import numpy as np
import torch
import torch.nn as nn


def is_number(v: Any) -> bool:
    """A real number (Python or numpy), not a bool."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and \
        type(v).__name__ != "bool_"


def is_finite_number(v: Any) -> bool:
    """A real number (Python or numpy, not a bool) that is neither NaN nor infinite."""
    return is_number(v) and math.isfinite(float(v))


def finite_or_none(v: Any) -> Optional[float]:
    """float(v) when it is a finite number, else None (strict JSON has no NaN)."""
    return float(v) if is_finite_number(v) else None


def nan_if_none(v: Any) -> float:
    """float(v), NaN for None (a null in a saved trace or report was non-finite when written)."""
    return float("nan") if v is None else float(v)


def check_accuracy(name: str, value: Any) -> Optional[str]:
    """None if `value` is None or a fraction in [0, 1]; a reason string if it is NaN or inf (the
    caller makes its diagnostic fire with it); raises for a wrong type or a value outside [0, 1]
    (a percentage is named as such)."""
    if value is None:
        return None
    if not is_number(value):
        raise TypeError(f"{name} must be a float in [0, 1], got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        return f"{name} is {value}"
    if not 0.0 <= value <= 1.0:
        hint = (f" (it looks like a percentage: pass {value / 100:.4g})"
                if 1.0 < value <= 100.0 else "")
        raise ValueError(f"{name} must be a fraction in [0, 1], got {value}{hint}")
    return None


class EvalData(NamedTuple):
    """Eval batches read once and concatenated: inputs, integer labels, batch sizes in order.

    Passing it back (as `diagnose` does to `gamma`) uses it as it is, so an iterable of batches
    is read exactly once and every sample keeps its own label and credit.
    """
    x: torch.Tensor
    y: torch.Tensor
    sizes: list[int]


def _batch_part(v, what: str, i: int, float_dtype: torch.dtype):
    """A tensor as it is; a numpy array as a tensor: floats in `float_dtype`, integers as int64."""
    if not isinstance(v, np.ndarray):
        return v
    if v.dtype.kind not in "biuf":
        raise TypeError(f"eval batch {i}: {what} is a numpy array of dtype {v.dtype}; pass numbers "
                        "(float inputs or integer token ids, integer class labels), e.g. "
                        "np.asarray(x, dtype=np.float32) and np.asarray(y, dtype=np.int64)")
    t = torch.from_numpy(np.array(v, copy=True))  # own copy: negative strides, read-only arrays
    if t.is_floating_point():
        return t.to(float_dtype)
    return t.long() if v.dtype.kind in "iu" else t


def _is_array(v) -> bool:
    return torch.is_tensor(v) or isinstance(v, np.ndarray)


def prepare_eval_batches(eval_batches, device: torch.device,
                         dtype: Optional[torch.dtype] = None) -> EvalData:
    """Read the eval batches once, validate them and concatenate them: (x, y, batch sizes).

    `eval_batches`: any iterable of (x, y) pairs of tensors or numpy arrays (floats become
    `dtype`, integers int64), or an `EvalData`, returned as it is on `device`.
    """
    if isinstance(eval_batches, EvalData):
        x, y, sizes = eval_batches
        return EvalData(x.to(device), y.to(device), list(sizes))
    float_dtype = torch.get_default_dtype() if dtype is None else dtype
    if isinstance(eval_batches, (tuple, list)) and len(eval_batches) == 2 \
            and _is_array(eval_batches[0]) and _is_array(eval_batches[1]) \
            and eval_batches[1].ndim == 1 and eval_batches[0].ndim >= 1 \
            and eval_batches[0].shape[0] == eval_batches[1].shape[0]:
        raise ValueError("eval_batches looks like one (x, y) pair; pass a list of batches, e.g. "
                         "[(x[i:i+128], y[i:i+128]) for i in range(0, 1280, 128)]")
    if isinstance(eval_batches, (torch.Tensor, np.ndarray, str, bytes)):
        raise TypeError(f"eval_batches must be an iterable of (x, y) batches, got one "
                        f"{type(eval_batches).__name__}")
    batches = list(eval_batches) if eval_batches is not None else []
    if not batches:
        raise ValueError("eval_batches is empty: pass a list of (x, y) batches (the protocol uses "
                         "the first 10 x 128 test samples, unshuffled)")
    if len(batches) < 2:
        raise ValueError("cross-batch direction stability (c) needs at least 2 eval batches (8 or more "
                         f"recommended); got {len(batches)}. Split your eval set into batches, "
                         "e.g. 10 x 128")
    xs, ys, sizes = [], [], []
    for i, b in enumerate(batches):
        if not (isinstance(b, (tuple, list)) and len(b) == 2 and _is_array(b[0])
                and _is_array(b[1])):
            raise TypeError(f"eval batch {i} must be an (x, y) pair of tensors (or numpy arrays), "
                            f"got {type(b).__name__}"
                            + (f" of {len(b)}" if isinstance(b, (tuple, list)) else ""))
        x = _batch_part(b[0], "x", i, float_dtype)
        y = _batch_part(b[1], "y", i, float_dtype)
        if x.is_meta or y.is_meta:
            raise ValueError(f"eval batch {i} is on the meta device (shapes, no data); pass real "
                             "tensors")
        if x.dim() < 1 or x.shape[0] == 0:
            raise ValueError(f"eval batch {i} is empty")
        if y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"eval batch {i}: y must have shape ({x.shape[0]},) to match x, got "
                             f"{tuple(y.shape)}")
        if y.is_floating_point() or y.dtype == torch.bool:
            raise TypeError(f"eval batch {i}: labels must be integer class indices, got {y.dtype}")
        if xs and x.shape[1:] != xs[0].shape[1:]:
            raise ValueError(f"eval batch {i} has per-sample shape {tuple(x.shape[1:])} but batch 0 "
                             f"has {tuple(xs[0].shape[1:])}; all eval batches must share it")
        xs.append(x.to(device)); ys.append(y.to(device).long()); sizes.append(int(x.shape[0]))
    with torch.inference_mode(False):  # usable by autograd even if the caller is in inference mode
        return EvalData(torch.cat(xs), torch.cat(ys), sizes)


def degenerate_eval_reason(data: EvalData) -> Optional[str]:
    """Why eval batches cannot measure (c), cross-batch direction stability, or None: every label
    of one class (every batch's mean gradient then points the same way) or two or more identical
    batches (same x and y: a batch compared with itself). Comparisons only, no model pass."""
    x, y, sizes = data
    classes = torch.unique(y)
    if classes.numel() == 1:
        return (f"all {y.shape[0]} eval labels are class {int(classes[0])}: every batch's mean "
                "BP gradient points the same way whatever the model; use eval batches with "
                "several classes (e.g. the first 10 x 128 test samples)")
    starts = np.cumsum([0] + list(sizes))
    part = lambda t, i: t[starts[i]:starts[i + 1]]
    groups, grouped = [], set()
    for i in range(len(sizes)):
        if i in grouped:
            continue
        same = [j for j in range(i + 1, len(sizes)) if j not in grouped
                and sizes[j] == sizes[i] and torch.equal(part(y, i), part(y, j))
                and torch.equal(part(x, i), part(x, j))]
        if same:
            groups.append([i] + same)
            grouped.update(same)
    if not groups:
        return None
    listed = " and ".join(" = ".join(map(str, g)) for g in groups)
    return (f"eval batches {listed} are identical (same x and y): (c) compares a batch with "
            "itself; pass distinct batches (e.g. consecutive slices of the test split)")


def model_device(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def model_float_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating parameter (torch's default dtype if none)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.get_default_dtype()
