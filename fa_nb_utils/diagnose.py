"""`diagnose`: the four-part protocol on any model that exposes its hidden states.

    report = diagnose(model, eval_batches, headline_acc=0.306, frozen_baseline_acc=0.349,
                      method_name="DFA")
    print(report); report.verdict  # "trustworthy" or "needs walk-back: ..."

The model contract: `model(x, return_hidden=True)` returns `(logits, [h_0, ..., h_L])`, logits of
shape (N, C) and the live hidden-state tensors of the forward graph, (N, d) or (N, T, d), never
modified in place. Everything else follows SPEC §4 to the letter:

- eval mode; the forward/backward in the model's dtype promoted to at least fp32 (fp16/bf16
  models are evaluated on an fp32 copy); h and g cast to float64 before any norm, mean, cosine;
- eval batches (a list, a DataLoader, a generator; tensors or numpy arrays) are read exactly once
  and concatenated into one pass; Γ uses that same data, so a shuffling loader cannot pair one
  sample's credit with another sample's gradient;
- per-sample gradients from ONE backward of the summed cross-entropy (exact per sample because
  samples do not interact in eval mode: no batch norm, no cross-sample attention), then divided
  by 128 whatever the eval batch size (the paper's scale: the batch-mean CE over 128 samples);
- medians pooled over all eval samples (and positions), numpy's convention;
- (c) at layer L // 2 unless told otherwise, from batch-mean gradient directions, >= 2 batches.

The model's train/eval mode, its parameters, their requires_grad flags and their .grad fields
are left as they were found; it runs with autograd on inside `torch.no_grad()` or
`torch.inference_mode()` too, with the same numbers. A NaN or inf accuracy never reads as
trustworthy (see `diagnose`).
Run it as a command on a checkpoint: `python -m fa_nb_utils.diagnose --checkpoint PATH`.
Not here: the report's logic and text (report.py), Gamma (alignment.py).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Callable, Iterable, NamedTuple, Optional

import numpy as np
import torch
import torch.nn as nn

from .measures import check_model_tensors, cross_batch_stability, layer_stats
from .report import DiagnosticReport, DiagnosticThresholds

MEASURED_ACC = "measured on the eval batches (no headline_acc passed)"


def _check_accuracy(name: str, value) -> Optional[str]:
    """None if fine; a reason string if non-finite (the diagnostic then fires); raises if absurd.

    Python and numpy real numbers are accepted (not bools); an accuracy is a fraction in [0, 1].
    """
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.floating,
                                                                     np.integer)):
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

    `prepare_eval_batches` returns one; passing it back (as `diagnose` does to `gamma`) uses it
    as it is, so an iterable of batches (a shuffled DataLoader, a generator) is read exactly once
    and every sample keeps its own label and credit.
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

    `eval_batches` is any iterable of (x, y) pairs (a list, a DataLoader, a generator) of tensors
    or numpy arrays; numpy inputs become tensors, floats in `dtype` (default: torch's default
    dtype) and integers as int64. An `EvalData` is returned as it is, moved to `device`.
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
        raise ValueError("cross-batch stability (c) needs at least 2 eval batches (8 or more "
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


def diagnose(model: nn.Module, eval_batches: Iterable, headline_acc: Optional[float] = None,
             frozen_baseline_acc: Optional[float] = None, method_name: str = "", notes: str = "",
             thresholds: Optional[DiagnosticThresholds] = None,
             stability_layer: Optional[int] = None, *, rule=None,
             credit_fn: Optional[Callable] = None) -> DiagnosticReport:
    """Run diagnostics (a)-(d) on `model` and return the report (verdict, numbers, reasons).

    Args:
        model: any nn.Module with `forward(x, return_hidden=True) -> (logits, [h_0..h_L])`.
        eval_batches: >= 2 (x, y) batches (the paper: the first 10 x 128 test images): a list,
            a DataLoader or a generator, of tensors or numpy arrays. Read exactly once; the same
            samples, in the same order, feed (a)-(c) and Gamma.
        headline_acc: the accuracy you report (full test split), a fraction in [0, 1]. None:
            measured on the eval batches, and the report says so. NaN or inf never passes: with
            a frozen baseline (d) fires with the reason; without one there is no diagnostic to
            carry it, so it is refused (ValueError) before any compute.
        frozen_baseline_acc: accuracy of the same method with its blocks frozen at random init
            (3-seed mean). None: (d) is skipped, never passed. NaN or inf: (d) fires.
        stability_layer: layer for (c); default L // 2.
        rule / credit_fn: also measure Gamma (alignment.py) with a registered rule's saved state
            or your own `credit_fn(x, y) -> [a_0..a_L]`; attached as `report.alignment`.

    Works inside `torch.no_grad()` and `torch.inference_mode()` with the same numbers.
    """
    thresholds = DiagnosticThresholds() if thresholds is None else thresholds
    if not isinstance(thresholds, DiagnosticThresholds):
        raise TypeError(f"thresholds must be a DiagnosticThresholds, got {type(thresholds).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    input_reasons = {}
    acc_reasons = [r for r in (_check_accuracy("headline_acc", headline_acc),
                               _check_accuracy("frozen_baseline_acc", frozen_baseline_acc)) if r]
    if acc_reasons and frozen_baseline_acc is None:
        raise ValueError(
            f"{acc_reasons[0]}: a non-finite accuracy cannot be checked, and without "
            "frozen_baseline_acc diagnostic (d) is skipped, so nothing would flag it. Pass the "
            "accuracy you report as a fraction in [0, 1], or None to measure it on the eval "
            "batches (with frozen_baseline_acc given, (d) fires with this reason instead)")
    if acc_reasons:
        input_reasons["d"] = "; ".join(acc_reasons)
    check_model_tensors(model)

    data = prepare_eval_batches(eval_batches, model_device(model), dtype=model_float_dtype(model))
    x, y, sizes = data
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
        report.alignment = gamma(model, data, rule=rule, credit_fn=credit_fn,
                                 stats=stats, thresholds=thresholds).to_dict()
    return report


# ---------------------------------------------------------------------------------------------
# Command line: diagnose a saved run
# ---------------------------------------------------------------------------------------------
class _CliError(Exception):
    """A problem the command line reports as `error: ...` with exit code 2."""


def _out_path_problem(out: Path, given: bool) -> Optional[str]:
    """None if the report can be written to `out`; otherwise the problem and the fix.

    Checked before anything is loaded or computed: the path must not be a folder, and its
    folder must exist or be creatable (the nearest existing ancestor is a writable folder).
    """
    fix = ("pass --out PATH with a file path in a writable folder" if given
           else "pass --out PATH to write the report elsewhere")
    label = f"--out {out}" if given else f"{out} (the default report path, beside the checkpoint)"
    if out.is_dir():
        return f"{label} is a folder, not a file; {fix}, e.g. --out {out / 'report.json'}"
    existing = out.absolute().parent
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        return f"{label}: {existing} is not a folder, so no report can be written under it; {fix}"
    if not os.access(existing, os.W_OK | os.X_OK):
        where = ("its folder" if existing == out.absolute().parent
                 else "the folder it would be created in")
        return f"{label}: {where} {existing} is not writable; {fix}"
    return None


def _state_dict_mismatch(module: nn.Module, saved) -> str:
    """The first few differences between a saved state dict and what `module` expects."""
    if not isinstance(saved, dict):
        return f"the entry is a {type(saved).__name__}, not a state dict"
    expected = module.state_dict()
    out = []
    for k, t in expected.items():
        if k not in saved:
            out.append(f"{k} missing")
        elif torch.is_tensor(saved[k]) and tuple(saved[k].shape) != tuple(t.shape):
            out.append(f"{k}: saved {tuple(saved[k].shape)} vs expected {tuple(t.shape)}")
    out += [f"unexpected {k}" for k in saved if k not in expected]
    more = f", and {len(out) - 3} more" if len(out) > 3 else ""
    return "; ".join(out[:3]) + more if out else "the entries could not be loaded"


def _load_into(module: nn.Module, saved, what: str, kind: str, ckpt: Path) -> None:
    """`module.load_state_dict(saved)`, or a _CliError naming the file, the mismatch, the fix."""
    try:
        module.load_state_dict(saved)
    except (RuntimeError, TypeError, ValueError, KeyError, AttributeError) as exc:
        raise _CliError(
            f"{ckpt}: the saved {what} do not fit the {kind} its config describes "
            f"({_state_dict_mismatch(module, saved)}). The config or the saved tensors were "
            "edited, or the file mixes two runs: restore the original checkpoint or retrain "
            "(python -m fa_nb_utils.train ...)") from exc


def _entry(state: dict, key: str, ckpt: Path, extra: str = ""):
    if key not in state:
        held = ", ".join(sorted(map(str, state)))
        raise _CliError(
            f"{ckpt}: the checkpoint has no '{key}' entry (it holds: {held}); it was not written "
            "by fa_nb_utils.train or was edited. Restore the original file or retrain "
            f"(python -m fa_nb_utils.train ...){extra}")
    return state[key]


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
    ckpt = Path(args.checkpoint)
    out = Path(args.out) if args.out else ckpt.with_name("report.json")
    if args.out is not None or ckpt.is_file():  # a missing checkpoint is reported by the loader
        problem = _out_path_problem(out, given=args.out is not None)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
    try:
        state = load_checkpoint(ckpt, map_location="cpu")
        saved_config = _entry(state, "config", ckpt)
        saved_model = _entry(state, "model", ckpt)
        saved_rule = None if args.no_gamma else _entry(
            state, "rule", ckpt, "; or pass --no-gamma to diagnose without Γ, which is the only "
            "use of the rule's saved state")
        if not isinstance(saved_config, dict):
            raise _CliError(f"{ckpt}: the 'config' entry is a {type(saved_config).__name__}, not "
                            "a dict; restore the original file or retrain")
        cfg = dict(saved_config)
        cfg.update(progress=False, device=args.device)
        if args.data:
            cfg["data"] = args.data
        if args.data_root:
            cfg["data_root"] = args.data_root
        try:
            config = TrainConfig.from_dict(cfg)
        except (ValueError, TypeError) as exc:
            raise _CliError(f"{ckpt}: its config is not one this fa-eval can build ({exc}); "
                            "restore the original file, or retrain with this version") from exc
        device = resolve_device(config.device)
        data = load_data(config, device)
        model = build_model(config, data).to(device)
        _load_into(model, saved_model, "model weights", "model", ckpt)
        rule = None
        if saved_rule is not None:
            rule = build_rule(config.rule, model, config.rule_options,
                              make_generator(config.seed, "feedback")).to(device)
            _load_into(rule, saved_rule, "rule state tensors", f"rule {config.rule!r}", ckpt)
        from .measures import accuracy
        acc = accuracy(model, data.test_x, data.test_y)
        epoch = f", epoch {state['epoch']}" if "epoch" in state else ""
        report = diagnose(model, data.eval_batches(config.eval_batches, config.eval_batch_size),
                          headline_acc=acc, frozen_baseline_acc=args.frozen_baseline_acc,
                          method_name=args.method_name or config.rule.upper(),
                          notes=f"{config.data}, d={config.d_hidden}, L={config.num_blocks}, "
                                f"seed {config.seed}{epoch}",
                          rule=rule)
    except (_CliError, ValueError, TypeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report)
    try:
        write_json_atomic(out, report.to_dict())
    except OSError as exc:
        print(f"error: the report could not be written to {out} ({exc}); pass --out PATH with a "
              "file path in a writable folder", file=sys.stderr)
        return 2
    print(f"report written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
