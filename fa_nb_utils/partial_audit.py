"""The protocol on runs whose logs lack the per-layer numbers (docs/protocol.md, "Partial audit").

    result = partial_audit(rows, frozen_baseline_acc=0.349, h0_source="each run's final ||h_0||",
                           num_blocks=4, grad_layer=2, grad_scale="per-batch mean CE, batch 128")

`rows` hold per seed what such logs keep: `seed`, the final `acc`, the final ||h_L|| `h_L`, a
mid-layer BP gradient norm `g_k` and, when logged, the same run's ||h_0|| at the same epoch `h_0`.
(a) can only be bounded: (||h_L|| / ||h_0||)^(1/L), the geometric mean of the per-block growths,
is a lower bound on the largest one, so (a) fires or is "undetermined", never "passes"; the bound
holds only for h_0 and h_L of one model at one epoch, so any other ||h_0|| leaves (a)
undetermined. (d) is exact per seed; (b), (c) and any diagnostic the table marks so are "not
measured". The verdict is "needs walk-back: ..." or "incomplete: ...", never "trustworthy".
Bad input is refused; a non-finite or zero norm makes (a) fire with the reason.
Not here: the full protocol on a model (protocol.py), replay of per-epoch traces (monitor.py).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from .validation import check_accuracy
from .validation import finite_or_none as _num, is_finite_number as _finite, is_number
from .diagnostics import (DIAGNOSTICS, PARTIAL_BOUND, PARTIAL_EXACT, PARTIAL_NOT_MEASURED,
                          PARTIAL_PROXY, PAPER, UNCOMPUTED, frozen_margin_pp, mode_keys)
from .report import DiagnosticThresholds, thresholds_or_default

SCHEMA_VERSION = 1
FIRES, UNDETERMINED, NOT_MEASURED, PASSES, SKIPPED = (
    "fires", "undetermined", "not measured", "passes", "skipped")
# Two blocks grow 60x, two shrink 2x: geometric mean 5.5, maximum 60. A bound under the threshold
# therefore never passes (a).
COUNTEREXAMPLE_GROWTHS = (60.0, 60.0, 0.5, 0.5)
# Where a seed's ||h_0|| came from (PartialSeed.h0_origin).
H0_ROW, H0_GLOBAL_SAME, H0_GLOBAL_OTHER, H0_NONE = (
    "row (same run, same epoch as h_L)", "h0_norm (declared same model and epoch)",
    "h0_norm (another epoch or model)", "none")


def geometric_mean(values: Sequence[float]) -> float:
    """Geometric mean of positive numbers (via logs, so large products do not overflow)."""
    return float(math.exp(sum(math.log(v) for v in values) / len(values)))


def growth_lower_bound(h_L: float, h0_norm: float, num_blocks: int) -> float:
    """(||h_L|| / ||h_0||)^(1/L): the geometric mean of the per-block growths, a lower bound on
    the largest one."""
    return float(math.exp((math.log(h_L) - math.log(h0_norm)) / num_blocks))


def _mean_std(values: list) -> tuple[Optional[float], Optional[float]]:
    """Mean and sample std (ddof=1) of the finite values; std None with fewer than 2."""
    vals = np.array([v for v in values if v is not None and _finite(v)], dtype=np.float64)
    if len(vals) == 0:
        return None, None
    mean = float(vals.mean())
    std = float(vals.std(ddof=1)) if len(vals) >= 2 else None
    return mean, std


@dataclass(frozen=True)
class PartialSeed:
    """One seed: the logged numbers and what each diagnostic can say from them."""

    seed: Any
    acc: float
    h_L: float
    g_k: Optional[float]
    growth_bound: Optional[float]   # (h_L / h_0)^(1/L), lower bound on the max per-block growth;
                                    # None when no ||h_0|| of the same model and epoch is known
    a_status: str                   # "fires" | "undetermined"
    a_reason: Optional[str]         # why (a) fired on bad input, or why it cannot be bounded
    margin_pp: Optional[float]      # 100 (acc - frozen), rounded to 1e-9
    d_status: str                   # "fires" | "passes" | "skipped"
    d_reason: Optional[str]
    h_0: Optional[float] = None     # the ||h_0|| this seed's (a) was judged with
    h0_origin: str = H0_NONE        # where it came from: H0_ROW, H0_GLOBAL_SAME, ...

    @property
    def status(self) -> dict[str, str]:
        """Every diagnostic of the table: (a) from the growth bound, (d) exact, the rest not
        measured (what the table's `partial` field says such logs allow)."""
        return _statuses(self.a_status, self.d_status)

    @property
    def verdict(self) -> str:
        return _verdict(self.status, _uncomputed([self]))

    def to_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "acc": _num(self.acc), "h_0": _num(self.h_0),
                "h0_origin": self.h0_origin, "h_L": _num(self.h_L),
                "g_k": _num(self.g_k), "growth_bound": _num(self.growth_bound),
                "a": {"status": self.a_status, "reason": self.a_reason},
                "margin_pp": _num(self.margin_pp),
                "d": {"status": self.d_status, "reason": self.d_reason},
                "verdict": self.verdict}


def _statuses(bound_status: str, exact_status: str) -> dict[str, str]:
    """{key: status} over the diagnostics table, by what its `partial` field says: the growth
    bound ((a)), exact from final accuracies ((d)), or not measured (a proxy at most)."""
    kinds = {PARTIAL_BOUND: bound_status, PARTIAL_EXACT: exact_status,
             PARTIAL_PROXY: NOT_MEASURED, PARTIAL_NOT_MEASURED: NOT_MEASURED}
    return {k: kinds[DIAGNOSTICS[k].partial] for k in mode_keys(PAPER)}


def _open_text(status: dict[str, str]) -> str:
    """What the audit could not decide, e.g. "(a) undetermined; (b), (c) not measured"."""
    parts = [f"({k}) undetermined" for k, st in status.items() if st == UNDETERMINED]
    unmeasured = [f"({k})" for k, st in status.items() if st == NOT_MEASURED]
    if unmeasured:
        parts.append(", ".join(unmeasured) + " not measured")
    parts += [f"({k}) skipped (no frozen baseline)" for k, st in status.items() if st == SKIPPED]
    return "; ".join(parts)


def _uncomputed(seeds) -> dict[str, str]:
    """{key: reasons} for (a) and (d) when every seed they fire on fired on bad input (a NaN,
    inf or zero logged number), so that the verdict says they could not be computed."""
    out = {}
    for key in ("a", "d"):
        firing = [s for s in seeds if getattr(s, f"{key}_status") == FIRES]
        if not firing or not all(getattr(s, f"{key}_reason") for s in firing):
            continue
        by_reason: dict[str, list] = {}
        for s in firing:
            by_reason.setdefault(getattr(s, f"{key}_reason"), []).append(str(s.seed))
        out[key] = ", ".join(f"{why} (seed{'s' if len(ss) > 1 else ''} {', '.join(ss)})"
                             for why, ss in by_reason.items())
    return out


def _verdict(status: dict[str, str], uncomputed: Optional[dict] = None) -> str:
    """"needs walk-back: ..." when a diagnostic fires (its name, with "(could not be computed:
    <reason>)" when only bad input fired it), else "incomplete: " + what is open; never
    "trustworthy", since logs without per-layer numbers leave some diagnostics unmeasured."""
    uncomputed = uncomputed or {}
    fired = [DIAGNOSTICS[k].name + (f" ({UNCOMPUTED}: {uncomputed[k]})" if k in uncomputed else "")
             for k, st in status.items() if st == FIRES]
    if fired:
        return "needs walk-back: " + "; ".join(fired)
    return "incomplete: " + _open_text(status)


@dataclass(frozen=True)
class PartialAuditResult:
    """The partial protocol over seeds: per-seed rows, per-diagnostic status, one verdict."""

    seeds: tuple
    frozen_baseline_acc: Optional[float]
    h0_norm: Optional[float]        # the global ||h_0||, or None when only rows carry h_0
    h0_source: str
    num_blocks: int
    grad_layer: int
    grad_scale: str
    thresholds: DiagnosticThresholds
    h0_same_epoch: bool = False     # h0_norm declared the same model's at the epoch of h_L

    # --- per diagnostic -----------------------------------------------------------------------
    def _count(self, attr: str) -> int:
        return sum(getattr(s, attr) == FIRES for s in self.seeds)

    @property
    def status(self) -> dict[str, str]:
        """Every diagnostic of the table: (a) "fires"|"undetermined", (d) "fires"|"passes"|
        "skipped", the others "not measured"; a diagnostic fires when it fires on any seed."""
        a = FIRES if self._count("a_status") else UNDETERMINED
        if self.frozen_baseline_acc is None:
            d = SKIPPED
        else:
            d = FIRES if self._count("d_status") else PASSES
        return _statuses(a, d)

    @property
    def a_note(self) -> Optional[str]:
        """Why (a) is undetermined over the seeds (None when it fires): the seeds whose ||h_0||
        is not of the same model and epoch as ||h_L||, and those whose bound is too low."""
        if self.status["a"] == FIRES:
            return None
        n = len(self.seeds)
        unbounded = sum(s.growth_bound is None for s in self.seeds)
        low = n - unbounded
        parts = []
        if unbounded:
            parts.append(f"no ||h_0|| of the same model at the same epoch as ||h_L|| on "
                         f"{unbounded}/{n} seeds, so the growth cannot be bounded")
        if low:
            parts.append(f"lower bound <= {self.thresholds.h_norm_explosion_ratio:g}x on "
                         f"{low}/{n} seeds, which does not exclude one block above it")
        return "; ".join(parts)

    @property
    def acc_mean_std(self) -> tuple[Optional[float], Optional[float]]:
        return _mean_std([s.acc for s in self.seeds])

    @property
    def margin_mean_std(self) -> tuple[Optional[float], Optional[float]]:
        return _mean_std([s.margin_pp for s in self.seeds])

    @property
    def open_items(self) -> str:
        return _open_text(self.status)

    @property
    def verdict(self) -> str:
        return _verdict(self.status, _uncomputed(self.seeds))

    # --- output --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        st = self.status
        n = len(self.seeds)
        acc_m, acc_s = self.acc_mean_std
        mar_m, mar_s = self.margin_mean_std
        return {
            "schema_version": SCHEMA_VERSION,
            "num_seeds": n,
            "seeds": [s.to_dict() for s in self.seeds],
            "thresholds": self.thresholds.to_dict(),
            "a": {"status": st["a"], "fires_on": f"{self._count('a_status')}/{n} seeds",
                  "statistic": "(h_L / h_0)^(1/L) with h_0 and h_L of the same model at the "
                               "same epoch: lower bound on the max per-block growth",
                  "h0_norm": _num(self.h0_norm), "h0_source": self.h0_source,
                  "h0_same_epoch": self.h0_same_epoch, "num_blocks": self.num_blocks,
                  "reason": self.a_note},
            "b": {"status": st["b"], "proxy": f"||g_{self.grad_layer}||",
                  "grad_layer": self.grad_layer, "grad_scale": self.grad_scale,
                  "reason": f"(b) needs the deepest layer L={self.num_blocks}'s median "
                            "per-sample BP gradient on the paper scale; a mid-layer norm does "
                            "not bound it"},
            **{k: {"status": st[k], "reason": d.partial_note} for k, d in DIAGNOSTICS.items()
               if k in st and k not in ("a", "b", "d")},
            "d": {"status": st["d"], "frozen_baseline_acc": _num(self.frozen_baseline_acc),
                  "fires_on": f"{self._count('d_status')}/{n} seeds",
                  "margin_pp_mean": _num(mar_m), "margin_pp_std": _num(mar_s)},
            "acc_mean": _num(acc_m), "acc_std": _num(acc_s), "std_ddof": 1,
            "open_items": self.open_items,
            "verdict": self.verdict,
        }

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), allow_nan=False, **kw)

    def __str__(self) -> str:
        t = self.thresholds
        st = self.status
        n = len(self.seeds)
        rule = "=" * 80
        sd = lambda v, fmt: "n/a" if v is None else format(v, fmt)
        acc_m, acc_s = self.acc_mean_std
        mar_m, mar_s = self.margin_mean_std
        lines = [rule, f"Partial protocol audit ({n} seed{'s' if n != 1 else ''}; logs without "
                       "per-layer numbers)", rule,
                 f"  {'seed':>6}{'acc':>10}{'||h_0||':>14}{'||h_L||':>14}"
                 f"{f'||g_{self.grad_layer}||':>14}"]
        for s in self.seeds:
            h0 = "n/a" if s.h_0 is None else sd(_num(s.h_0), '.3e')
            lines.append(f"  {str(s.seed):>6}{sd(_num(s.acc), '.4f'):>10}{h0:>14}"
                         f"{sd(_num(s.h_L), '.3e'):>14}{sd(_num(s.g_k), '.3e'):>14}")
        lines.append(f"  mean ± sample std (ddof=1): acc {sd(acc_m, '.4f')} ± {sd(acc_s, '.4f')}")

        ex = COUNTEREXAMPLE_GROWTHS
        if self.h0_norm is None:
            h0_line = f"    ||h_0||: each seed's own ({self.h0_source})"
        else:
            same = ("declared the same model and epoch as ||h_L||" if self.h0_same_epoch else
                    "NOT declared the same model and epoch as ||h_L||: no bound from it")
            h0_line = (f"    ||h_0|| = {self.h0_norm:.4g} ({self.h0_source}; {same}); a seed's "
                       "own h_0 takes precedence")
        lines += ["", f"(a) residual stream explosion — {st['a'].upper()}",
                  f"    lower bound on the max per-block growth: (||h_L|| / ||h_0||)^(1/L), "
                  f"L = {self.num_blocks}, h_0 and h_L of the same model at the same epoch",
                  h0_line]
        for s in self.seeds:
            bound = sd(s.growth_bound, ".3g") + "x"
            h0 = "" if s.h_0 is None or s.growth_bound is None else \
                f" (||h_0|| = {s.h_0:.4g}, {'own' if s.h0_origin == H0_ROW else 'h0_norm'})"
            why = s.a_reason or (f"bound {bound} > {t.h_norm_explosion_ratio:g}x{h0}"
                                 if s.a_status == FIRES else
                                 f"bound {bound} <= {t.h_norm_explosion_ratio:g}x{h0} does not "
                                 "exclude one block above it")
            lines.append(f"    s{s.seed}: {s.a_status} — {why}")
        lines.append(f"    (a geometric mean is at most the largest growth: growths "
                     f"{', '.join(f'{g:g}' for g in ex)} have geometric mean "
                     f"{geometric_mean(ex):.2f} but max {max(ex):g})")

        lines += ["", f"(b) BP gradient at the floor — {st['b'].upper()}",
                  f"    proxy ||g_{self.grad_layer}|| (layer {self.grad_layer} of "
                  f"{self.num_blocks}; scale: {self.grad_scale}) is shown above; it does not "
                  f"bound the deepest layer's ||g_L||, which (b) compares with "
                  f"{t.g_norm_floor:.0e} on the paper scale"]
        for k, d in DIAGNOSTICS.items():
            if k in st and k not in ("a", "b", "d"):
                lines += ["", f"({k}) {d.title} — {st[k].upper()} ({d.partial_note})"]

        lines += ["", f"(d) frozen-random-blocks baseline — {st['d'].upper()}"]
        if self.frozen_baseline_acc is None:
            lines.append("    no frozen baseline given: skipped, not passed")
        else:
            lines.append(f"    baseline {self.frozen_baseline_acc:.4f}; required margin "
                         f"{t.frozen_acc_margin_pp:g} pp")
            for s in self.seeds:
                why = s.d_reason or f"margin {s.margin_pp:+.2f} pp"
                lines.append(f"    s{s.seed}: acc {sd(_num(s.acc), '.4f')}, {why} -> {s.d_status}")
            lines.append(f"    margin mean ± sample std: {sd(mar_m, '+.2f')} ± "
                         f"{sd(mar_s, '.2f')} pp; fires on {self._count('d_status')}/{n} seeds")
        lines += ["", f"VERDICT: {self.verdict}"]
        if self.verdict.startswith("needs walk-back"):
            lines.append(f"  also open: {self.open_items}")
        lines.append(rule)
        return "\n".join(lines)


def _same_seed(row, seed) -> bool:
    """Whether `row` (a row of partial_audit, checked or not) has this seed."""
    try:
        return isinstance(row, dict) and "seed" in row and bool(row["seed"] == seed)
    except (TypeError, ValueError):  # seeds that do not compare as scalars
        return False


def _as_float(name: str, v, seed) -> float:
    if not is_number(v):
        raise TypeError(f"partial_audit: seed {seed!r}: {name} must be a number, got {v!r}")
    return float(v)


def _norm(name: str, v, seed) -> float:
    """A logged norm: a number, NaN/inf allowed (judged with a reason), never negative."""
    v = _as_float(name, v, seed)
    if v < 0:
        raise ValueError(f"partial_audit: seed {seed!r}: {name} is {v:g}, a norm cannot be "
                         f"negative; pass the logged norm (||.|| >= 0), not a signed value or "
                         "a log")
    return v


def _bad_norm_reason(label: str, v: float) -> Optional[str]:
    """Why a same-model, same-epoch norm makes (a) fire (as the full protocol does), or None."""
    if not math.isfinite(v):
        return f"{label} is {v}: non-finite residual norm"
    if v == 0:
        return f"{label} is zero: the stream is degenerate, growth undefined"
    return None


def partial_audit(rows: Sequence[dict], frozen_baseline_acc: Optional[float], *,
                  h0_source: str, num_blocks: int, grad_layer: int, grad_scale: str,
                  h0_norm: Optional[float] = None, h0_same_epoch: bool = False,
                  thresholds: Optional[DiagnosticThresholds] = None) -> PartialAuditResult:
    """Partial protocol on per-seed logs. See the module docstring.

    Args:
        rows: one dict per seed (the module docstring's keys).
        frozen_baseline_acc: the rule's frozen-random-blocks baseline (3-seed mean); None: (d)
            skipped.
        h0_source: where the ||h_0|| values came from (printed; required).
        h0_norm: a global ||h_0|| for the rows without their own `h_0`; it bounds (a) only with
            `h0_same_epoch=True` (each run's ||h_0|| at the epoch of its ||h_L||), else (a) is
            "undetermined" on those rows.
        num_blocks: L; grad_layer, grad_scale: the layer of `g_k` and how it was scaled.
    """
    thresholds = thresholds_or_default(thresholds)
    rows = list(rows) if rows is not None else []
    if not rows:
        raise ValueError("partial_audit needs at least one row (a dict per seed with seed, acc, "
                         "h_L, g_k and, when logged, h_0)")
    if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 1:
        raise ValueError(f"num_blocks must be an int >= 1 (L), got {num_blocks!r}")
    if isinstance(grad_layer, bool) or not isinstance(grad_layer, int) \
            or not 0 <= grad_layer <= num_blocks:
        raise ValueError(f"grad_layer must be an int in 0..{num_blocks}, got {grad_layer!r}")
    if not isinstance(h0_source, str) or not h0_source.strip():
        raise ValueError("h0_source must say where ||h_0|| came from (e.g. 'median ||h_0|| at "
                         "epoch 100, same run'): the bound on (a) depends on it")
    if not isinstance(grad_scale, str) or not grad_scale.strip():
        raise ValueError("grad_scale must declare how g_k was scaled (e.g. 'paper scale: "
                         "batch-mean CE over 128')")
    if h0_norm is not None and (not _finite(h0_norm) or h0_norm <= 0):
        raise ValueError(f"h0_norm must be a finite norm > 0, got {h0_norm!r}")
    if not isinstance(h0_same_epoch, (bool, np.bool_)):
        raise TypeError(f"h0_same_epoch must be True or False (is h0_norm the same model's "
                        f"||h_0|| at the epoch of ||h_L||?), got {h0_same_epoch!r}")
    h0_same_epoch = bool(h0_same_epoch)
    if h0_same_epoch and h0_norm is None:
        raise ValueError("h0_same_epoch=True needs h0_norm (the ||h_0|| it declares to be of the "
                         "same model at the epoch of ||h_L||); or give each row its own h_0")
    frozen_reason = check_accuracy("frozen_baseline_acc", frozen_baseline_acc)
    threshold = thresholds.h_norm_explosion_ratio

    seeds = []
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise TypeError(f"partial_audit: row {i} must be a dict, got {type(r).__name__}")
        missing = [k for k in ("seed", "acc", "h_L") if k not in r]
        if missing:
            raise ValueError(f"partial_audit: row {i} lacks {', '.join(missing)} (each row needs "
                             "seed, acc, h_L and optionally g_k and h_0)")
        seed = r["seed"]
        if any(_same_seed(q, seed) for q in rows[:i]):
            same = [j for j, q in enumerate(rows) if _same_seed(q, seed)]
            raise ValueError(
                f"partial_audit: rows {', '.join(map(str, same))} all have seed {seed!r}: one row "
                "per seed, or the duplicate would count twice in the mean, the std and 'fires on "
                "k/n seeds'. Keep one row per run (two runs need two seeds)")
        acc = _as_float("acc", r["acc"], seed)
        h_L = _norm("h_L", r["h_L"], seed)
        g_k = None if r.get("g_k") is None else _norm("g_k", r["g_k"], seed)
        own_h0 = None if r.get("h_0") is None else _norm("h_0", r["h_0"], seed)
        acc_reason = check_accuracy(f"acc of seed {seed!r}", acc)  # raises on percentages

        # (a): which ||h_0|| this seed is judged with
        if own_h0 is not None:
            h_0, origin = own_h0, H0_ROW
        elif h0_norm is not None:
            h_0, origin = float(h0_norm), (H0_GLOBAL_SAME if h0_same_epoch else H0_GLOBAL_OTHER)
        else:
            h_0, origin = None, H0_NONE
        # a bad ||h_L|| fires whatever h_0 is (the final model's stream is non-finite or dead);
        # so does a bad h_0 of the same model and epoch; without such an h_0 there is no bound
        bound = None
        a_reason = _bad_norm_reason("||h_L||", h_L)
        if a_reason is None and origin == H0_ROW:
            a_reason = _bad_norm_reason("this run's ||h_0|| (h_0)", h_0)
        if a_reason is not None:
            a_status = FIRES
        elif origin == H0_GLOBAL_OTHER:
            a_status = UNDETERMINED
            a_reason = (f"||h_0|| = {h_0:.4g} ({h0_source}) is not this run's ||h_0|| at the same "
                        f"epoch as ||h_L||, so (||h_L|| / ||h_0||)^(1/L) bounds no per-block "
                        f"growth (the embedding itself grows in training); give the row this "
                        f"run's own final median ||h_0|| as h_0, or pass h0_same_epoch=True if "
                        f"h0_norm is that")
        elif origin == H0_NONE:
            a_status = UNDETERMINED
            a_reason = ("no ||h_0|| of this run at the epoch of ||h_L||: give the row its own "
                        "h_0 (the run's final median ||h_0||) to bound (a)")
        else:
            bound = growth_lower_bound(h_L, h_0, num_blocks)
            a_status = FIRES if bound > threshold else UNDETERMINED

        # (d): exact per seed
        margin, d_reason = None, None
        if frozen_baseline_acc is None:
            d_status = SKIPPED
        else:
            d_reason = frozen_reason or acc_reason
            if d_reason is None:
                margin = frozen_margin_pp(acc, frozen_baseline_acc)
            d_status = FIRES if (d_reason or margin < thresholds.frozen_acc_margin_pp) else PASSES
        seeds.append(PartialSeed(seed, acc, h_L, g_k, bound, a_status, a_reason, margin, d_status,
                               d_reason, h_0=h_0, h0_origin=origin))
    return PartialAuditResult(
        seeds=tuple(seeds),
        frozen_baseline_acc=None if frozen_baseline_acc is None else float(frozen_baseline_acc),
        h0_norm=None if h0_norm is None else float(h0_norm), h0_source=h0_source,
        num_blocks=num_blocks, grad_layer=grad_layer, grad_scale=grad_scale,
        thresholds=thresholds, h0_same_epoch=h0_same_epoch)
