"""The trace of a run: one entry per epoch, keyed by the report's field names (format 2).

    entry = trace_entry(model, data, eval_x, eval_y, epoch, train_loss=0.9, seconds=8.8, lr=1e-3)
    reports = entry_reports(result.trace)   # {epoch: DiagnosticReport}, how readers take numbers

An entry holds `epoch` (0: the model at init), `acc_eval` (full test split), every traced
measurement of `measures.MEASUREMENTS` on the run's fixed eval batches (`residual_norms`,
`bp_grad_norms`, `backward_gains`, `output_error_norm`, and any registered one), then
`train_loss`, `seconds`, `lr` and, under a monitor, `protocol` (the epoch's report.to_dict()) and
`stop_reason`. Null in a saved trace was non-finite when written (strict JSON).

Format 1's keys (`hidden_norms`, ...) are read into today's by `upgrade` wherever a trace
enters. Readers of per-epoch numbers go through `entry_reports`, never a key by hand.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Optional

import numpy as np
import torch

from .measures import (ACCURACIES, BUILTIN_MEASUREMENTS, MEASUREMENTS, EvalPass, accuracy,
                       layer_stats, measure)
from .report import DiagnosticReport, DiagnosticThresholds, measured_fields
from .validation import is_number, nan_if_none

TRACE_FORMAT = 2
OLD_KEYS = {"hidden_norms": "residual_norms", "bp_grad_norms_per_sample_med": "bp_grad_norms",
            "backward_gains_med": "backward_gains", "output_error_norm_med": "output_error_norm"}
TRACE_CONVENTIONS = ("residual_norms / bp_grad_norms: the protocol's medians (docs/protocol.md) on "
                     "the first eval_batches x eval_batch_size test samples; grads on the paper "
                     "scale (summed-CE backward / 128); backward_gains: median ||J_l^T u||, u the "
                     "unit output error; output_error_norm: median ||softmax - onehot||; "
                     "acc_eval on the full test split")


def upgrade_entry(entry: dict) -> dict:
    """A copy of a trace entry with format 1's keys renamed to the report's field names."""
    return {OLD_KEYS.get(k, k): v for k, v in entry.items()
            if not (k in OLD_KEYS and OLD_KEYS[k] in entry)}


def upgrade(entries) -> list[dict]:
    """A trace of any format as a list of format-2 entries (copies; the input is not changed)."""
    return [upgrade_entry(e) if isinstance(e, dict) else e for e in entries]


def trace_entry(model, data, eval_x: torch.Tensor, eval_y: torch.Tensor, epoch: int, *,
                acc_eval: Optional[float] = None, report: Optional[DiagnosticReport] = None,
                **extra: Any) -> dict:
    """One epoch's entry: accuracy on the full test split and every traced measurement on the
    eval batches, taken from `report` (the monitor's, on the same batches) when given.
    """
    head = None
    if report is not None:
        values = {name: report.measured(name) for name, m in MEASUREMENTS.items() if m.traced}
        values = {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in values.items()}
    else:
        stats = layer_stats(model, eval_x, eval_y)
        values = measure(EvalPass(stats, eval_y), traced_only=True)
        head = stats.logits if _test_prefix(model, data, eval_x, eval_y) else None
    if acc_eval is None:  # the eval batches' logits count for the test split's first rows
        acc_eval = accuracy(model, data.test_x, data.test_y, head_logits=head)
    return {"epoch": epoch, "acc_eval": acc_eval, **values, **extra}


def _test_prefix(model, data, eval_x: torch.Tensor, eval_y: torch.Tensor) -> bool:
    """The eval batches are the test split's first rows (the protocol's), and layer_stats
    computed their logits with the model's own parameters (fp32 or fp64, not a copy)."""
    n = len(eval_y)   # torch.equal is False for tensors of other shapes
    return (all(p.dtype in (torch.float32, torch.float64)
                for p in model.parameters() if p.is_floating_point())
            and torch.equal(eval_y, data.test_y[:n]) and torch.equal(eval_x, data.test_x[:n]))


# --- Reading a trace ------------------------------------------------------------------------------
def _check_entry(i: int, e: dict) -> dict:
    """One (upgraded) entry checked, as a shallow copy with an int epoch."""
    epoch = e["epoch"]
    if not isinstance(epoch, numbers.Integral) or isinstance(epoch, (bool, np.bool_)) \
            or epoch < 0:
        raise ValueError(f"trace entry {i}: epoch must be an integer >= 0, got {epoch!r}")
    epoch = int(epoch)
    where = f"trace entry {i} (epoch {epoch})"
    acc = e["acc_eval"]
    if acc is not None:
        if not is_number(acc):
            raise ValueError(f"{where}: acc_eval must be a number in [0, 1] (or null), got "
                             f"{acc!r}")
        if math.isfinite(float(acc)) and not 0.0 <= float(acc) <= 1.0:
            hint = (f"; it looks like a percentage: divide the trace's accuracies by 100 "
                    f"({float(acc):g} / 100 = {float(acc) / 100:g})"
                    if 1.0 < float(acc) <= 100.0 else "")
            raise ValueError(f"{where}: acc_eval {float(acc):g} is outside [0, 1]: accuracies "
                             f"in a trace are fractions{hint}")
    traced = [m for m in MEASUREMENTS.values() if m.traced]
    for field in (m.name for m in traced if m.per_layer):
        values = e.get(field)
        if values is None:
            continue
        if isinstance(values, np.ndarray) and values.ndim == 1:
            values = values.tolist()
        if not isinstance(values, (list, tuple)):
            raise ValueError(f"{where}: {field} must be a list of numbers (null for a non-finite "
                             f"one), one per layer, got {values!r:.200}")
        for l, v in enumerate(values):
            if v is not None and not is_number(v):
                raise ValueError(f"{where}: {field}[{l}] must be a number or null, got {v!r}")
    for field in ("train_loss", *(m.name for m in traced if not m.per_layer)):
        v = e.get(field)
        if v is not None and not is_number(v):
            raise ValueError(f"{where}: {field} must be a number or null, got {v!r}")
    return {**e, "epoch": epoch}


def read_trace(trace) -> list[dict]:
    """A trace's entries upgraded to format 2, checked and sorted by epoch (copies).

    `trace`: a list of entries or the file's dict. A bad entry is refused with a ValueError
    naming it."""
    if isinstance(trace, dict):
        if "trace" not in trace:
            raise ValueError("a trace file is {'metadata': ..., 'trace': [...]}; this dict has no "
                             "'trace' key")
        trace = trace["trace"]
    if not isinstance(trace, (list, tuple)) or not trace:
        raise ValueError("replay needs a non-empty list of trace entries (dicts with 'epoch' and "
                         "'acc_eval')")
    out = []
    first_index: dict[int, int] = {}
    for i, e in enumerate(trace):
        if not isinstance(e, dict) or "epoch" not in e or "acc_eval" not in e:
            raise ValueError(f"trace entry {i} must be a dict with at least 'epoch' and "
                             f"'acc_eval', got {e!r:.200}")
        e = _check_entry(i, upgrade_entry(e))
        if e["epoch"] in first_index:
            raise ValueError(
                f"trace entries {first_index[e['epoch']]} and {i} both have epoch {e['epoch']}: "
                "a run's trace has one entry per epoch. Replay one run's trace at a time (two "
                "traces joined must be split), or keep one entry per epoch")
        first_index[e["epoch"]] = i
        out.append(e)
    return sorted(out, key=lambda e: e["epoch"])


def read_entry(e: dict, thresholds: Optional[DiagnosticThresholds] = None,
               frozen_baseline_acc: Optional[float] = None
               ) -> tuple[DiagnosticReport, dict[str, bool]]:
    """The report of one checked entry (the report's own logic, with these thresholds) and which
    of the report's inputs the entry carries: traced measurements from the entry, the others
    from its `protocol` record, the frozen baseline given or recorded."""
    protocol = e.get("protocol")
    saved = DiagnosticReport.from_dict(protocol) if protocol is not None else None
    frozen = frozen_baseline_acc if frozen_baseline_acc is not None else (
        saved.frozen_baseline_acc if saved is not None else None)
    values, carried = {}, {}
    for name, m in MEASUREMENTS.items():
        v = e.get(name) if m.traced else saved.measured(name) if saved is not None else None
        carried[name] = v is not None
        if v is None and name not in BUILTIN_MEASUREMENTS:
            continue  # not taken: the report skips what needs it
        if not m.traced:
            values[name] = v if v is not None else [] if m.per_layer else None
        elif m.per_layer:
            values[name] = [nan_if_none(x) for x in ([] if v is None else list(v))]
        else:
            values[name] = None if v is None else float(v)
    carried.update(headline_acc=True, frozen_baseline_acc=frozen is not None)
    report = DiagnosticReport(
        method_name=saved.method_name if saved else "", notes=f"epoch {e['epoch']}",
        stability_layer=saved.stability_layer if saved else 0,
        headline_acc=nan_if_none(e.get("acc_eval")),
        frozen_baseline_acc=None if frozen is None else float(frozen),
        thresholds=DiagnosticThresholds() if thresholds is None else thresholds,
        input_reasons=dict(saved.input_reasons) if saved else {}, **measured_fields(values))
    return report, carried


def entry_reports(trace, thresholds: Optional[DiagnosticThresholds] = None
                  ) -> dict[int, DiagnosticReport]:
    """{epoch: the entry's report} for a trace (`read_trace`'s checks): how every reader of
    per-epoch numbers takes them, e.g. `DIAGNOSTICS["a"].value(report)` or
    `report.residual_norms[-1]`."""
    return {e["epoch"]: read_entry(e, thresholds)[0] for e in read_trace(trace)}


def missing_text(name: str) -> str:
    """Why a replay cannot read the report input `name` from a trace."""
    if name in ACCURACIES:
        return ("no acc_eval in the trace" if name == "headline_acc"
                else "no frozen_baseline_acc given or recorded")
    if not MEASUREMENTS[name].traced:
        return "no protocol records in the trace (train with a Monitor)"
    return f"no {name} in the trace" + (" (a trace from before fa-eval recorded the backward gain)"
                                        if name == "backward_gains" else "")
