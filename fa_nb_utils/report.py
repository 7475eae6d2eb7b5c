"""The protocol's output: thresholds, the per-diagnostic verdicts and the printed / JSON report.

`DiagnosticReport` keeps seed 001's fields and verdict strings, with SPEC §4's corrections:
(a) is the largest *per-block* growth of the median residual norm (the seeds' first report used
max / h_0, which made healthy ViTs with a tiny layer-0 norm fire); every test is strict; a NaN,
inf, zero or missing input makes its diagnostic fire with a stated reason instead of passing; an
absent frozen baseline makes (d) "skipped", never "passed". JSON is strict (no NaN: null plus the
reason) and carries a `schema_version`. Numbers may be Python or numpy reals (np.float32 norms,
say); bools are not numbers.

Not here: computing the numbers (`diagnose.py`, `measures.py`) or Gamma (`alignment.py`).
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

SCHEMA_VERSION = 1

NAME_A = "residual stream exploded"
NAME_B = "BP grad at numerical floor"
NAME_C = "BP grad direction is drift-dominated"
NAME_D = "deep blocks fail to beat frozen-random baseline"
DIAGNOSTIC_NAMES = {"a": NAME_A, "b": NAME_B, "c": NAME_C, "d": NAME_D}


def _is_real(v) -> bool:
    """A real number: Python int/float or a numpy integer/floating scalar, never a bool."""
    return (isinstance(v, (int, float, np.integer, np.floating))
            and not isinstance(v, (bool, np.bool_)))


def _finite(v) -> bool:
    return _is_real(v) and math.isfinite(v)


def _plain_int(v):
    """A numpy integer as a Python int (for strict JSON); anything else unchanged."""
    return int(v) if isinstance(v, np.integer) else v


@dataclass(frozen=True)
class DiagnosticThresholds:
    """Degeneracy thresholds of the four diagnostics (defaults: the paper's, SPEC §4).

    g_norm_floor: (b) fires when the deepest layer's median per-sample BP gradient norm, on the
        paper scale (gradient of the batch-mean CE over 128 samples), is below this. Default
        1e-7. Calibration: healthy networks ~1e-4 (min 1.02e-4 on CIFAR-10), failing <= 4.2e-9.
    h_norm_explosion_ratio: (a) fires when the largest per-block growth of the median residual
        norm, max_l ||h_{l+1}|| / ||h_l||, exceeds this. Default 50. Calibration: healthy max 11x,
        failing min 694x.
    stability_drift_ceiling: (c) fires when the mean cosine between eval batches' mean BP gradient
        directions exceeds this. Default 0.30. Calibration: BP ~0.10, EP ~-0.04; failures
        0.35-0.99 but also near 0 on some seeds: it separates sub-modes more than it detects.
    frozen_acc_margin_pp: (d) fires when headline accuracy beats the frozen-random-blocks
        baseline by less than this many percentage points. Default 2.0.
    """

    g_norm_floor: float = 1e-7
    h_norm_explosion_ratio: float = 50.0
    stability_drift_ceiling: float = 0.30
    frozen_acc_margin_pp: float = 2.0

    def __post_init__(self):
        checks = [
            ("g_norm_floor", self.g_norm_floor, lambda v: v > 0,
             "a positive gradient norm (default 1e-7)"),
            ("h_norm_explosion_ratio", self.h_norm_explosion_ratio, lambda v: v > 1,
             "a growth ratio above 1 (default 50)"),
            ("stability_drift_ceiling", self.stability_drift_ceiling, lambda v: -1 <= v < 1,
             "a cosine in [-1, 1) (default 0.30)"),
            ("frozen_acc_margin_pp", self.frozen_acc_margin_pp, lambda v: -100 <= v <= 100,
             "percentage points in [-100, 100] (default 2.0)"),
        ]
        for name, value, ok, what in checks:
            if not _finite(value) or not ok(value):
                raise ValueError(f"DiagnosticThresholds.{name} must be {what}; got {value!r}")
            if not isinstance(value, (int, float)):
                object.__setattr__(self, name, float(value))  # numpy scalars: plain floats

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class DiagnosticReport:
    """Result of running the protocol on one trained network (seed 001's fields, plus context)."""

    method_name: str
    notes: str
    residual_norms: list[float]
    bp_grad_norms: list[float]
    stability_layer: int
    cross_batch_stability: float
    headline_acc: float
    frozen_baseline_acc: Optional[float]
    thresholds: DiagnosticThresholds = field(default_factory=DiagnosticThresholds)
    # context beyond seed 001
    headline_acc_source: str = "provided"   # or "measured on the eval batches"
    num_eval_samples: Optional[int] = None
    num_eval_batches: Optional[int] = None
    input_reasons: dict = field(default_factory=dict)  # diagnostic key -> why its input is bad
    alignment: Optional[dict] = None        # Gamma (alignment.GammaResult.to_dict()), if measured

    # ------------------------------------------------------------------------------------------
    # (a) residual stream explosion
    # ------------------------------------------------------------------------------------------
    @property
    def block_growth(self) -> list[float]:
        """Per-block growth ||h_{l+1}|| / ||h_l|| of the median residual norms (nan if undefined)."""
        h = self.residual_norms
        out = []
        for a, b in zip(h, h[1:]):
            out.append(float(b) / float(a) if _finite(a) and _finite(b) and a > 0
                       else float("nan"))
        return out

    @property
    def max_block_growth(self) -> float:
        g = self.block_growth
        # inf is a value here (finite norms whose ratio overflows), nan means undefined
        return max(g) if g and not any(math.isnan(v) for v in g) else float("nan")

    @property
    def cumulative_growth(self) -> float:
        h = self.residual_norms
        if len(h) >= 2 and _finite(h[0]) and _finite(h[-1]) and h[0] > 0:
            return float(h[-1]) / float(h[0])
        return float("nan")

    def _reason_a(self) -> Optional[str]:
        if "a" in self.input_reasons:
            return self.input_reasons["a"]
        h = self.residual_norms
        if len(h) < 2:
            return f"needs at least 2 hidden states (h_0..h_L), got {len(h)}"
        bad = [l for l, v in enumerate(h) if not _finite(v)]
        if bad:
            return f"non-finite residual norm at layer(s) {bad}"
        zero = [l for l, v in enumerate(h) if v <= 0]
        if zero:
            return f"zero residual norm at layer(s) {zero}: the stream is degenerate"
        overflow = [l for l, v in enumerate(self.block_growth) if math.isinf(v)]
        if overflow:
            return f"per-block growth overflows the float range at block(s) {overflow}"
        return None

    @property
    def residual_stream_exploded(self) -> bool:
        if self._reason_a() is not None:
            return True
        return bool(self.max_block_growth > self.thresholds.h_norm_explosion_ratio)

    # ------------------------------------------------------------------------------------------
    # (b) BP gradient at the numerical floor
    # ------------------------------------------------------------------------------------------
    def _reason_b(self) -> Optional[str]:
        if "b" in self.input_reasons:
            return self.input_reasons["b"]
        if not self.bp_grad_norms:
            return "no BP gradient norms"
        if not _finite(self.bp_grad_norms[-1]):
            return f"non-finite deepest BP gradient norm ({self.bp_grad_norms[-1]!r})"
        bad = [l for l, v in enumerate(self.bp_grad_norms) if not _finite(v)]
        if bad:
            return f"non-finite BP gradient norm at layer(s) {bad}"
        return None

    @property
    def bp_grad_at_floor(self) -> bool:
        if self._reason_b() is not None:
            return True
        # the deepest hidden layer: where Gamma is usually reported and the LN collapse is worst
        return bool(self.bp_grad_norms[-1] < self.thresholds.g_norm_floor)

    # ------------------------------------------------------------------------------------------
    # (c) cross-batch direction stability
    # ------------------------------------------------------------------------------------------
    def _reason_c(self) -> Optional[str]:
        if "c" in self.input_reasons:
            return self.input_reasons["c"]
        if not _finite(self.cross_batch_stability):
            return "stability undefined (a batch's mean BP gradient is zero or non-finite)"
        return None

    @property
    def reference_drift_dominated(self) -> bool:
        if self._reason_c() is not None:
            return True
        return bool(self.cross_batch_stability > self.thresholds.stability_drift_ceiling)

    # ------------------------------------------------------------------------------------------
    # (d) frozen-random-blocks baseline
    # ------------------------------------------------------------------------------------------
    @property
    def frozen_margin_pp(self) -> Optional[float]:
        """100 * (headline - frozen), rounded to 1e-9 (so 0.359 - 0.339 is exactly 2.0 pp)."""
        if self.frozen_baseline_acc is None:
            return None
        if not (_finite(self.headline_acc) and _finite(self.frozen_baseline_acc)):
            return float("nan")
        return round(100.0 * (float(self.headline_acc) - float(self.frozen_baseline_acc)), 9)

    def _reason_d(self) -> Optional[str]:
        if self.frozen_baseline_acc is None:
            return None
        if "d" in self.input_reasons:
            return self.input_reasons["d"]
        if not math.isfinite(self.frozen_margin_pp):
            return "non-finite headline or frozen-baseline accuracy"
        return None

    @property
    def frozen_baseline_undercut(self) -> Optional[bool]:
        """True if the headline fails to clear the frozen baseline by the margin; None if skipped."""
        if self.frozen_baseline_acc is None:
            return None
        if self._reason_d() is not None:
            return True
        return bool(self.frozen_margin_pp < self.thresholds.frozen_acc_margin_pp)

    # ------------------------------------------------------------------------------------------
    # Aggregate
    # ------------------------------------------------------------------------------------------
    @property
    def fired(self) -> dict[str, Optional[bool]]:
        """{"a": bool, "b": bool, "c": bool, "d": bool or None (skipped)}."""
        return {"a": self.residual_stream_exploded, "b": self.bp_grad_at_floor,
                "c": self.reference_drift_dominated, "d": self.frozen_baseline_undercut}

    @property
    def reasons(self) -> dict[str, str]:
        """Why a diagnostic fired on bad input (NaN, inf, zero, empty), by key."""
        out = {"a": self._reason_a(), "b": self._reason_b(), "c": self._reason_c(),
               "d": self._reason_d()}
        return {k: v for k, v in out.items() if v is not None}

    @property
    def fired_names(self) -> list[str]:
        return [DIAGNOSTIC_NAMES[k] for k, v in self.fired.items() if v]

    @property
    def verdict(self) -> str:
        names = self.fired_names
        return "trustworthy" if not names else "needs walk-back: " + "; ".join(names)

    @property
    def trustworthy(self) -> bool:
        return not self.fired_names

    # ------------------------------------------------------------------------------------------
    # Text
    # ------------------------------------------------------------------------------------------
    def __str__(self) -> str:
        t = self.thresholds
        rule = "=" * 72
        lines = [rule, f"FA Diagnostic Protocol Report — method: {self.method_name}"]
        if self.notes:
            lines.append(f"Notes: {self.notes}")
        if self.num_eval_samples is not None:
            lines.append(f"Eval: {self.num_eval_samples} samples in {self.num_eval_batches} batches")
        lines.append(rule)
        reasons = self.reasons

        lines.append("(a) Residual stream norms ||h_l||_2 (median over eval samples):")
        growth = self.block_growth
        for l, v in enumerate(self.residual_norms):
            extra = f"   x{growth[l - 1]:.2f} over h_{l - 1}" if l >= 1 else ""
            lines.append(f"    h_{l}: {v:.3e}{extra}")
        lines.append(f"    max per-block growth {self.max_block_growth:.3g}x "
                     f"(cumulative h_L/h_0 {self.cumulative_growth:.3g}x)")
        if self.residual_stream_exploded:
            why = reasons.get("a") or (f"max per-block growth {self.max_block_growth:.3g}x > "
                                       f"threshold {t.h_norm_explosion_ratio:g}x")
            lines.append(f"    FLAG: {why} — residual stream exploded.")

        lines.append("")
        lines.append("(b) BP gradient norms ||g_l||_2 (median per sample; paper scale, /128):")
        for l, v in enumerate(self.bp_grad_norms):
            lines.append(f"    g_{l}: {v:.3e}")
        if self.bp_grad_at_floor:
            why = reasons.get("b") or (f"deepest ||g_L|| = {self.bp_grad_norms[-1]:.2e} < floor "
                                       f"{t.g_norm_floor:.0e}")
            lines.append(f"    FLAG: {why} — Γ measured against the numerical floor; not "
                         "interpretable as credit alignment.")

        lines.append("")
        lines.append(f"(c) Cross-batch direction stability at layer {self.stability_layer}: "
                     f"{self.cross_batch_stability:.3f}")
        if self.reference_drift_dominated:
            why = reasons.get("c") or (f"stability {self.cross_batch_stability:.3f} > ceiling "
                                       f"{t.stability_drift_ceiling:g}")
            lines.append(f"    FLAG: {why} — reference vector is sample-invariant drift, not "
                         "per-sample credit.")

        lines.append("")
        acc_src = "" if self.headline_acc_source == "provided" else f" ({self.headline_acc_source})"
        if self.frozen_baseline_acc is None:
            lines.append(f"(d) Headline acc: {self.headline_acc:.4f}{acc_src}; frozen-blocks "
                         "baseline: NOT PROVIDED — diagnostic skipped.")
        else:
            lines.append(f"(d) Headline acc: {self.headline_acc:.4f}{acc_src}, frozen-blocks "
                         f"baseline: {self.frozen_baseline_acc:.4f}, margin: "
                         f"{self.frozen_margin_pp:+.2f} pp")
            if self.frozen_baseline_undercut:
                why = reasons.get("d") or (f"margin {self.frozen_margin_pp:+.2f} pp < required "
                                           f"{t.frozen_acc_margin_pp:g} pp")
                lines.append(f"    FLAG: {why} — deep blocks are not contributing over a random "
                             "untrained baseline.")
        if self.alignment is not None:
            lines.append("")
            lines.extend(_alignment_lines(self.alignment))
        lines.append("")
        lines.append(f"VERDICT: {self.verdict}")
        lines.append(rule)
        return "\n".join(lines)

    # ------------------------------------------------------------------------------------------
    # Dict / JSON
    # ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain, strict-JSON-safe dict: non-finite numbers become None, with the reason kept."""
        def num(v):
            return float(v) if _finite(v) else None

        fired = self.fired
        return {
            "schema_version": SCHEMA_VERSION,
            "method_name": self.method_name,
            "notes": self.notes,
            "residual_norms": [num(v) for v in self.residual_norms],
            "bp_grad_norms": [num(v) for v in self.bp_grad_norms],
            "block_growth": [num(v) for v in self.block_growth],
            "max_block_growth": num(self.max_block_growth),
            "cumulative_growth": num(self.cumulative_growth),
            "stability_layer": _plain_int(self.stability_layer),
            "cross_batch_stability": num(self.cross_batch_stability),
            "headline_acc": num(self.headline_acc),
            "headline_acc_source": self.headline_acc_source,
            "frozen_baseline_acc": (None if self.frozen_baseline_acc is None
                                    else num(self.frozen_baseline_acc)),
            "frozen_margin_pp": (None if self.frozen_margin_pp is None
                                 else num(self.frozen_margin_pp)),
            "num_eval_samples": _plain_int(self.num_eval_samples),
            "num_eval_batches": _plain_int(self.num_eval_batches),
            "fired": fired,
            "diagnostics": {k: ("skipped" if v is None else "fired" if v else "passed")
                            for k, v in fired.items()},
            "reasons": self.reasons,
            "input_reasons": dict(self.input_reasons),
            "verdict": self.verdict,
            "thresholds": self.thresholds.to_dict(),
            "alignment": self.alignment,
        }

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), allow_nan=False, **kw)

    @classmethod
    def from_dict(cls, d: dict) -> "DiagnosticReport":
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(f"report schema_version {version!r} is not one this fa-eval reads "
                             f"({SCHEMA_VERSION}); upgrade fa-eval or regenerate the report")
        nan = float("nan")
        val = lambda v: nan if v is None else float(v)
        frozen = d.get("frozen_baseline_acc")
        if frozen is None and d.get("diagnostics", {}).get("d") == "fired":
            frozen = nan  # it was provided but not finite
        return cls(
            method_name=d["method_name"], notes=d.get("notes", ""),
            residual_norms=[val(v) for v in d["residual_norms"]],
            bp_grad_norms=[val(v) for v in d["bp_grad_norms"]],
            stability_layer=d["stability_layer"],
            cross_batch_stability=val(d["cross_batch_stability"]),
            headline_acc=val(d["headline_acc"]),
            frozen_baseline_acc=frozen,
            thresholds=DiagnosticThresholds(**d["thresholds"]),
            headline_acc_source=d.get("headline_acc_source", "provided"),
            num_eval_samples=d.get("num_eval_samples"),
            num_eval_batches=d.get("num_eval_batches"),
            input_reasons=dict(d.get("input_reasons", {})),
            alignment=d.get("alignment"),
        )

    @classmethod
    def from_json(cls, text: str) -> "DiagnosticReport":
        return cls.from_dict(json.loads(text))

    # ------------------------------------------------------------------------------------------
    # The reporting template (SPEC §9), one row
    # ------------------------------------------------------------------------------------------
    def template_row(self, fmt: str = "markdown", **context: Any) -> str:
        """One row of SPEC §9's reporting template, as markdown or LaTeX (booktabs).

        `context` fills what the report cannot know: credit_signal, architecture, terminal_ln,
        dataset, seeds, feedback_seed, acc_mean_std, pitfalls_checked. Missing ones read "—".
        """
        cells = template_cells(self, context)
        if fmt == "markdown":
            head = "| " + " | ".join(cells) + " |"
            names = "| " + " | ".join(TEMPLATE_COLUMNS) + " |"
            sep = "|" + "|".join("---" for _ in TEMPLATE_COLUMNS) + "|"
            return "\n".join([names, sep, head])
        if fmt == "latex":
            esc = [_latex_escape(c) for c in cells]
            cols = "l" * len(cells)
            return "\n".join([
                f"\\begin{{tabular}}{{{cols}}}", "\\toprule",
                " & ".join(_latex_escape(c) for c in TEMPLATE_COLUMNS) + " \\\\", "\\midrule",
                " & ".join(esc) + " \\\\", "\\bottomrule", "\\end{tabular}"])
        raise ValueError(f"fmt must be 'markdown' or 'latex', got {fmt!r}")


TEMPLATE_COLUMNS = (
    "method", "credit signal", "architecture", "terminal LN", "dataset", "seeds",
    "feedback seed", "accuracy", "headline Γ (aggregation)", "per-layer Γ",
    "(a) ||h_l||", "(b) ||g_l||", "(c) stability (layer, batches)",
    "(d) frozen acc (margin)", "verdict", "pitfalls checked",
)


def template_cells(report: DiagnosticReport, context: dict) -> list[str]:
    dash = "—"
    get = lambda k: str(context[k]) if context.get(k) is not None else dash
    fmt_list = lambda xs: ", ".join(f"{v:.2e}" for v in xs)
    al = report.alignment or {}
    if al:
        headline = al.get("headline")
        gamma = (f"{headline:+.3f} ({al.get('aggregation', 'mean over layers')})"
                 if headline is not None else f"null ({al.get('headline_reason', 'undefined')})")
        per_layer = ", ".join("null" if g is None else f"{g:+.3f}" for g in al.get("per_layer", []))
    else:
        gamma = per_layer = "not measured"
    acc = get("acc_mean_std") if context.get("acc_mean_std") else f"{report.headline_acc:.4f}"
    if report.frozen_baseline_acc is None:
        frozen = "not provided"
    else:
        frozen = f"{report.frozen_baseline_acc:.4f} ({report.frozen_margin_pp:+.2f} pp)"
    return [
        report.method_name or dash, get("credit_signal"), get("architecture"),
        get("terminal_ln"), get("dataset"), get("seeds"), get("feedback_seed"), acc, gamma,
        per_layer or dash, fmt_list(report.residual_norms), fmt_list(report.bp_grad_norms),
        f"{report.cross_batch_stability:.3f} (layer {report.stability_layer}, "
        f"{report.num_eval_batches if report.num_eval_batches is not None else '?'} batches)",
        frozen, report.verdict, get("pitfalls_checked"),
    ]


def _latex_escape(s: str) -> str:
    repl = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
            "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}",
            "Γ": r"$\Gamma$", "—": "---", "|": r"$|$"}
    return "".join(repl.get(ch, ch) for ch in str(s))


def _alignment_lines(al: dict) -> list[str]:
    lines = ["Γ alignment (cosine of the rule's credit with the true BP gradient, per layer):"]
    for k, g in enumerate(al.get("per_layer", [])):
        reason = (al.get("per_layer_reasons") or {}).get(str(k))
        lines.append(f"    Γ_{k}: " + ("null — " + reason if g is None else f"{g:+.4f}"))
    head = al.get("headline")
    lines.append(f"    headline Γ ({al.get('aggregation', 'mean over layers')}): "
                 + ("null — " + str(al.get("headline_reason")) if head is None else f"{head:+.4f}"))
    fs = al.get("field_style")
    if fs is not None:
        lines.append(f"    field-style Γ (library cosine, eps-clamped, mean over layers): {fs:+.4f}"
                     " — shown for comparison only")
    return lines
