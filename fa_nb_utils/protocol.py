"""`diagnose`: the protocol on any model that exposes its hidden states.

    report = diagnose(model, eval_batches, headline_acc=0.306, frozen_baseline_acc=0.349)
    print(report); report.verdict  # "trustworthy" or "needs walk-back: ..."

The model contract: `model(x, return_hidden=True)` returns `(logits, [h_0, ..., h_L])`, the live
hidden-state tensors of the forward graph, never modified in place; a model without it names the
modules whose outputs are those states (`hidden_modules`, hooks.py). The eval batches are read
once and measured in one pass (measures.py, docs/protocol.md for the conventions); Γ, when asked
for, uses the same samples. Bad input makes its diagnostic fire with a reason, never pass.
Command line: `python -m fa_nb_utils.diagnose --checkpoint PATH` (cli.py).
Not here: the report's logic and text (report.py, diagnostics.py), Γ (alignment.py).
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Optional

import numpy as np
import torch
import torch.nn as nn

from .alignment import gamma
from .measures import EvalPass, check_model_tensors, correct_predictions, layer_stats, measure
from .validation import (check_accuracy, degenerate_eval_reason, model_device,
                         model_float_dtype, prepare_eval_batches)
from .diagnostics import check_mode
from .hooks import with_hidden_modules
from .report import DiagnosticReport, DiagnosticThresholds, measured_fields, thresholds_or_default

MEASURED_ACC = "measured on the eval batches (no headline_acc passed)"


def diagnose(model: nn.Module, eval_batches: Iterable, headline_acc: Optional[float] = None,
             frozen_baseline_acc: Optional[float] = None, method_name: str = "", notes: str = "",
             thresholds: Optional[DiagnosticThresholds] = None,
             stability_layer: Optional[int] = None, *, rule=None,
             credit_fn: Optional[Callable] = None, mode: str = "paper",
             hidden_modules=None, logits_fn: Optional[Callable] = None) -> DiagnosticReport:
    """Run the diagnostics on `model` and return the report (verdicts, numbers, reasons).

    Args:
        model: any nn.Module with `forward(x, return_hidden=True) -> (logits, [h_0..h_L])`.
        eval_batches: >= 2 (x, y) batches (the paper: the first 10 x 128 test images), tensors
            or numpy arrays in any iterable, read exactly once.
        headline_acc: the accuracy you report (full test split), a fraction in [0, 1]. None:
            measured on the eval batches, and the report says so. NaN or inf: (d) fires.
        frozen_baseline_acc: accuracy of the same method with its blocks frozen at random init
            (3-seed mean). None: (d) is skipped, never passed. NaN or inf: (d) fires.
        stability_layer: layer for (c); default L // 2.
        rule / credit_fn: also measure Gamma (alignment.py) with a registered rule's saved state
            or your own `credit_fn(x, y) -> [a_0..a_L]`; attached as `report.alignment`.
        mode: whose verdict `report.verdict` gives: "paper" (default, (a)-(d)) or "robust"
            ((e) in place of (b)); both are in `report.verdicts`.
        hidden_modules, logits_fn: for a model without `return_hidden`: the modules whose
            outputs are h_0..h_L (names, or one regular expression), and the map from the
            model's output to its (N, C) logits (hooks.py).

    Works inside `torch.no_grad()` and `torch.inference_mode()` with the same numbers.
    """
    check_mode(mode)
    thresholds = thresholds_or_default(thresholds)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if hidden_modules is not None and rule is not None:
        raise ValueError("hidden_modules is for your own model: measure Γ with credit_fn=; a "
                         "registered rule trains this package's models (the ResidualMLP, ViT-Mini, "
                         "the CNN), which return their hidden states themselves")
    model = with_hidden_modules(model, hidden_modules, logits_fn)
    input_reasons = {}
    acc_reasons = [r for r in (check_accuracy("headline_acc", headline_acc),
                               check_accuracy("frozen_baseline_acc", frozen_baseline_acc)) if r]
    check_model_tensors(model)

    data = prepare_eval_batches(eval_batches, model_device(model), dtype=model_float_dtype(model))
    x, y, sizes = data
    stats = layer_stats(model, x, y, min_states=2)
    num_layers = len(stats.residual_norms) - 1
    if stability_layer is None:
        stability_layer = num_layers // 2
    if isinstance(stability_layer, bool) or not isinstance(stability_layer, int) \
            or not 0 <= stability_layer <= num_layers:
        raise ValueError(f"stability_layer must be an int in 0..{num_layers} (the model returned "
                         f"{num_layers + 1} hidden states), got {stability_layer!r}")

    # Non-finite entries are found through the float64 per-sample norms (an entry's NaN or inf
    # makes its norm NaN or inf), much cheaper than torch.isfinite over every tensor.
    nonfinite_h = [l for l, v in enumerate(stats.per_sample_h) if not np.isfinite(v).all()]
    if nonfinite_h:
        input_reasons["a"] = f"non-finite hidden states at layer(s) {nonfinite_h}"
    bad_rows = int((~torch.isfinite(stats.logits).all(-1)).sum())
    bad_logits = f"non-finite logits in {bad_rows} of {y.shape[0]} eval rows"
    if bad_rows:
        input_reasons["b"] = input_reasons["c"] = f"{bad_logits}: BP gradients undefined"
        input_reasons["e"] = f"{bad_logits}: the output error is undefined"
    else:
        nonfinite_g = [l for l, v in enumerate(stats.per_sample_g) if not np.isfinite(v).all()]
        if nonfinite_g:
            input_reasons["b"] = f"non-finite BP gradients at layer(s) {nonfinite_g}"
            input_reasons["e"] = f"non-finite BP gradients at layer(s) {nonfinite_g}"
            if stability_layer in nonfinite_g:
                input_reasons["c"] = f"non-finite BP gradients at layer {stability_layer}"
        nonfinite_gain = [l for l, v in enumerate(stats.per_sample_gain)
                          if not np.isfinite(v).all()]
        if nonfinite_gain:
            input_reasons["e"] = f"non-finite backward gains at layer(s) {nonfinite_gain}"
    values = measure(EvalPass(stats, y, tuple(sizes), stability_layer))  # every registered one
    stability = values["cross_batch_stability"]
    if not math.isfinite(stability) and "c" not in input_reasons:
        input_reasons["c"] = ("a batch's mean BP gradient at layer "
                              f"{stability_layer} is zero: direction undefined")
    if "c" not in input_reasons:
        degenerate = degenerate_eval_reason(data)
        if degenerate:
            input_reasons["c"] = degenerate

    source = "provided"
    if headline_acc is None:
        headline_acc = float(correct_predictions(stats.logits, y).double().mean())
        source = MEASURED_ACC
        if bad_rows:  # an accuracy with rows that predict nothing: (d) cannot pass on it
            acc_reasons.append(f"headline accuracy measured with {bad_logits} (counted as wrong)")
    if acc_reasons:
        input_reasons["d"] = ", ".join(acc_reasons)
    report = DiagnosticReport(
        method_name=method_name, notes=notes,
        stability_layer=stability_layer, headline_acc=float(headline_acc),
        frozen_baseline_acc=None if frozen_baseline_acc is None else float(frozen_baseline_acc),
        thresholds=thresholds, headline_acc_source=source, num_eval_samples=int(y.shape[0]),
        num_eval_batches=len(sizes), input_reasons=input_reasons, mode=mode,
        **measured_fields(values))
    if rule is not None or credit_fn is not None:
        report.alignment = gamma(model, data, rule=rule, credit_fn=credit_fn,
                                 stats=stats, thresholds=thresholds).to_dict()
    return report
