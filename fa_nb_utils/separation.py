"""Threshold separation: which thresholds give the same verdicts on runs known healthy or failing.

    sep = threshold_separation(healthy=[report_bp_42, report_bp_123],
                               failing=[report_dfa_42, report_dfa_123])
    sep["a"].interval, sep["a"].width_decades

Per diagnostic, the thresholds under which every healthy run passes and every failing run fires
form an interval: [max(healthy), min(failing)) for a statistic that fires above its threshold,
(max(failing), min(healthy)] for one that fires below; empty when the two overlap. Its width is
in decades for log-scale statistics, in the statistic's units otherwise. A run whose statistic
is not finite or skipped is left out of that row (`excluded`). `failing` may map diagnostic keys
to their own failing runs.
Not here: the diagnostics (diagnostics.py), the reports (report.py).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Union

from .diagnostics import ABOVE, DIAGNOSTICS
from .report import DiagnosticReport, DiagnosticThresholds, thresholds_or_default
from .validation import finite_or_none

Reports = Sequence[DiagnosticReport]


@dataclass(frozen=True)
class SeparationRow:
    """One diagnostic's separation. `interval` is (lo, hi) or None when no threshold separates;
    `closed` says which ends belong to it ("[)" for fires-above, "(]" for fires-below)."""

    key: str
    label: str
    direction: str
    scale: str
    n_healthy: int
    n_failing: int
    healthy_range: Optional[tuple]      # (min, max) of the healthy runs' statistic
    failing_range: Optional[tuple]
    interval: Optional[tuple]
    closed: str
    default: float
    excluded: int                       # runs left out (non-finite statistic, or skipped)
    note: str = ""

    @property
    def width(self) -> Optional[float]:
        """hi - lo in the statistic's units (None when nothing separates)."""
        return None if self.interval is None else self.interval[1] - self.interval[0]

    @property
    def width_decades(self) -> Optional[float]:
        """log10(hi / lo) for a log-scale statistic with a positive interval, else None."""
        if self.interval is None or self.scale != "log" or self.interval[0] <= 0:
            return None
        return math.log10(self.interval[1] / self.interval[0])

    def contains(self, t: float) -> bool:
        """Whether threshold `t` keeps the intended verdicts (the interval with its own ends)."""
        if self.interval is None:
            return False
        lo, hi = self.interval
        if self.direction == ABOVE:   # [lo, hi)
            return lo <= t < hi
        return lo < t <= hi           # (lo, hi]

    @property
    def default_inside(self) -> bool:
        return self.contains(self.default)

    @property
    def margins(self) -> Optional[tuple]:
        """(default - lo, hi - default), in decades for log scale, else in units; None when
        nothing separates. Negative on the side the default lies beyond."""
        if self.interval is None:
            return None
        lo, hi = self.interval
        if self.scale == "log" and lo > 0 and self.default > 0:
            return math.log10(self.default / lo), math.log10(hi / self.default)
        return self.default - lo, hi - self.default

    def to_dict(self) -> dict[str, Any]:
        num = finite_or_none
        rng = lambda r: None if r is None else [num(r[0]), num(r[1])]
        m = self.margins
        return {"key": self.key, "label": self.label, "direction": self.direction,
                "scale": self.scale, "n_healthy": self.n_healthy, "n_failing": self.n_failing,
                "healthy_range": rng(self.healthy_range), "failing_range": rng(self.failing_range),
                "interval": rng(self.interval), "closed": self.closed,
                "width": num(self.width), "width_decades": num(self.width_decades),
                "default": self.default, "default_inside": self.default_inside,
                "margins": None if m is None else [num(m[0]), num(m[1])],
                "excluded": self.excluded, "note": self.note}


@dataclass(frozen=True)
class Separation:
    """Every diagnostic's SeparationRow, in the table's order."""

    rows: tuple
    thresholds: DiagnosticThresholds

    def __getitem__(self, key: str) -> SeparationRow:
        for r in self.rows:
            if r.key == key:
                return r
        raise KeyError(f"no separation row {key!r}; rows: {', '.join(r.key for r in self.rows)}")

    def table(self) -> list[dict]:
        """Display rows (strings), one per diagnostic."""
        out = []
        for r in self.rows:
            fmt = DIAGNOSTICS[r.key].value_format if r.key in DIAGNOSTICS else ".3g"
            f = lambda v: "—" if v is None or not math.isfinite(v) else f"{v:{fmt}}"
            rng = lambda p: "—" if p is None else f"{f(p[0])} … {f(p[1])}"
            if r.interval is None:
                interval = "none: " + (r.note or "the ranges overlap")
                width = margin = "—"
            else:
                lo_b, hi_b = r.closed
                interval = f"{lo_b}{f(r.interval[0])}, {f(r.interval[1])}{hi_b}"
                dec = r.width_decades is not None
                unit, spec = (" dec", ".2f") if dec else ("", ".3g")
                w = r.width_decades if dec else r.width
                width = f"{w:{spec}}{unit}"
                m = r.margins
                margin = (f"{m[0]:+{spec}} / {m[1]:+{spec}}{unit}" +
                          ("" if r.default_inside else " (outside)"))
            out.append({"diagnostic": r.label, "fires": r.direction,
                        "healthy (min … max)": rng(r.healthy_range),
                        "failing (min … max)": rng(r.failing_range),
                        "separating thresholds": interval, "width": width,
                        "default": f(r.default), "default margins (low / high)": margin,
                        "runs (healthy, failing, left out)":
                            f"{r.n_healthy}, {r.n_failing}, {r.excluded}"})
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"rows": {r.key: r.to_dict() for r in self.rows},
                "thresholds": self.thresholds.to_dict()}

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), allow_nan=False, **kw)

    def __str__(self) -> str:
        lines = ["Threshold separation (thresholds that keep every healthy run passing and every "
                 "failing run firing):"]
        for row, r in zip(self.table(), self.rows):
            lines.append(f"  {r.label}: healthy {row['healthy (min … max)']}, failing "
                         f"{row['failing (min … max)']} -> {row['separating thresholds']}"
                         + (f", width {row['width']}, default {row['default']} "
                            f"(margins {row['default margins (low / high)']})"
                            if r.interval is not None else ""))
        return "\n".join(lines)


def _check_reports(name: str, reports) -> list[DiagnosticReport]:
    if isinstance(reports, DiagnosticReport) or isinstance(reports, (str, bytes)):
        raise TypeError(f"{name} must be a list of DiagnosticReport, got a single "
                        f"{type(reports).__name__}; wrap it in a list")
    try:
        out = list(reports)
    except TypeError:
        raise TypeError(f"{name} must be a list of DiagnosticReport, got "
                        f"{type(reports).__name__}") from None
    bad = [i for i, r in enumerate(out) if not isinstance(r, DiagnosticReport)]
    if bad:
        raise TypeError(f"{name}[{bad[0]}] is a {type(out[bad[0]]).__name__}, not a "
                        "DiagnosticReport (diagnose(...) returns one; DiagnosticReport.from_dict "
                        "reads a saved one)")
    return out


def _values(diag, reports: list[DiagnosticReport]) -> tuple[list[float], int]:
    vals, left_out = [], 0
    for r in reports:
        if diag.is_skipped(r) or diag.reason(r) is not None:
            left_out += 1
            continue
        v = diag.value(r)
        if math.isfinite(v):
            vals.append(v)
        else:
            left_out += 1
    return vals, left_out


def threshold_separation(healthy: Reports,
                         failing: Union[Reports, Mapping[str, Reports]],
                         thresholds: Optional[DiagnosticThresholds] = None,
                         keys: Optional[Sequence[str]] = None) -> Separation:
    """Per diagnostic, the interval of thresholds that passes every healthy run and fires every
    failing one (see the module docstring). `thresholds`: whose defaults are placed in it (the
    paper's by default). `keys`: the diagnostics (default: every one of the table)."""
    thresholds = thresholds_or_default(thresholds)
    healthy = _check_reports("healthy", healthy)
    if isinstance(keys, str):
        raise TypeError(f"keys must be a list of diagnostic keys, e.g. ['a', 'e'], got the "
                        f"string {keys!r}")
    keys = list(DIAGNOSTICS) if keys is None else list(keys)
    unknown = [k for k in keys if k not in DIAGNOSTICS]
    if unknown:
        raise ValueError(f"unknown diagnostic key(s) {unknown}; choose from {', '.join(DIAGNOSTICS)}")
    if isinstance(failing, Mapping):
        extra = [k for k in failing if k not in DIAGNOSTICS]
        if extra:
            raise ValueError(f"failing maps unknown diagnostic key(s) {extra}; choose from "
                             f"{', '.join(DIAGNOSTICS)}")
        failing_of = {k: _check_reports(f"failing[{k!r}]", failing.get(k, [])) for k in keys}
    else:
        common = _check_reports("failing", failing)
        failing_of = {k: common for k in keys}
    if not healthy and not any(failing_of.values()):
        raise ValueError("threshold_separation needs at least one healthy or failing report")
    rows = []
    for k in keys:
        diag = DIAGNOSTICS[k]
        h, h_out = _values(diag, healthy)
        f, f_out = _values(diag, failing_of[k])
        hr = (min(h), max(h)) if h else None
        fr = (min(f), max(f)) if f else None
        interval, note = None, ""
        if not h or not f:
            note = "no " + ("healthy" if not h else "failing") + " run with a finite statistic"
        else:
            # fires above: healthy runs must lie below the interval, failing ones above it;
            # fires below: the other way round
            below, above = (("healthy", h), ("failing", f)) if diag.direction == ABOVE \
                else (("failing", f), ("healthy", h))
            lo, hi = max(below[1]), min(above[1])
            if lo < hi:
                interval = (lo, hi)
            else:
                note = (f"a {below[0]} run ({lo:{diag.value_format}}) is at or above a "
                        f"{above[0]} one ({hi:{diag.value_format}})")
        rows.append(SeparationRow(
            key=k, label=diag.label, direction=diag.direction, scale=diag.scale,
            n_healthy=len(h), n_failing=len(f), healthy_range=hr, failing_range=fr,
            interval=interval, closed="[)" if diag.direction == ABOVE else "(]",
            default=float(diag.threshold(thresholds)), excluded=h_out + f_out, note=note))
    return Separation(rows=tuple(rows), thresholds=thresholds)
