"""`diagnose`: the protocol on any model that exposes its hidden states.

    report = diagnose(model, eval_batches, headline_acc=0.306, frozen_baseline_acc=0.349,
                      method_name="DFA")
    print(report); report.verdict  # "trustworthy" or "needs walk-back: ..."
    diagnose(..., mode="robust")   # the backward gain (e) in place of the absolute floor (b)

The model contract: `model(x, return_hidden=True)` returns `(logits, [h_0, ..., h_L])`, logits of
shape (N, C) and the live hidden-state tensors of the forward graph, (N, d) or (N, T, d), never
modified in place. A model without `return_hidden` names the modules whose outputs are those
states instead, `diagnose(model, batches, hidden_modules=["embed", "blocks.0", ...])` or a regular
expression (forward hooks, removed after each forward; hooks.py). Everything else follows the protocol's conventions (docs/protocol.md):

- eval mode; the forward/backward in the model's dtype promoted to at least fp32 (fp16/bf16
  models are evaluated on an fp32 copy); h and g cast to float64 before any norm, mean, cosine;
- eval batches (a list, a DataLoader, a generator; tensors or numpy arrays) are read exactly once
  and concatenated into one pass; Γ uses that same data, so a shuffling loader cannot pair one
  sample's credit with another sample's gradient;
- per-sample gradients from ONE backward of the summed cross-entropy (exact per sample because
  samples do not interact in eval mode: no batch norm, no cross-sample attention), then divided
  by 128 whatever the eval batch size (the paper's scale: the batch-mean CE over 128 samples);
- medians pooled over all eval samples (and positions), numpy's convention;
- (c), cross-batch direction stability, at layer L // 2 unless told otherwise, from batch-mean
  gradient directions, >= 2 batches.

The model's train/eval mode, its parameters, their requires_grad flags and their .grad fields
are left as they were found; it runs with autograd on inside `torch.no_grad()` or
`torch.inference_mode()` too, with the same numbers. A NaN or inf accuracy never reads as
trustworthy (see `diagnose`); an eval row with a non-finite logit is never a correct prediction.
Run it as a command on a checkpoint: `python -m fa_nb_utils.diagnose --checkpoint PATH`.
Not here: the report's logic and text (report.py), Gamma (alignment.py).
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Optional

import numpy as np
import torch
import torch.nn as nn

from .alignment import gamma
from .measures import EvalPass, check_model_tensors, correct_predictions, layer_stats, measure
from .validation import (EvalData, check_accuracy,  # noqa: F401 (EvalData: re-exported)
                         degenerate_eval_reason, model_device, model_float_dtype,
                         prepare_eval_batches)
from .diagnostics import check_mode
from .hooks import with_hidden_modules
from .report import DiagnosticReport, DiagnosticThresholds, measured_fields

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
        eval_batches: >= 2 (x, y) batches (the paper: the first 10 x 128 test images): a list,
            a DataLoader or a generator, of tensors or numpy arrays. Read exactly once; the same
            samples, in the same order, feed (a)-(c) and Gamma.
        headline_acc: the accuracy you report (full test split), a fraction in [0, 1]. None:
            measured on the eval batches, and the report says so (rows with a non-finite logit
            count as wrong, and (d) fires naming them). NaN or inf never passes: (d) fires with
            the reason, with or without a frozen baseline.
        frozen_baseline_acc: accuracy of the same method with its blocks frozen at random init
            (3-seed mean). None: (d) is skipped, never passed. NaN or inf: (d) fires.
        stability_layer: layer for (c); default L // 2.
        rule / credit_fn: also measure Gamma (alignment.py) with a registered rule's saved state
            or your own `credit_fn(x, y) -> [a_0..a_L]`; attached as `report.alignment`.
        mode: whose verdict `report.verdict` gives. "paper" (default): the paper's, (a)-(d),
            bit for bit. "robust": (a), (c), (d) and (e), the backward gain, in place of the
            absolute gradient floor (b), which a network that fits its data well falls under
            for want of error, not of a backward pass. Both verdicts are always computed
            (`report.verdicts`), and when (b) fires the report says which cause it was.
        hidden_modules: for a model without `return_hidden`: the names of the modules whose
            outputs are h_0..h_L, in the order the forward computes them, or one regular
            expression matched in full against `model.named_modules()` names (states taken in
            that order). Read with forward hooks that keep the live graph and are removed after
            each forward, on error too (hooks.py).
        logits_fn: with hidden_modules, maps the model's output to its (N, C) logits (default:
            the output, its first element if a tuple, or its `.logits`).

    Works inside `torch.no_grad()` and `torch.inference_mode()` with the same numbers.
    """
    check_mode(mode)
    thresholds = DiagnosticThresholds() if thresholds is None else thresholds
    if not isinstance(thresholds, DiagnosticThresholds):
        raise TypeError(f"thresholds must be a DiagnosticThresholds, got {type(thresholds).__name__}")
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

    # Non-finite entries are found through the float64 per-sample norms (a NaN or inf entry
    # makes its norm NaN or inf; squares of finite fp32/fp16/bf16 values cannot overflow
    # float64): the same answer as torch.isfinite over every tensor at ~1% of its cost (that
    # scan was ~17% of a call at d=256). Only a float64 model with entries above ~1e154 would
    # read as non-finite here, and such a layer's norm is inf, so it fires either way.
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
