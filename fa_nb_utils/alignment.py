"""Γ (alignment): the field's standard number, measured so that it cannot mislead silently.

    res = gamma(model, eval_batches, rule=result.rule)        # a rule with its *saved* state
    res = gamma(model, eval_batches, credit_fn=my_credits)    # yours: (x, y) -> [a_0..a_L]

Γ_k = mean over eval samples of cos(a_k, g_k), k = 0..L: the rule's credit against the true
per-sample BP gradient of `measures.layer_stats`. The conventions answer the pipeline pitfalls of
docs/reporting.md: a float64 cosine with no eps clamp; Γ_k null, with a reason, under the (b)
floor; a rule used only with the saved state it declares, else `GammaUnavailable` ("N/A", never
fresh draws); the headline is the mean over layers, other aggregations beside it.
Not here: diagnostics (a)-(e) (protocol.py, measures.py), the report's text (report.py), the
rules' credits (rules.py).
"""
from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .validation import finite_or_none, model_device, model_float_dtype, prepare_eval_batches
from .hooks import with_hidden_modules
from .measures import (LayerStats, as_normal_tensor, autograd_on, check_model_tensors,
                       compute_dtype, eval_mode, layer_stats)
from .report import DiagnosticThresholds, thresholds_or_default
from .rules import Rule, StateSpec

AGGREGATION = "mean over layers"
FLOOR_REASON = ("the true gradient is at the numerical floor, Γ is a cosine against noise "
                "(median ||g_{k}|| = {g:.2e} < floor {floor:.0e}, paper scale)")
FIELD_STYLE_LABEL = ("field-style: torch.nn.functional.cosine_similarity (eps=1e-8 clamp) per "
                     "sample on the paper-scale gradient, mean over samples, then mean over "
                     "layers; no floor check, no exclusions; for comparison only")
LIBRARY_EPS = 1e-8  # F.cosine_similarity's default


class GammaUnavailable(ValueError):
    """Γ is N/A: the rule lacks the saved state (feedback matrices, aux nets) it trained with."""


@dataclass
class GammaResult:
    """Γ per layer and its aggregations; `to_dict()` is strict-JSON-safe (null plus a reason)."""

    per_layer: list[Optional[float]]          # Γ_k, k = 0..L (hand-written float64 cosine)
    per_layer_reasons: dict[str, str]         # str(k) -> why Γ_k is null
    headline: Optional[float]                 # mean over layers; null if any Γ_k is null
    headline_reason: Optional[str]
    field_style: Optional[float]              # library cosine, eps-clamped, mean over layers
    excluded_per_layer: list[int]             # samples with ||a||·||g|| = 0, per layer
    n_samples: int
    grad_floor: float
    source: str
    aggregation: str = AGGREGATION
    per_layer_raw: list[Optional[float]] = field(default_factory=list)  # before the floor rule
    field_style_per_layer: list[Optional[float]] = field(default_factory=list)
    field_style_label: str = FIELD_STYLE_LABEL
    alternatives: dict[str, Optional[float]] = field(default_factory=dict)  # pitfalls 5 and 6
    bp_grad_norms: list[Optional[float]] = field(default_factory=list)  # median ||g_k||, /128

    def to_dict(self) -> dict[str, Any]:
        num = finite_or_none
        return {
            "per_layer": [num(v) for v in self.per_layer],
            "per_layer_reasons": dict(self.per_layer_reasons),
            "headline": num(self.headline),
            "headline_reason": self.headline_reason,
            "aggregation": self.aggregation,
            "field_style": num(self.field_style),
            "field_style_label": self.field_style_label,
            "field_style_per_layer": [num(v) for v in self.field_style_per_layer],
            "per_layer_raw": [num(v) for v in self.per_layer_raw],
            "alternatives": {k: num(v) for k, v in self.alternatives.items()},
            "excluded_per_layer": [int(v) for v in self.excluded_per_layer],
            "n_samples": int(self.n_samples),
            "grad_floor": float(self.grad_floor),
            "bp_grad_norms": [num(v) for v in self.bp_grad_norms],
            "source": self.source,
        }

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), allow_nan=False, **kw)


# --- Cosines --------------------------------------------------------------------------------------
def per_sample_cosine(a: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hand-written float64 cosine per sample over all non-batch dims, no eps clamp, each vector
    divided by its own norm first (tiny norms cannot underflow their product). Returns (cos,
    excluded): cos is NaN where ||a||·||g|| = 0 (`excluded` True there).
    """
    n = a.shape[0]
    a = a.detach().to(torch.float64).reshape(n, -1).cpu()
    g = g.detach().to(torch.float64).reshape(n, -1).cpu()
    na = torch.linalg.vector_norm(a, dim=1)
    ng = torch.linalg.vector_norm(g, dim=1)
    excluded = (na == 0) | (ng == 0)
    keep = ~excluded
    cos = torch.full((n,), float("nan"), dtype=torch.float64)
    cos[keep] = ((a[keep] / na[keep, None]) * (g[keep] / ng[keep, None])).sum(1)
    return cos, excluded


def library_cosine(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """What the field computes: F.cosine_similarity per sample (each norm clamped at 1e-8)."""
    n = a.shape[0]
    return F.cosine_similarity(a.detach().to(torch.float64).reshape(n, -1).cpu(),  # pitfall-ok
                               g.detach().to(torch.float64).reshape(n, -1).cpu(), dim=-1,
                               eps=LIBRARY_EPS)


# --- The rule's saved state (pitfall 4) -----------------------------------------------------------
LOAD_STATE = ("load the run's rule state (rule.load_state_dict(checkpoint['rule'])) or use the "
              "trainer's result.rule")
STATE_FIX = {  # what to do, per kind of state (rules.StateSpec.kind)
    "buffer": f"{LOAD_STATE}; fresh random matrices would give Γ ≈ 0 (pitfall 4)",
    "module": f"{LOAD_STATE}; a freshly initialised net would give a Γ the run never trained with",
}
SHAPE_FIX = ("pass the rule saved with this model's run (result.rule, or one given "
             "load_state_dict(checkpoint['rule']))")


def _buffer_problem(t, spec: StateSpec) -> Optional[tuple[str, str]]:
    """(what is wrong, the fix) for a declared buffer, or None if it is usable."""
    if not torch.is_tensor(t):
        return "is missing", STATE_FIX["buffer"]
    if t.numel() == 0:
        return "is empty", STATE_FIX["buffer"]
    if t.is_floating_point() and not torch.isfinite(t).all():
        return "holds non-finite values", STATE_FIX["buffer"]
    if t.is_floating_point() and not t.any():
        return "is all zeros (never filled from the run)", STATE_FIX["buffer"]
    if spec.shape is not None and tuple(t.shape) != spec.shape:
        return (f"has shape {tuple(t.shape)} but this model needs {spec.shape}: it belongs to "
                "another run or architecture"), SHAPE_FIX
    return None


def _module_problem(m, spec: StateSpec) -> Optional[tuple[str, str]]:
    """(what is wrong, the fix) for a declared auxiliary module, or None if it is usable."""
    if m is None:
        return "is missing", STATE_FIX["module"]
    if not isinstance(m, nn.Module):
        return (f"is a {type(m).__name__}, not the nn.Module it is declared as",
                STATE_FIX["module"])
    state = {k: v for k, v in m.state_dict().items() if torch.is_tensor(v)}
    if sum(v.numel() for v in state.values()) == 0:
        return "is empty (a module with no parameters)", STATE_FIX["module"]
    floats = {k: v for k, v in state.items() if v.is_floating_point()}
    bad = [k for k, v in floats.items() if not torch.isfinite(v).all()]
    if bad:
        return f"holds non-finite values (in {bad[0]!r})", STATE_FIX["module"]
    if floats and not any(v.any() for v in floats.values()):
        return "is all zeros (never filled from the run)", STATE_FIX["module"]
    if spec.shapes is not None:
        have = {k: tuple(v.shape) for k, v in state.items()}
        diffs = [f"lacks {k!r} {shape}" for k, shape in spec.shapes.items() if k not in have]
        diffs += [f"has an undeclared {k!r} {shape}" for k, shape in have.items()
                  if k not in spec.shapes]
        diffs += [f"has {k!r} of shape {have[k]} but this model needs {shape}"
                  for k, shape in spec.shapes.items() if k in have and have[k] != shape]
        if diffs:
            return (", ".join(diffs) + ": it belongs to another run or architecture"), SHAPE_FIX
    return None


def check_rule_state(rule: Rule, model: nn.Module) -> list[str]:
    """Raise GammaUnavailable if the rule lacks the saved state it declares
    (`rule.state_spec(model)`): each piece present, non-empty, finite, not all zeros (a
    placeholder never filled from the checkpoint) and shaped for this model. Returns its names.
    """
    specs = rule.state_spec(model)
    for spec in specs:
        value = getattr(rule, spec.name, None)
        found = _buffer_problem(value, spec) if spec.kind == "buffer" else \
            _module_problem(value, spec)
        if found is not None:
            problem, fix = found
            raise GammaUnavailable(f"Γ N/A: rule {rule.name!r}: state {spec.name!r} {problem}; "
                                   f"{fix}")
    return [spec.name for spec in specs]


# --- Credits --------------------------------------------------------------------------------------
def _validate_credits(credits, stats: LayerStats, who: str) -> list[torch.Tensor]:
    n_layers = len(stats.grads)
    shapes = [tuple(h.shape) for h in stats.hiddens]
    expected = f"a list of {n_layers} tensors [a_0..a_{n_layers - 1}] shaped like h_0..h_L {shapes}"
    if torch.is_tensor(credits):
        raise TypeError(f"{who} returned one tensor of shape {tuple(credits.shape)}; expected "
                        f"{expected} (for a stacked tensor pass list(t.unbind(0)))")
    if not isinstance(credits, (list, tuple)):
        raise TypeError(f"{who} returned {type(credits).__name__}; expected {expected}")
    if len(credits) != n_layers:
        raise ValueError(f"{who} returned {len(credits)} credits; expected {expected} "
                         "(credits are indexed by hidden state, h_0 included)")
    out = []
    for k, (a, shape) in enumerate(zip(credits, shapes)):
        if not torch.is_tensor(a):
            raise TypeError(f"{who}: credit a_{k} is {type(a).__name__}, not a tensor; "
                            f"expected {expected}")
        if tuple(a.shape) != shape:
            raise ValueError(f"{who}: credit a_{k} has shape {tuple(a.shape)} but h_{k} has "
                             f"{shape}; expected {expected}")
        if a.is_complex() or a.dtype == torch.bool:
            raise TypeError(f"{who}: credit a_{k} has dtype {a.dtype}; expected real numbers")
        out.append(a.detach().to(torch.float64).cpu())
    return out


def _compute_credits(model: nn.Module, x: torch.Tensor, y: torch.Tensor, rule, credit_fn):
    """[a_0..a_L] in eval mode, with autograd on (also inside torch.no_grad / inference_mode);
    the model's mode, parameters and .grad restored afterwards."""
    with autograd_on():
        x, y = as_normal_tensor(x), as_normal_tensor(y)
        work = model
        if rule is not None and any(p.is_floating_point() and p.dtype not in (torch.float32,
                                                                              torch.float64)
                                    for p in model.parameters()):
            work = copy.deepcopy(model).to(compute_dtype(model))  # fp16/bf16: credits in fp32
            if x.is_floating_point():
                x = x.to(compute_dtype(model))
        params = list(model.parameters())
        saved_grads = [None if p.grad is None else p.grad.detach().clone() for p in params]
        try:
            with eval_mode(work):  # every submodule gets its own mode back (frozen eval blocks)
                if rule is not None:
                    credits = rule.credits(work, x.detach(), y)
                else:
                    credits = credit_fn(x.detach(), y)
        finally:
            for p, gr in zip(params, saved_grads):  # a credit_fn may call backward on the model
                p.grad = gr
    return credits


# --- Γ --------------------------------------------------------------------------------------------
def _mean_or_none(values: Sequence[Optional[float]]) -> Optional[float]:
    if not values or any(v is None for v in values):
        return None
    return float(np.mean(values))


def gamma(model: nn.Module, eval_batches: Iterable, *, rule: Optional[Rule] = None,
          credit_fn: Optional[Callable] = None, stats: Optional[LayerStats] = None,
          thresholds: Optional[DiagnosticThresholds] = None,
          hidden_modules=None, logits_fn: Optional[Callable] = None) -> GammaResult:
    """Γ_k = mean over eval samples of the float64 cos(a_k, g_k), k = 0..L, with reasons.

    `eval_batches`: as for `diagnose` (read once), or an `EvalData`. `rule`: a `rules.Rule`
    holding the state it trained with (`result.rule`, or one loaded from the checkpoint), or
    `credit_fn(x, y) -> [a_0..a_L]`, your own per-sample credits. `stats`: `measures.layer_stats`
    on the same batches, reused. Raises GammaUnavailable when the rule lacks its saved state
    (N/A, never a fallback to new draws).
    """
    if (rule is None) == (credit_fn is None):
        raise ValueError("gamma needs exactly one credit source: rule=<a Rule with its saved "
                         "feedback, e.g. result.rule> or credit_fn=<(x, y) -> [a_0..a_L]>; got "
                         + ("neither" if rule is None else "both"))
    if rule is not None and not isinstance(rule, Rule):
        if isinstance(rule, str):
            raise TypeError(f"rule={rule!r} is a name; pass the Rule instance that trained the "
                            "model (its saved feedback), not a name: a rule built now would draw "
                            "fresh feedback matrices and give Γ ≈ 0 (pitfall 4)")
        raise TypeError(f"rule must be a fa_nb_utils.rules.Rule instance, got "
                        f"{type(rule).__name__}; for your own method pass credit_fn=")
    if credit_fn is not None and not callable(credit_fn):
        raise TypeError(f"credit_fn must be callable (x, y) -> [a_0..a_L], got "
                        f"{type(credit_fn).__name__}")
    thresholds = thresholds_or_default(thresholds)
    floor = thresholds.g_norm_floor
    if hidden_modules is not None and rule is not None:
        raise ValueError("hidden_modules is for your own model and method: pass credit_fn=; a "
                         "registered rule trains this package's models (the ResidualMLP, ViT-Mini, "
                         "the CNN), which return their hidden states themselves")
    model = with_hidden_modules(model, hidden_modules, logits_fn)

    if rule is not None:
        kinds = {spec.kind for spec in rule.state_spec(model)}
        check_rule_state(rule, model)
        saved = " and ".join(w for k, w in (("buffer", "feedback"), ("module", "auxiliary nets"))
                             if k in kinds)
        source = (f"rule {rule.name!r} with its saved {saved}" if saved
                  else f"rule {rule.name!r} (no saved state needed)")
        who = f"rule {rule.name!r}.credits"
    else:
        source = "credit_fn"
        who = "credit_fn(x, y)"

    check_model_tensors(model)
    x, y, _ = prepare_eval_batches(eval_batches, model_device(model),
                                   dtype=model_float_dtype(model))
    if stats is None:
        stats = layer_stats(model, x, y)
    elif stats.grads[0].shape[0] != y.shape[0]:
        raise ValueError(f"stats were computed on {stats.grads[0].shape[0]} samples but the eval "
                         f"batches hold {y.shape[0]}; pass stats from the same batches or none")
    credits = _validate_credits(_compute_credits(model, x, y, rule, credit_fn), stats, who)

    per_layer, raw, lib, excluded, reasons, median_samples = [], [], [], [], {}, []
    for k, (a, g) in enumerate(zip(credits, stats.grads)):
        g_med = stats.bp_grad_norms[k]
        finite_g, finite_a = bool(torch.isfinite(g).all()), bool(torch.isfinite(a).all())
        cos, excl = per_sample_cosine(a, g)
        excluded.append(int(excl.sum()))
        defined = finite_a and finite_g and bool((~excl).any())
        value = float(cos[~excl].mean()) if defined else None
        median_samples.append(float(np.median(cos[~excl].numpy())) if defined else None)
        raw.append(value)
        lib.append(float(library_cosine(a, g).mean()) if finite_a and finite_g else None)
        if not finite_g or not math.isfinite(g_med):
            reasons[str(k)] = f"non-finite BP gradient at layer {k}"
        elif g_med < floor:
            reasons[str(k)] = FLOOR_REASON.format(k=k, g=g_med, floor=floor)
        elif not finite_a:
            reasons[str(k)] = f"non-finite credit a_{k}"
        elif value is None:
            reasons[str(k)] = (f"every sample excluded at layer {k} (||a||·||g|| = 0 for all "
                               f"{len(cos)}): no direction to compare")
        elif not math.isfinite(value):
            reasons[str(k)] = f"non-finite cosine at layer {k}"
        per_layer.append(None if str(k) in reasons else value)

    headline = _mean_or_none(per_layer)
    headline_reason = None
    if headline is None:
        null = [k for k, v in enumerate(per_layer) if v is None]
        first = reasons[str(null[0])]
        headline_reason = f"Γ_k is null at layer(s) {null}: {first}"
    n_samples = int(y.shape[0])
    median_samples = [None if v is None else m for v, m in zip(per_layer, median_samples)]
    alternatives = {
        "median over layers": (None if headline is None else float(np.median(per_layer))),
        "mean over layers 1..L (layer 0 left out)": _mean_or_none(per_layer[1:]),
        "layer 0 alone": per_layer[0],
        "median over samples, then mean over layers": _mean_or_none(median_samples),
    }
    return GammaResult(
        per_layer=per_layer, per_layer_reasons=reasons, headline=headline,
        headline_reason=headline_reason, field_style=_mean_or_none(lib),
        excluded_per_layer=excluded, n_samples=n_samples, grad_floor=float(floor), source=source,
        per_layer_raw=raw, field_style_per_layer=lib, alternatives=alternatives,
        bp_grad_norms=[float(v) for v in stats.bp_grad_norms],
    )


# --- The field's verdict, which the protocol contrasts with ---------------------------------------
def standard_verdict(accuracy: float, gamma_headline, num_classes: int) -> str:
    """The field's standard verdict, which the paper contrasts the protocol with (docs/protocol.md,
    "The field's standard verdict"): "trustworthy" when accuracy > chance and Γ > 0.

    `gamma_headline`: a float or None, or a GammaResult / its dict (its reason explains a null).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    why_null = None
    if isinstance(gamma_headline, GammaResult):
        gamma_headline = gamma_headline.to_dict()
    if isinstance(gamma_headline, dict):
        why_null = gamma_headline.get("headline_reason")
        gamma_headline = gamma_headline.get("headline")
    reasons = []
    chance = 1.0 / num_classes
    if accuracy is None or not math.isfinite(float(accuracy)):
        reasons.append(f"accuracy undefined ({accuracy!r})")
    elif float(accuracy) <= chance:
        reasons.append(f"accuracy at or below chance ({float(accuracy):.4f} <= {chance:.4f})")
    if gamma_headline is None or not math.isfinite(float(gamma_headline)):
        reasons.append(f"Γ undefined ({why_null or 'headline Γ is null'})")
    elif float(gamma_headline) <= 0:
        reasons.append(f"Γ <= 0 ({float(gamma_headline):+.4f})")
    return "trustworthy" if not reasons else "not trustworthy: " + "; ".join(reasons)
