"""The protocol's output: `DiagnosticThresholds`, and `DiagnosticReport` with its verdicts, text and
strict JSON (schema-versioned; schema 1 still reads).

The report keeps the field names and verdict strings of the paper's report; its verdicts, text
and JSON loop over the diagnostics table, so a registered diagnostic appears with no edit here.
`verdict` is the report's `mode` ("paper" or "robust"), `verdicts` gives both.
Not here: what each diagnostic computes (diagnostics.py), the numbers (protocol.py, measures.py),
Γ (alignment.py).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Optional

from .measures import BUILTIN_MEASUREMENTS
from .diagnostics import (DIAGNOSTICS, MODES, PAPER, ROBUST, b_cause, block_growth, check_mode,
                          diagnostic_names, frozen_margin_pp, max_block_growth, mode_keys)
from .text import latex_escape
from .validation import finite_or_none, is_finite_number, nan_if_none

SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)  # 1: before the backward gain and the modes


def _plain_int(v):
    """An integer as a Python int (numpy integers are not JSON); None stays None."""
    return None if v is None else int(v)


# The verdict names of the built-in diagnostics (declared in diagnostics.py), for convenience.
NAME_A, NAME_B, NAME_C, NAME_D, NAME_E = (DIAGNOSTICS[k].name for k in ("a", "b", "c", "d", "e"))


@dataclass(frozen=True)
class DiagnosticThresholds:
    """Degeneracy thresholds of the diagnostics; defaults: the paper's, and for (e) this
    project's (how each was chosen: docs/protocol.md).

    Fields: (a) h_norm_explosion_ratio, (b) g_norm_floor, (c) stability_drift_ceiling, (d)
    frozen_acc_margin_pp (percentage points), (e) backward_gain_floor; `extra`: thresholds of
    registered diagnostics, by their `threshold_field`.
    """

    g_norm_floor: float = 1e-7
    h_norm_explosion_ratio: float = 50.0
    stability_drift_ceiling: float = 0.30
    frozen_acc_margin_pp: float = 2.0
    backward_gain_floor: float = 1e-3
    extra: dict = field(default_factory=dict)

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
            ("backward_gain_floor", self.backward_gain_floor, lambda v: v > 0,
             "a positive gain (default 1e-3)"),
        ]
        for name, value, ok, what in checks:
            if not is_finite_number(value) or not ok(value):
                raise ValueError(f"DiagnosticThresholds.{name} must be {what}; got {value!r}")
            if not isinstance(value, (int, float)):
                object.__setattr__(self, name, float(value))  # numpy scalars: plain floats
        if not isinstance(self.extra, dict):
            raise TypeError(f"DiagnosticThresholds.extra must be a dict of threshold field -> "
                            f"number, got {type(self.extra).__name__}")
        for name, value in self.extra.items():
            if name in self._builtin_fields():
                raise ValueError(f"DiagnosticThresholds.extra[{name!r}]: {name} is a field of "
                                 f"its own; pass DiagnosticThresholds({name}=...)")
            if not is_finite_number(value):
                raise ValueError(f"DiagnosticThresholds.extra[{name!r}] must be a finite "
                                 f"number, got {value!r}")

    @classmethod
    def _builtin_fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != "extra")

    def get(self, name: str, default: Optional[float] = None) -> float:
        """The threshold called `name`: a field, an `extra` entry, or `default`."""
        if name in self._builtin_fields():
            return getattr(self, name)
        if name in self.extra:
            return float(self.extra[name])
        if default is None:
            raise KeyError(f"no threshold {name!r}: pass DiagnosticThresholds(extra={{{name!r}: "
                           "value}}) or give the diagnostic a default_threshold")
        return float(default)

    def to_dict(self) -> dict:
        out = {name: getattr(self, name) for name in self._builtin_fields()}
        for d in DIAGNOSTICS.values():  # registered diagnostics' thresholds, defaults included
            if d.threshold_field not in out:
                out[d.threshold_field] = self.get(d.threshold_field, d.default_threshold)
        out.update({k: float(v) for k, v in self.extra.items()})
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "DiagnosticThresholds":
        """The thresholds of a saved report (a field missing from an older one keeps its default)."""
        builtin = cls._builtin_fields()
        return cls(**{k: v for k, v in d.items() if k in builtin},
                   extra={k: v for k, v in d.items() if k not in builtin and k != "extra"})


def thresholds_or_default(thresholds, name: str = "thresholds") -> DiagnosticThresholds:
    """`thresholds`, or the paper's defaults for None; a TypeError naming `name` otherwise."""
    if thresholds is None:
        return DiagnosticThresholds()
    if not isinstance(thresholds, DiagnosticThresholds):
        raise TypeError(f"{name} must be a DiagnosticThresholds, got {type(thresholds).__name__}")
    return thresholds


@dataclass
class DiagnosticReport:
    """Result of running the protocol on one trained network."""

    method_name: str
    notes: str
    residual_norms: list[float]
    bp_grad_norms: list[float]
    stability_layer: int
    cross_batch_stability: float
    headline_acc: float
    frozen_baseline_acc: Optional[float]
    thresholds: DiagnosticThresholds = field(default_factory=DiagnosticThresholds)
    # context beyond the original report
    headline_acc_source: str = "provided"   # or "measured on the eval batches"
    num_eval_samples: Optional[int] = None
    num_eval_batches: Optional[int] = None
    input_reasons: dict = field(default_factory=dict)  # diagnostic key -> why its input is bad
    alignment: Optional[dict] = None        # Γ (alignment.GammaResult.to_dict()), if measured
    backward_gains: list = field(default_factory=list)  # (e) per layer; [] when not measured
    output_error_norm: Optional[float] = None  # median ||softmax - onehot||, if measured
    mode: str = PAPER                       # whose verdict `verdict` gives: "paper" or "robust"
    measurements: dict = field(default_factory=dict)  # registered measurements beyond the above

    def __post_init__(self):
        check_mode(self.mode)
        if self.cross_batch_stability is None:  # not measured: undefined
            self.cross_batch_stability = float("nan")

    def measured(self, name: str):
        """The value of measurement `name`: a field of the report, or a registered one's."""
        return getattr(self, name) if name in BUILTIN_MEASUREMENTS else self.measurements.get(name)

    # ------------------------------------------------------------------------------------------
    # Derived numbers
    # ------------------------------------------------------------------------------------------
    @property
    def block_growth(self) -> list[float]:
        """Per-block growth ||h_{l+1}|| / ||h_l|| of the median residual norms (nan if undefined)."""
        return block_growth(self.residual_norms)

    @property
    def max_block_growth(self) -> float:
        return max_block_growth(self.residual_norms)

    @property
    def cumulative_growth(self) -> float:
        h = self.residual_norms
        if len(h) >= 2 and is_finite_number(h[0]) and is_finite_number(h[-1]) and h[0] > 0:
            return h[-1] / h[0]
        return float("nan")

    @property
    def frozen_margin_pp(self) -> Optional[float]:
        """100 * (headline - frozen), rounded to 1e-9 (so 0.359 - 0.339 is exactly 2.0 pp)."""
        return frozen_margin_pp(self.headline_acc, self.frozen_baseline_acc)

    # ------------------------------------------------------------------------------------------
    # Verdicts: every diagnostic of the table
    # ------------------------------------------------------------------------------------------
    @property
    def fired(self) -> dict[str, Optional[bool]]:
        """{key: True (fired) | False (passed) | None (skipped)} for every diagnostic."""
        return {k: d.fires(self) for k, d in DIAGNOSTICS.items()}

    @property
    def statistics(self) -> dict[str, float]:
        """{key: the statistic each diagnostic compares with its threshold}."""
        return {k: d.value(self) for k, d in DIAGNOSTICS.items()}

    @property
    def reasons(self) -> dict[str, str]:
        """Why a diagnostic fired on bad input (NaN, inf, zero, empty), by key."""
        out = {k: d.reason(self) for k, d in DIAGNOSTICS.items()}
        return {k: v for k, v in out.items() if v is not None}

    @property
    def messages(self) -> dict[str, str]:
        """The firing sentence of every diagnostic that fired, by key."""
        return {k: DIAGNOSTICS[k].message(self) for k, v in self.fired.items() if v}

    def fired_names_for(self, mode: Optional[str] = None) -> list[str]:
        """The names of the diagnostics that fired and count in `mode` (default: the report's)."""
        fired = self.fired
        return [DIAGNOSTICS[k].name for k in mode_keys(mode or self.mode) if fired[k]]

    @property
    def fired_names(self) -> list[str]:
        """The names of the diagnostics that fired and count in this report's mode."""
        return self.fired_names_for(self.mode)

    def verdict_for(self, mode: str) -> Optional[str]:
        """The verdict in `mode`: "trustworthy" or "needs walk-back: " + the fired names joined by
        "; ", a name followed by "(could not be computed: <reason>)" when bad input fired it;
        None for "robust" when the backward gain was not measured (an older fa-eval's report)."""
        check_mode(mode)
        if mode == ROBUST and not self.backward_gains:
            return None
        fired = self.fired
        names = [DIAGNOSTICS[k].verdict_name(self) for k in mode_keys(mode) if fired[k]]
        return "trustworthy" if not names else "needs walk-back: " + "; ".join(names)

    @property
    def verdicts(self) -> dict[str, Optional[str]]:
        """{"paper": ..., "robust": ...}: both verdicts, whatever the report's mode."""
        return {m: self.verdict_for(m) for m in MODES}

    @property
    def verdict(self) -> str:
        """The verdict of the report's mode (the paper's by default)."""
        v = self.verdict_for(self.mode)
        if v is None:
            raise ValueError("this report has no backward gains (it was made by an older fa-eval), "
                             "so it has no robust verdict: diagnose the model again, or read "
                             "report.verdict_for('paper')")
        return v

    @property
    def trustworthy(self) -> bool:
        return self.verdict == "trustworthy"

    @property
    def b_cause(self) -> Optional[str]:
        """Why (b) fired: "backward pass collapsed" or "little error left to propagate"; None when
        (b) did not fire or the gain was not measured."""
        return b_cause(self) if DIAGNOSTICS["b"].fires(self) else None

    # the original report's per-diagnostic properties
    @property
    def residual_stream_exploded(self) -> bool:
        return bool(DIAGNOSTICS["a"].fires(self))

    @property
    def bp_grad_at_floor(self) -> bool:
        return bool(DIAGNOSTICS["b"].fires(self))

    @property
    def reference_drift_dominated(self) -> bool:
        return bool(DIAGNOSTICS["c"].fires(self))

    @property
    def frozen_baseline_undercut(self) -> Optional[bool]:
        """True if the headline fails to clear the frozen baseline by the margin; None if skipped."""
        return DIAGNOSTICS["d"].fires(self)

    # ------------------------------------------------------------------------------------------
    # Text
    # ------------------------------------------------------------------------------------------
    def __str__(self) -> str:
        rule = "=" * 72
        lines = [rule, f"FA Diagnostic Protocol Report — method: {self.method_name}"]
        if self.notes:
            lines.append(f"Notes: {self.notes}")
        if self.num_eval_samples is not None:
            lines.append(f"Eval: {self.num_eval_samples} samples in {self.num_eval_batches} batches")
        lines.append(f"Mode: {self.mode} ({MODE_TEXT[self.mode]})")
        lines.append(rule)
        fired = self.fired
        for i, (key, diag) in enumerate(DIAGNOSTICS.items()):
            if i:
                lines.append("")
            lines.extend(diag.lines(self))
            if fired[key]:
                aside = "" if diag.counts_in(self.mode) else \
                    f" [not counted in the {self.mode} verdict]"
                lines.append(f"    FLAG: {diag.message(self)} — {diag.meaning}{aside}")
        if self.alignment is not None:
            lines.append("")
            lines.extend(_alignment_lines(self.alignment))
        lines.append("")
        lines.append(f"VERDICT: {self.verdict}")
        for other in MODES:
            if other != self.mode:
                v = self.verdict_for(other)
                lines.append(f"  ({self.mode} mode; {other} mode would say: "
                             + (v if v is not None else "— (backward gain not measured)") + ")")
        lines.append(rule)
        return "\n".join(lines)

    # ------------------------------------------------------------------------------------------
    # Dict / JSON
    # ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain, strict-JSON-safe dict: non-finite numbers become None, with the reason kept."""
        num = finite_or_none
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
            "stability_layer": int(self.stability_layer),
            "cross_batch_stability": num(self.cross_batch_stability),
            "headline_acc": num(self.headline_acc),
            "headline_acc_source": self.headline_acc_source,
            "frozen_baseline_acc": num(self.frozen_baseline_acc),
            "frozen_margin_pp": num(self.frozen_margin_pp),
            "num_eval_samples": _plain_int(self.num_eval_samples),
            "num_eval_batches": _plain_int(self.num_eval_batches),
            "statistics": {k: num(v) for k, v in self.statistics.items()},
            "fired": fired,
            "diagnostics": {k: ("skipped" if v is None else "fired" if v else "passed")
                            for k, v in fired.items()},
            "names": diagnostic_names(),
            "reasons": self.reasons,
            "messages": self.messages,
            "input_reasons": dict(self.input_reasons),
            "verdict": self.verdict,
            "mode": self.mode,
            "verdicts": self.verdicts,
            "backward_gains": [num(v) for v in self.backward_gains],
            "output_error_norm": num(self.output_error_norm),
            "b_cause": self.b_cause,
            "thresholds": self.thresholds.to_dict(),
            "alignment": self.alignment,
            **({"measurements": {k: ([num(x) for x in v] if isinstance(v, (list, tuple))
                                     else num(v)) for k, v in self.measurements.items()}}
               if self.measurements else {}),
        }

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), allow_nan=False, **kw)

    @classmethod
    def from_dict(cls, d: dict) -> "DiagnosticReport":
        version = d.get("schema_version")
        if version not in READABLE_SCHEMAS:
            raise ValueError(f"report schema_version {version!r} is not one this fa-eval reads "
                             f"({', '.join(map(str, READABLE_SCHEMAS))}); upgrade fa-eval or "
                             "regenerate the report")
        val = nan_if_none
        frozen = d.get("frozen_baseline_acc")
        if frozen is None and d.get("diagnostics", {}).get("d") == "fired":
            frozen = float("nan")  # it was provided but not finite
        return cls(
            method_name=d["method_name"], notes=d.get("notes", ""),
            residual_norms=[val(v) for v in d["residual_norms"]],
            bp_grad_norms=[val(v) for v in d["bp_grad_norms"]],
            stability_layer=d["stability_layer"],
            cross_batch_stability=val(d["cross_batch_stability"]),
            headline_acc=val(d["headline_acc"]),
            frozen_baseline_acc=frozen,
            thresholds=DiagnosticThresholds.from_dict(d["thresholds"]),
            headline_acc_source=d.get("headline_acc_source", "provided"),
            num_eval_samples=d.get("num_eval_samples"),
            num_eval_batches=d.get("num_eval_batches"),
            input_reasons=dict(d.get("input_reasons", {})),
            alignment=d.get("alignment"),
            backward_gains=[val(v) for v in d.get("backward_gains", [])],
            output_error_norm=(None if d.get("output_error_norm") is None
                               else float(d["output_error_norm"])),
            mode=d.get("mode", PAPER),
            measurements={k: [val(x) for x in v] if isinstance(v, list) else val(v)
                          for k, v in d.get("measurements", {}).items()},
        )

    @classmethod
    def from_json(cls, text: str) -> "DiagnosticReport":
        return cls.from_dict(json.loads(text))

    # ------------------------------------------------------------------------------------------
    # The reporting template (docs/reporting.md), one row
    # ------------------------------------------------------------------------------------------
    def template_row(self, fmt: str = "markdown", **context: Any) -> str:
        """One row of the reporting template (docs/reporting.md), as markdown or LaTeX (booktabs).

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
            cols = "l" * len(cells)
            return "\n".join([
                f"\\begin{{tabular}}{{{cols}}}", "\\toprule",
                " & ".join(latex_escape(c) for c in TEMPLATE_COLUMNS) + " \\\\", "\\midrule",
                " & ".join(latex_escape(c) for c in cells) + " \\\\", "\\bottomrule",
                "\\end{tabular}"])
        raise ValueError(f"fmt must be 'markdown' or 'latex', got {fmt!r}")


def measured_fields(values: dict) -> dict:
    """Report keyword arguments from {measurement: value}: the built-in measurements are the
    report's fields, the registered ones go in `measurements`."""
    return {**{k: v for k, v in values.items() if k in BUILTIN_MEASUREMENTS},
            "measurements": {k: v for k, v in values.items() if k not in BUILTIN_MEASUREMENTS}}


MODE_TEXT = {PAPER: "the paper's verdict: (a)-(d), (e) shown",
             ROBUST: "(a), (c), (d) and the backward gain (e) in place of the floor (b)"}


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
