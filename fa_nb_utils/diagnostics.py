"""The diagnostics table: every diagnostic of the protocol, declared once (docs/protocol.md).

    DIAGNOSTICS["a"].fires(report)      # True / False / None (skipped: its input was not given)
    DIAGNOSTICS["a"].message(report)    # "max per-block growth 56.2x > threshold 50x"

A `Diagnostic` holds everything about one diagnostic (its fields). The report, monitor, replay,
audit table and partial audit loop over `DIAGNOSTICS`, so a `register_diagnostic(...)` call is
the only edit a new diagnostic needs. Built in: the paper's (a)-(d) and fa-eval's (e), the
backward gain.
Bad input (NaN, inf, zero, missing, degenerate) makes a diagnostic fire with a reason, never pass.
Not here: computing the numbers (measures.py, protocol.py), the report object (report.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Optional

from .measures import (ACCURACIES, BUILTIN_MEASUREMENTS, MEASUREMENTS, Measurement,
                       register_measurement, unregister_measurement)
from .validation import is_finite_number

Report = Any  # a report.DiagnosticReport (not imported: report.py imports this module)

ABOVE, BELOW = "above", "below"
BUILTIN_KEYS = ("a", "b", "c", "d", "e")  # the paper's four and the gain, below
# What an audit from logs without per-layer numbers can say about a diagnostic (partial_audit.py):
PARTIAL_BOUND = "growth lower bound"     # (||h_L|| / ||h_0||)^(1/L) bounds the max growth
PARTIAL_EXACT = "exact per seed"         # needs only final accuracies
PARTIAL_PROXY = "proxy only"             # a related number is logged, but does not bound it
PARTIAL_NOT_MEASURED = "not measured"    # needs what such logs do not keep
PARTIAL_KINDS = (PARTIAL_BOUND, PARTIAL_EXACT, PARTIAL_PROXY, PARTIAL_NOT_MEASURED)

PAPER, ROBUST = "paper", "robust"
UNCOMPUTED = "could not be computed"  # a verdict entry fired by bad input (Diagnostic.verdict_name)
MODES = (PAPER, ROBUST)  # the verdicts a report gives: the paper's, and the gain in place of (b)


class AuditColumn(NamedTuple):
    """What the full audit table (paper/audit.py) shows for a diagnostic: a column `label`, the
    number's name in the table's JSON, `value`: report -> number (None: the statistic), its
    format, and `after`: the key of the diagnostic whose column it follows (default: the
    table's order)."""

    label: str
    number: str
    value: Optional[Callable[[Report], Optional[float]]] = None
    format: str = ".4g"
    after: Optional[str] = None


@dataclass(frozen=True)
class Diagnostic:
    """One diagnostic of the protocol (see the module docstring).

    needs: the measurements (measures.MEASUREMENTS; a `Measurement` given here is registered
        with it) or "headline_acc" / "frozen_baseline_acc" the statistic reads.
    statistic: report -> float compared with the threshold (NaN when undefined); default: the
        one measurement it needs (its deepest layer's value if per layer).
    input_problem: report -> reason or None; a reason makes the diagnostic fire with it.
    skipped: report -> bool; True when its optional input was not given ("skipped").
    describe: (value, threshold) -> the comparison as a sentence; meaning: what a firing means;
        advice: a longer explanation with {value} and {threshold} fields; section: report ->
        the lines of its section of the printed report; explain: report -> why the statistic
        fired it, or None.
    final_only: judged on the run's final numbers only (a replay's last entry).
    stops_by_default: in `Monitor()`'s default `stop_on`.
    partial: what the partial audit can say (one of PARTIAL_KINDS); partial_note says why.
    default_threshold: for a `threshold_field` DiagnosticThresholds lacks (a user's diagnostic).
    verdict_modes: the verdicts it counts in ("paper", "robust"); it is shown in every mode.
    scale: "log" (compared in decades) or "linear": how the threshold separation reports widths.
    short, audit: its table column header (default: the title) and its full audit table column.
    """

    key: str
    name: str
    title: str
    threshold_field: str
    direction: str
    statistic: Optional[Callable[[Report], float]] = None
    describe: Optional[Callable[[float, float], str]] = None
    meaning: str = ""
    advice: str = ""
    section: Optional[Callable[[Report], list]] = None
    input_problem: Callable[[Report], Optional[str]] = lambda r: None
    skipped: Callable[[Report], bool] = lambda r: False
    needs: tuple = ()
    final_only: bool = False
    stops_by_default: bool = False
    partial: str = PARTIAL_NOT_MEASURED
    partial_note: str = ""
    default_threshold: Optional[float] = None
    value_format: str = ".4g"
    unit: str = ""                 # printed after values and thresholds: "×", " pp"
    verdict_modes: tuple = MODES
    explain: Optional[Callable[[Report], Optional[str]]] = None
    scale: str = "log"
    short: str = ""
    audit: Optional[AuditColumn] = None
    brings: tuple = ()             # the Measurements registered with it (from `needs`)

    def __post_init__(self):
        modes = self.verdict_modes
        if isinstance(modes, str) or not modes or any(m not in MODES for m in modes):
            raise ValueError(f"diagnostic {self.key!r}: verdict_modes must be a non-empty tuple "
                             f"of {MODES}, got {modes!r}")
        if self.scale not in ("log", "linear"):
            raise ValueError(f"diagnostic {self.key!r}: scale must be 'log' or 'linear'")
        if not self.key or not isinstance(self.key, str) or not self.key.isidentifier():
            raise ValueError(f"a diagnostic key must be a short identifier like 'a', got {self.key!r}")
        if self.direction not in (ABOVE, BELOW):
            raise ValueError(f"diagnostic {self.key!r}: direction must be {ABOVE!r} or {BELOW!r}")
        if self.partial not in PARTIAL_KINDS:
            raise ValueError(f"diagnostic {self.key!r}: partial must be one of {PARTIAL_KINDS}")
        if isinstance(self.needs, (str, Measurement)):
            raise ValueError(f"diagnostic {self.key!r}: needs must be a tuple, got {self.needs!r}")
        brought = {m.name: m for m in (*self.brings, *self.needs) if isinstance(m, Measurement)}
        names = tuple(n.name if isinstance(n, Measurement) else n for n in self.needs)
        object.__setattr__(self, "needs", names)
        object.__setattr__(self, "brings", tuple(brought.values()))
        unknown = [n for n in names if n not in MEASUREMENTS and n not in ACCURACIES
                   and n not in brought]
        if unknown:
            raise ValueError(f"diagnostic {self.key!r}: needs unknown measurement(s) {unknown}; "
                             f"choose from {(*MEASUREMENTS, *ACCURACIES)} or pass a Measurement")
        measured = [n for n in names if n not in ACCURACIES]
        if self.statistic is None and len(measured) != 1:
            raise ValueError(f"diagnostic {self.key!r}: give a statistic (report -> float), or "
                             f"need exactly one measurement to use its value; needs {names}")
        if not self.meaning:
            object.__setattr__(self, "meaning", f"{self.name}.")

    @property
    def label(self) -> str:
        """"(a) residual stream exploded"."""
        return f"({self.key}) {self.name}"

    def threshold(self, thresholds) -> float:
        return thresholds.get(self.threshold_field, self.default_threshold)

    def value(self, report: Report) -> float:
        return _number(self.statistic or self._measured, report)

    def _measured(self, report: Report):
        """The default statistic: the one measurement it needs (the deepest layer's value)."""
        v = report.measured(next(n for n in self.needs if n not in ACCURACIES))
        return v[-1] if isinstance(v, (list, tuple)) else v

    def lines(self, report: Report) -> list[str]:
        """This diagnostic's section of the printed report (`section`, or its statistic)."""
        if self.section is not None:
            return self.section(report)
        return [f"({self.key}) {self.title}: {self.value(report):{self.value_format}}{self.unit}"]

    @property
    def audit_column(self) -> AuditColumn:
        return self.audit or AuditColumn(f"{self.title} ({self.key})", self.key,
                                         format=self.value_format)

    def audit_value(self, report: Report) -> float:
        """The number its full-audit-table column shows (NaN when undefined)."""
        return _number(self.audit_column.value or self.value, report)

    def is_skipped(self, report: Report) -> bool:
        """Its optional input was not given (`skipped`), or a registered measurement it needs was
        not taken (a report made before it was registered): it neither fires nor passes."""
        return self.skipped(report) or any(
            n not in BUILTIN_MEASUREMENTS and n not in ACCURACIES and report.measured(n) is None
            for n in self.needs)

    def reason(self, report: Report) -> Optional[str]:
        """Why this diagnostic fires on bad input (or None)."""
        if self.is_skipped(report):
            return None
        given = report.input_reasons.get(self.key)
        if given:
            return given
        problem = self.input_problem(report)
        if problem:
            return problem
        v = self.value(report)
        if math.isnan(v):
            return f"{self.title}: statistic undefined (NaN)"
        return None

    def fires(self, report: Report) -> Optional[bool]:
        """True (fires), False (passes) or None (skipped: its optional input was not given)."""
        if self.is_skipped(report):
            return None
        if self.reason(report) is not None:
            return True
        v, t = self.value(report), self.threshold(report.thresholds)
        return bool(v > t) if self.direction == ABOVE else bool(v < t)

    def message(self, report: Report) -> str:
        """The firing sentence: the bad-input reason, or the comparison with the threshold (and
        `explain`'s clause when the diagnostic has one)."""
        why = self.reason(report)
        if why:
            return why
        v, t = self.value(report), self.threshold(report.thresholds)
        text = (self.describe(v, t) if self.describe is not None else
                f"{self.title} {v:{self.value_format}}{self.unit} "
                f"{'>' if self.direction == ABOVE else '<'} threshold {t:g}{self.unit}")
        cause = self.explain(report) if self.explain is not None else None
        return f"{text}: {cause}" if cause else text

    def verdict_name(self, report: Report) -> str:
        """How a firing reads in the verdict: the name alone when the statistic fired it, with
        "(could not be computed: <reason>)" when bad input or an undefined statistic did."""
        why = self.reason(report)
        return self.name if why is None else f"{self.name} ({UNCOMPUTED}: {why})"

    def counts_in(self, mode: str) -> bool:
        """Whether this diagnostic counts in the verdict of `mode` ("paper" or "robust")."""
        return mode in self.verdict_modes


def _number(fn: Callable[[Report], Any], report: Report) -> float:
    """fn(report) as a float; NaN where it is undefined (an empty or missing input)."""
    try:
        v = fn(report)
    except (IndexError, ValueError, TypeError, ZeroDivisionError):
        return float("nan")
    return float("nan") if v is None else float(v)


DIAGNOSTICS: dict[str, Diagnostic] = {}


def register_diagnostic(diag: Diagnostic, *, replace: bool = False) -> Diagnostic:
    """Add a diagnostic to the table; it then appears in every report, monitor, replay and table."""
    if not isinstance(diag, Diagnostic):
        raise TypeError(f"register_diagnostic takes a Diagnostic, got {type(diag).__name__}")
    if diag.key in DIAGNOSTICS and not replace:
        raise ValueError(f"a diagnostic with key {diag.key!r} is already registered "
                         f"({DIAGNOSTICS[diag.key].name!r}); pass replace=True to redefine it")
    if diag.key == "nonfinite":
        raise ValueError("'nonfinite' is the monitor's own stop reason; choose another key")
    if diag.key not in BUILTIN_KEYS and diag.partial in (PARTIAL_BOUND, PARTIAL_EXACT):
        raise ValueError(f"diagnostic {diag.key!r}: the partial audit computes {PARTIAL_BOUND!r} "
                         f"and {PARTIAL_EXACT!r} for (a) and (d) only; declare "
                         f"{PARTIAL_NOT_MEASURED!r} or {PARTIAL_PROXY!r}")
    after, seen = diag.audit_column.after, {diag.key}
    while after in DIAGNOSTICS or after == diag.key:   # `after` must lead back to the table
        if after in seen:
            raise ValueError(f"diagnostic {diag.key!r}: its audit column is placed after "
                             f"{diag.audit_column.after!r}, which leads back to itself; name a "
                             "diagnostic placed by the table's order, or None")
        seen.add(after)
        after = DIAGNOSTICS[after].audit_column.after
    for m in diag.brings:
        register_measurement(m)
    DIAGNOSTICS[diag.key] = diag
    return diag


def unregister_diagnostic(key: str) -> None:
    """Remove a diagnostic registered with `register_diagnostic` (the built-in five stay), and
    the measurements it brought that no other diagnostic needs."""
    if key in BUILTIN_KEYS:
        raise ValueError(f"diagnostic {key!r} is built in (the paper's four and the backward "
                         "gain) and cannot be removed")
    diag = DIAGNOSTICS.pop(key, None)
    needed = {n for d in DIAGNOSTICS.values() for n in d.needs}
    for m in (diag.brings if diag is not None else ()):
        if m.name not in needed:
            unregister_measurement(m.name)


def diagnostic_keys() -> tuple[str, ...]:
    """The keys of the diagnostics table, in its order (registered diagnostics included)."""
    return tuple(DIAGNOSTICS)


def audit_order() -> tuple[str, ...]:
    """The diagnostics' keys in the full audit table's column order: the table's, a column
    declared `after` another diagnostic right behind that one's."""
    anchor = {k: d.audit_column.after for k, d in DIAGNOSTICS.items()}
    out: list[str] = []

    def place(k):
        out.append(k)
        for f in [f for f, a in anchor.items() if a == k]:
            place(f)
    for k, a in anchor.items():
        if a not in DIAGNOSTICS:
            place(k)
    return tuple(out)


def diagnostic_names() -> dict[str, str]:
    return {k: d.name for k, d in DIAGNOSTICS.items()}


def mode_keys(mode: str = PAPER) -> tuple[str, ...]:
    """The keys of the diagnostics that count in `mode`'s verdict, in the table's order."""
    check_mode(mode)
    return tuple(k for k, d in DIAGNOSTICS.items() if d.counts_in(mode))


def check_mode(mode) -> str:
    """`mode` if it is "paper" or "robust", else a ValueError that says what each means."""
    if mode not in MODES:
        raise ValueError(f"mode must be 'paper' (the paper's verdict: (a)-(d), the absolute "
                         f"gradient floor) or 'robust' ((b) replaced by (e), the backward gain); "
                         f"got {mode!r}")
    return mode


def default_stop_keys(mode: str = PAPER) -> tuple[str, ...]:
    """The keys a `Monitor(mode=mode)` stops on by default (plus "nonfinite"): the table's
    `stops_by_default` diagnostics that count in that mode's verdict."""
    return tuple(k for k in mode_keys(mode) if DIAGNOSTICS[k].stops_by_default) + ("nonfinite",)


# --- (a) residual stream explosion ----------------------------------------------------------------
def block_growth(residual_norms) -> list[float]:
    """Per-block growth ||h_{l+1}|| / ||h_l|| of median residual norms (NaN where undefined)."""
    h = list(residual_norms)
    return [float(b) / float(a) if is_finite_number(a) and is_finite_number(b) and a > 0
            else float("nan") for a, b in zip(h, h[1:])]


def max_block_growth(residual_norms) -> float:
    """The largest per-block growth; inf is a value (finite norms whose ratio overflows), NaN
    means undefined."""
    g = block_growth(residual_norms)
    return max(g) if g and not any(math.isnan(v) for v in g) else float("nan")


def _problem_a(r) -> Optional[str]:
    h = r.residual_norms
    if len(h) < 2:
        return f"needs at least 2 hidden states (h_0..h_L), got {len(h)}"
    bad = [l for l, v in enumerate(h) if not is_finite_number(v)]
    if bad:
        return f"non-finite residual norm at layer(s) {bad}"
    zero = [l for l, v in enumerate(h) if v <= 0]
    if zero:
        return f"zero residual norm at layer(s) {zero}: the stream is degenerate"
    return None


def _explain_a(r) -> Optional[str]:
    """Finite norms whose ratio overflows: a real explosion past the float range, said as such."""
    overflow = [l for l, v in enumerate(block_growth(r.residual_norms)) if math.isinf(v)]
    return (f"per-block growth overflows the float range at block(s) {overflow}"
            if overflow else None)


def _section_a(r) -> list[str]:
    growth = block_growth(r.residual_norms)
    lines = ["(a) Residual stream norms ||h_l||_2 (median over eval samples):"]
    for l, v in enumerate(r.residual_norms):
        extra = f"   x{growth[l - 1]:.2f} over h_{l - 1}" if l >= 1 else ""
        lines.append(f"    h_{l}: {v:.3e}{extra}")
    lines.append(f"    max per-block growth {r.max_block_growth:.3g}x "
                 f"(cumulative h_L/h_0 {r.cumulative_growth:.3g}x)")
    return lines


# --- (b) BP gradient at the numerical floor -------------------------------------------------------
def _problem_b(r) -> Optional[str]:
    g = r.bp_grad_norms
    if not g:
        return "no BP gradient norms"
    if not is_finite_number(g[-1]):
        return f"non-finite deepest BP gradient norm (layer {len(g) - 1})"
    bad = [l for l, v in enumerate(g) if not is_finite_number(v)]
    if bad:
        return f"non-finite BP gradient norm at layer(s) {bad}"
    return None


def _section_b(r) -> list[str]:
    lines = ["(b) BP gradient norms ||g_l||_2 (median per sample; paper scale, /128):"]
    lines += [f"    g_{l}: {v:.3e}" for l, v in enumerate(r.bp_grad_norms)]
    return lines


COLLAPSED = "backward pass collapsed"
LITTLE_ERROR = "little error left to propagate"


def b_cause(r) -> Optional[str]:
    """Why (b)'s ||g_L|| is small, from the backward gain (e): COLLAPSED when the gain is under its
    floor too, LITTLE_ERROR when the gain is healthy (so the small gradient is a small output
    error: a network that fits its data), None when the gain was not measured or is not finite."""
    gains = r.backward_gains
    if not gains:
        return None
    if DIAGNOSTICS["b"].reason(r) is not None or DIAGNOSTICS["e"].reason(r) is not None:
        return None  # bad input: the numbers say nothing about a cause
    floor = DIAGNOSTICS["e"].threshold(r.thresholds)
    return COLLAPSED if gains[-1] < floor else LITTLE_ERROR


def _explain_b(r) -> Optional[str]:
    cause = b_cause(r)
    if cause is None:
        return None
    gain, floor = r.backward_gains[-1], DIAGNOSTICS["e"].threshold(r.thresholds)
    err = r.output_error_norm
    err_text = f", median ||e|| {err:.2e}" if is_finite_number(err) else ""
    if cause == COLLAPSED:
        return f"{cause} (backward gain {gain:.2e} < {floor:.0e}{err_text})"
    return f"{cause} (backward gain {gain:.2e} is healthy, >= {floor:.0e}{err_text})"


# --- (e) backward gain: how much of a unit output error reaches the deepest hidden layer ----------
def _problem_e(r) -> Optional[str]:
    g = r.backward_gains
    bad = [l for l, v in enumerate(g) if not is_finite_number(v)]
    if bad:
        return f"non-finite backward gain at layer(s) {bad}"
    # (b)'s bad input (non-finite gradients or logits) is bad input for the backward pass too:
    # the robust verdict, which does not count (b), must not pass it
    b_reason = r.input_reasons.get("b") or _problem_b(r)
    if b_reason:
        return f"{b_reason}: the backward pass is not sound"
    return None


def _section_e(r) -> list[str]:
    if not r.backward_gains:
        return ["(e) Backward gain: NOT MEASURED (a report or trace from before fa-eval "
                "recorded it) — diagnostic skipped."]
    lines = ["(e) Backward gain ||J_l^T u||, u = e/||e|| the unit output error (median per "
             "sample):"]
    lines += [f"    gain_{l}: {v:.3e}" for l, v in enumerate(r.backward_gains)]
    err = r.output_error_norm
    if err is not None:
        lines.append(f"    median output error ||softmax - onehot||: {err:.3e}")
    return lines


# --- (c) cross-batch direction stability ----------------------------------------------------------
def _problem_c(r) -> Optional[str]:
    if not is_finite_number(r.cross_batch_stability):
        return "stability undefined (a batch's mean BP gradient is zero or non-finite)"
    return None


def _section_c(r) -> list[str]:
    return [f"(c) Cross-batch direction stability at layer {r.stability_layer}: "
            f"{r.cross_batch_stability:.3f}"]


# --- (d) frozen-random-blocks baseline ------------------------------------------------------------
def frozen_margin_pp(headline_acc, frozen_baseline_acc) -> Optional[float]:
    """100 (headline - frozen), rounded to 1e-9 so that 0.359 - 0.339 is exactly 2.0 pp; None
    when no baseline is given, NaN when either accuracy is not finite."""
    if frozen_baseline_acc is None:
        return None
    if not (is_finite_number(headline_acc) and is_finite_number(frozen_baseline_acc)):
        return float("nan")
    return round(100.0 * (float(headline_acc) - float(frozen_baseline_acc)), 9)


def _problem_d(r) -> Optional[str]:
    if not is_finite_number(r.headline_acc):
        return "headline_acc is not a finite accuracy (NaN or inf)"
    m = r.frozen_margin_pp
    if m is not None and not math.isfinite(m):
        return "non-finite headline or frozen-baseline accuracy"
    return None


def _section_d(r) -> list[str]:
    acc_src = "" if r.headline_acc_source == "provided" else f" ({r.headline_acc_source})"
    if r.frozen_baseline_acc is None:
        return [f"(d) Headline acc: {r.headline_acc:.4f}{acc_src}; frozen-blocks baseline: NOT "
                "PROVIDED — diagnostic skipped."]
    return [f"(d) Headline acc: {r.headline_acc:.4f}{acc_src}, frozen-blocks baseline: "
            f"{r.frozen_baseline_acc:.4f}, margin: {r.frozen_margin_pp:+.2f} pp"]


register_diagnostic(Diagnostic(
    key="a", name="residual stream exploded", title="residual stream explosion",
    statistic=lambda r: max_block_growth(r.residual_norms),
    threshold_field="h_norm_explosion_ratio", direction=ABOVE,
    describe=lambda v, t: f"max per-block growth {v:.3g}× > threshold {t:g}×",
    meaning="residual stream exploded.",
    advice="the residual stream grew by {value:.3g}x in one block (threshold {threshold:g}x): "
           "the terminal LayerNorm divides the scale away, so accuracy can look fine while the "
           "hidden layers carry a scale the head ignores.",
    section=_section_a, input_problem=_problem_a, needs=("residual_norms",), explain=_explain_a,
    stops_by_default=True, partial=PARTIAL_BOUND, short="max growth",
    audit=AuditColumn("‖h_L‖", "h_L", lambda r: r.residual_norms[-1], ".2e"),
    partial_note="the L per-block growths multiply to ||h_L|| / ||h_0||, so their geometric mean "
                 "is a lower bound on the largest: it can fire, or leave (a) undetermined",
    value_format=".3g", unit="×"))

register_diagnostic(Diagnostic(
    key="b", name="BP grad at numerical floor", title="BP gradient at the numerical floor",
    statistic=lambda r: r.bp_grad_norms[-1], threshold_field="g_norm_floor", direction=BELOW,
    describe=lambda v, t: f"deepest median ||g_L|| = {v:.2e} < floor {t:.0e} (paper scale)",
    meaning="Γ measured against the numerical floor; not interpretable as credit alignment.",
    advice="the true BP gradient at the deepest layer is {value:.2e}, under the floor "
           "{threshold:.0e}: any alignment Γ there is a cosine against numerical noise, not "
           "evidence of credit alignment.",
    section=_section_b, input_problem=_problem_b, needs=("bp_grad_norms",),
    stops_by_default=True, partial=PARTIAL_PROXY, verdict_modes=(PAPER,), explain=_explain_b,
    short="‖g_L‖", audit=AuditColumn("‖g_L‖", "g_L", format=".2e"),
    partial_note="needs the deepest layer's median per-sample BP gradient on the paper scale; a "
                 "mid-layer norm does not bound it",
    value_format=".2e"))

register_diagnostic(Diagnostic(
    key="c", name="BP grad direction is drift-dominated",
    title="cross-batch direction stability",
    statistic=lambda r: r.cross_batch_stability, threshold_field="stability_drift_ceiling",
    direction=ABOVE,
    describe=lambda v, t: f"cross-batch direction stability {v:.3f} > ceiling {t:g}",
    meaning="reference vector is sample-invariant drift, not per-sample credit.",
    advice="the eval batches' mean BP gradients point the same way (mean cosine {value:.3f} > "
           "{threshold:g}): the reference direction is sample-invariant drift, not per-sample "
           "credit.",
    section=_section_c, input_problem=_problem_c, needs=("cross_batch_stability",),
    partial=PARTIAL_NOT_MEASURED, short="stability",
    audit=AuditColumn("stability (c)", "stability", format=".3f"),
    partial_note="needs the per-sample BP gradients of several eval batches",
    value_format=".3f", scale="linear"))

register_diagnostic(Diagnostic(
    key="d", name="deep blocks fail to beat frozen-random baseline",
    title="frozen-random-blocks baseline",
    statistic=lambda r: r.frozen_margin_pp, threshold_field="frozen_acc_margin_pp",
    direction=BELOW,
    describe=lambda v, t: f"margin {v:+.2f} pp over the frozen baseline < required {t:g} pp",
    meaning="deep blocks are not contributing over a random untrained baseline.",
    advice="the headline accuracy beats the frozen-random-blocks baseline by only {value:+.2f} pp "
           "(needs {threshold:g} pp): the trained blocks add nothing a random network does not.",
    section=_section_d, input_problem=_problem_d,
    # skipped without a baseline, unless the headline accuracy itself is bad input (not finite,
    # or measured on non-finite logits: an input reason)
    skipped=lambda r: r.frozen_baseline_acc is None and is_finite_number(r.headline_acc)
    and not r.input_reasons.get("d"),
    needs=("headline_acc", "frozen_baseline_acc"), final_only=True,
    partial=PARTIAL_EXACT, partial_note="needs only the final accuracies", short="margin",
    audit=AuditColumn("(d) margin pp", "margin_pp", format="+.2f"),
    value_format="+.2f", unit=" pp", scale="linear"))

register_diagnostic(Diagnostic(
    key="e", name=COLLAPSED, title="backward gain",
    statistic=lambda r: r.backward_gains[-1], threshold_field="backward_gain_floor",
    direction=BELOW,
    describe=lambda v, t: f"deepest median backward gain {v:.2e} < floor {t:.0e}",
    meaning="the backward pass no longer carries output error to the hidden layers; Γ there "
            "is measured against a gradient that carries no credit.",
    advice="a unit output error reaches the deepest hidden layer with norm {value:.2e} (floor "
           "{threshold:.0e}): the backward pass has collapsed (for a pre-LN network, typically "
           "the terminal LayerNorm dividing by an exploded stream), whatever error is left.",
    section=_section_e, input_problem=_problem_e,
    skipped=lambda r: not r.backward_gains, needs=("backward_gains",),
    stops_by_default=True, partial=PARTIAL_NOT_MEASURED, verdict_modes=(ROBUST,), short="gain",
    audit=AuditColumn("backward gain (e)", "gain_L", format=".2e", after="b"),
    partial_note="needs the per-sample backward of a unit output error at the deepest layer",
    value_format=".2e"))
