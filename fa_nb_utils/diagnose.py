"""`diagnose`: the four-part protocol on any model that exposes its hidden states.

    report = diagnose(model, eval_batches, headline_acc=0.306, frozen_baseline_acc=0.349,
                      method_name="DFA")
    print(report); report.verdict  # "trustworthy" or "needs walk-back: ..."

The model contract: `model(x, return_hidden=True)` returns `(logits, [h_0, ..., h_L])`, logits of
shape (N, C) and the live hidden-state tensors of the forward graph, (N, d) or (N, T, d), never
modified in place. Everything else follows SPEC §4 to the letter:

- eval mode; the forward/backward in the model's dtype promoted to at least fp32 (fp16/bf16
  models are evaluated on an fp32 copy); h and g cast to float64 before any norm, mean, cosine;
- eval batches with one per-sample shape are concatenated into one pass;
- per-sample gradients from ONE backward of the summed cross-entropy (exact per sample because
  samples do not interact in eval mode: no batch norm, no cross-sample attention), then divided
  by 128 whatever the eval batch size (the paper's scale: the batch-mean CE over 128 samples);
- medians pooled over all eval samples (and positions), numpy's convention;
- (c) at layer L // 2 unless told otherwise, from batch-mean gradient directions, >= 2 batches.

The model's train/eval mode, its parameters and their .grad fields are left as they were found.
Run it as a command on a checkpoint: `python -m fa_nb_utils.diagnose --checkpoint PATH`.
Not here: the report's logic and text (report.py), Gamma (alignment.py).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from .measures import cross_batch_stability, layer_stats
from .report import DiagnosticReport, DiagnosticThresholds

MEASURED_ACC = "measured on the eval batches (no headline_acc passed)"


def _check_accuracy(name: str, value) -> Optional[str]:
    """None if fine; a reason string if non-finite (the diagnostic then fires); raises if absurd."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
        raise TypeError(f"{name} must be a float in [0, 1], got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        return f"{name} is {value}"
    if not 0.0 <= value <= 1.0:
        hint = (f" (it looks like a percentage: pass {value / 100:.4g})"
                if 1.0 < value <= 100.0 else "")
        raise ValueError(f"{name} must be a fraction in [0, 1], got {value}{hint}")
    return None


def prepare_eval_batches(eval_batches, device: torch.device
                         ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Validate the eval batches and concatenate them: (x, y, batch sizes)."""
    if isinstance(eval_batches, (tuple, list)) and len(eval_batches) == 2 \
            and torch.is_tensor(eval_batches[0]) and torch.is_tensor(eval_batches[1]) \
            and eval_batches[1].dim() == 1 and eval_batches[0].shape[0] == eval_batches[1].shape[0]:
        raise ValueError("eval_batches looks like one (x, y) pair; pass a list of batches, e.g. "
                         "[(x[i:i+128], y[i:i+128]) for i in range(0, 1280, 128)]")
    batches = list(eval_batches) if eval_batches is not None else []
    if not batches:
        raise ValueError("eval_batches is empty: pass a list of (x, y) batches (the protocol uses "
                         "the first 10 x 128 test samples, unshuffled)")
    if len(batches) < 2:
        raise ValueError("cross-batch stability (c) needs at least 2 eval batches (8 or more "
                         f"recommended); got {len(batches)}. Split your eval set into batches, "
                         "e.g. 10 x 128")
    xs, ys, sizes = [], [], []
    for i, b in enumerate(batches):
        if not (isinstance(b, (tuple, list)) and len(b) == 2 and torch.is_tensor(b[0])
                and torch.is_tensor(b[1])):
            raise TypeError(f"eval batch {i} must be an (x, y) pair of tensors, got "
                            f"{type(b).__name__}")
        x, y = b
        if x.dim() < 1 or x.shape[0] == 0:
            raise ValueError(f"eval batch {i} is empty")
        if y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"eval batch {i}: y must have shape ({x.shape[0]},) to match x, got "
                             f"{tuple(y.shape)}")
        if y.is_floating_point() or y.dtype == torch.bool:
            raise TypeError(f"eval batch {i}: labels must be integer class indices, got {y.dtype}")
        if x.shape[1:] != batches[0][0].shape[1:]:
            raise ValueError(f"eval batch {i} has per-sample shape {tuple(x.shape[1:])} but batch 0 "
                             f"has {tuple(batches[0][0].shape[1:])}; all eval batches must share it")
        xs.append(x.to(device)); ys.append(y.to(device).long()); sizes.append(int(x.shape[0]))
    return torch.cat(xs), torch.cat(ys), sizes


def model_device(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def diagnose(model: nn.Module, eval_batches: Sequence, headline_acc: Optional[float] = None,
             frozen_baseline_acc: Optional[float] = None, method_name: str = "", notes: str = "",
             thresholds: Optional[DiagnosticThresholds] = None,
             stability_layer: Optional[int] = None, *, rule=None,
             credit_fn: Optional[Callable] = None) -> DiagnosticReport:
    """Run diagnostics (a)-(d) on `model` and return the report (verdict, numbers, reasons).

    Args:
        model: any nn.Module with `forward(x, return_hidden=True) -> (logits, [h_0..h_L])`.
        eval_batches: >= 2 (x, y) batches (the paper: the first 10 x 128 test images).
        headline_acc: the accuracy you report (full test split). None: measured on the eval
            batches, and the report says so.
        frozen_baseline_acc: accuracy of the same method with its blocks frozen at random init
            (3-seed mean). None: (d) is skipped, never passed.
        stability_layer: layer for (c); default L // 2.
        rule / credit_fn: also measure Gamma (alignment.py) with a registered rule's saved state
            or your own `credit_fn(x, y) -> [a_0..a_L]`; attached as `report.alignment`.
    """
    thresholds = DiagnosticThresholds() if thresholds is None else thresholds
    if not isinstance(thresholds, DiagnosticThresholds):
        raise TypeError(f"thresholds must be a DiagnosticThresholds, got {type(thresholds).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    input_reasons = {}
    reason = _check_accuracy("headline_acc", headline_acc)
    if reason:
        input_reasons["d"] = reason
    reason = _check_accuracy("frozen_baseline_acc", frozen_baseline_acc)
    if reason:
        input_reasons["d"] = reason

    x, y, sizes = prepare_eval_batches(eval_batches, model_device(model))
    stats = layer_stats(model, x, y)
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
    if not torch.isfinite(stats.logits).all():
        input_reasons["b"] = input_reasons["c"] = "non-finite logits: BP gradients undefined"
    else:
        nonfinite_g = [l for l, v in enumerate(stats.per_sample_g) if not np.isfinite(v).all()]
        if nonfinite_g:
            input_reasons["b"] = f"non-finite BP gradients at layer(s) {nonfinite_g}"
            if stability_layer in nonfinite_g:
                input_reasons["c"] = f"non-finite BP gradients at layer {stability_layer}"
    stability = cross_batch_stability(stats.grads[stability_layer], sizes)
    if not math.isfinite(stability) and "c" not in input_reasons:
        input_reasons["c"] = ("a batch's mean BP gradient at layer "
                              f"{stability_layer} is zero: direction undefined")

    source = "provided"
    if headline_acc is None:
        headline_acc = float((stats.logits.argmax(-1) == y).double().mean())
        source = MEASURED_ACC
    report = DiagnosticReport(
        method_name=method_name, notes=notes,
        residual_norms=stats.residual_norms, bp_grad_norms=stats.bp_grad_norms,
        stability_layer=stability_layer, cross_batch_stability=stability,
        headline_acc=float(headline_acc),
        frozen_baseline_acc=None if frozen_baseline_acc is None else float(frozen_baseline_acc),
        thresholds=thresholds, headline_acc_source=source, num_eval_samples=int(y.shape[0]),
        num_eval_batches=len(sizes), input_reasons=input_reasons,
    )
    if rule is not None or credit_fn is not None:
        from .alignment import gamma
        report.alignment = gamma(model, eval_batches, rule=rule, credit_fn=credit_fn,
                                 stats=stats, thresholds=thresholds).to_dict()
    return report


# ---------------------------------------------------------------------------------------------
# Command line: diagnose a saved run
# ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    from .checkpoint import load_checkpoint
    from .io import write_json_atomic
    from .train import TrainConfig, build_model, load_data, resolve_device
    from .rules import build_rule
    from .seeding import make_generator

    p = argparse.ArgumentParser(prog="python -m fa_nb_utils.diagnose",
                                description="Run the four-part protocol on a training checkpoint.")
    p.add_argument("--checkpoint", required=True, help="checkpoint.pt written by the trainer")
    p.add_argument("--data", choices=("cifar10", "synthetic"), default=None,
                   help="data source (default: the one the run trained on)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--frozen-baseline-acc", type=float, default=None)
    p.add_argument("--method-name", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-gamma", action="store_true", help="skip the Gamma alignment")
    p.add_argument("--out", default=None, help="JSON path (default: report.json beside the checkpoint)")
    args = p.parse_args(argv)
    try:
        state = load_checkpoint(args.checkpoint, map_location="cpu")
        cfg = dict(state["config"])
        cfg.update(progress=False, device=args.device)
        if args.data:
            cfg["data"] = args.data
        if args.data_root:
            cfg["data_root"] = args.data_root
        config = TrainConfig.from_dict(cfg)
        device = resolve_device(config.device)
        data = load_data(config, device)
        model = build_model(config, data).to(device)
        model.load_state_dict(state["model"])
        rule = build_rule(config.rule, model, config.rule_options,
                          make_generator(config.seed, "feedback")).to(device)
        rule.load_state_dict(state["rule"])
        from .measures import accuracy
        acc = accuracy(model, data.test_x, data.test_y)
        report = diagnose(model, data.eval_batches(config.eval_batches, config.eval_batch_size),
                          headline_acc=acc, frozen_baseline_acc=args.frozen_baseline_acc,
                          method_name=args.method_name or config.rule.upper(),
                          notes=f"{config.data}, d={config.d_hidden}, L={config.num_blocks}, "
                                f"seed {config.seed}, epoch {state['epoch']}",
                          rule=None if args.no_gamma else rule)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report)
    out = Path(args.out) if args.out else Path(args.checkpoint).with_name("report.json")
    write_json_atomic(out, report.to_dict())
    print(f"report written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
