"""The protocol in training: a monitor that stops a degenerate run, and replay of a saved trace.

    monitor = Monitor(every=1)                       # stops on (a), (b) and non-finite values
    result = train(config, monitor=monitor)
    result.stop_reason                               # None, or a named StopReason
    print(replay_file("runs/dfa-s42-.../trace.json"))  # when would the protocol have fired?

SPEC §5. The monitor runs `diagnose` (its own code, not a copy of it) at epoch 0 and every `every`
epochs on the run's fixed eval batches, with the epoch's `acc_eval` (full test split) as the
headline accuracy. All four diagnostics are evaluated and recorded every time it runs; only those
listed in `stop_on` stop the run. (c) and (d) are not in the default `stop_on`: early accuracy is
always below a final frozen baseline, so (d) would stop every run, and (c) separates sub-modes more
than it detects. A stop carries a named reason (Lightning's EarlyStopping style): which diagnostic,
its value, its threshold and the epoch.

"nonfinite" means: the epoch's train loss, the headline accuracy or a per-layer protocol number
(median ||h_l||, median ||g_l||) is NaN or inf, or `diagnose` found non-finite hidden states, logits
or BP gradients (`DiagnosticReport.input_reasons`: a single inf sample can leave a median finite).
A NaN cross-batch stability alone is not "non-finite values": it means a batch's mean BP gradient
is exactly zero (direction undefined), which (c) already reports with its reason.

`replay_trace` answers the same question after the fact from a saved trace: per diagnostic, the
first epoch it fires, the accuracy then and at the end, and the share of the run a stop would have
saved. Every number it prints is computed from the trace (seed 000 printed a hard-coded "~96%").

Not here: the diagnostics themselves (report.py, diagnose.py), the training loop (train.py), the
audit of runs whose logs lack per-layer numbers (partial_audit.py).
"""
from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from .diagnose import _check_accuracy, diagnose
from .report import DIAGNOSTIC_NAMES, DiagnosticReport, DiagnosticThresholds

SCHEMA_VERSION = 1
DIAGNOSTIC_KEYS = ("a", "b", "c", "d")
STOP_KEYS = ("a", "b", "c", "d", "nonfinite")
# When several stopping diagnostics fire at the same epoch, the reason names the first of these.
STOP_ORDER = ("nonfinite", "a", "b", "c", "d")
NONFINITE_NAME = "non-finite values"
STOP_NAMES = {**DIAGNOSTIC_NAMES, "nonfinite": NONFINITE_NAME}


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _num(v):
    """Strict-JSON number: non-finite (or missing) becomes None."""
    return float(v) if _finite(v) else None


def _nan_if_none(v) -> float:
    return float("nan") if v is None else float(v)


@dataclass(frozen=True)
class StopReason:
    """Why a diagnostic fired at an epoch: key, name, the statistic, its threshold, a sentence.

    `value` and `threshold` are in the diagnostic's own units: (a) max per-block growth (ratio),
    (b) deepest median ||g_L|| on the paper scale, (c) mean cosine, (d) margin in pp; for
    "nonfinite" the offending number (nan/inf, null in JSON) and no threshold.
    """

    diagnostic: str
    name: str
    value: Optional[float]
    threshold: Optional[float]
    epoch: int
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"diagnostic": self.diagnostic, "name": self.name, "value": _num(self.value),
                "threshold": _num(self.threshold), "epoch": self.epoch, "message": self.message}

    @classmethod
    def from_dict(cls, d: dict) -> "StopReason":
        return cls(diagnostic=d["diagnostic"], name=d["name"], value=d.get("value"),
                   threshold=d.get("threshold"), epoch=int(d["epoch"]), message=d["message"])

    def __str__(self) -> str:
        return self.message


def nonfinite_reason(report: DiagnosticReport, train_loss: Optional[float] = None) -> Optional[str]:
    """Why the numbers of one epoch are non-finite (see the module docstring), or None."""
    why = []
    if train_loss is not None and not _finite(train_loss):
        why.append(f"train loss {train_loss}")
    if not _finite(report.headline_acc):
        why.append(f"headline accuracy {report.headline_acc}")
    for label, values in (("median ||h_l||", report.residual_norms),
                          ("median ||g_l||", report.bp_grad_norms)):
        bad = [l for l, v in enumerate(values) if not _finite(v)]
        if bad:
            why.append(f"{label} at layer(s) {bad}")
    for key in DIAGNOSTIC_KEYS:
        reason = report.input_reasons.get(key)
        if reason and "non-finite" in reason and reason not in why:
            why.append(reason)
    return "; ".join(why) if why else None


def fired_reasons(report: DiagnosticReport, epoch: int) -> dict[str, StopReason]:
    """A StopReason for every diagnostic (a)-(d) that fires in `report`, by key."""
    t = report.thresholds
    reasons = report.reasons
    out = {}
    for key, fired in report.fired.items():
        if not fired:
            continue
        if key == "a":
            value, threshold = report.max_block_growth, t.h_norm_explosion_ratio
            text = f"max per-block growth {value:.3g}× > {threshold:g}×"
        elif key == "b":
            value = report.bp_grad_norms[-1] if report.bp_grad_norms else float("nan")
            threshold = t.g_norm_floor
            text = f"deepest median ||g_L|| {value:.2e} < floor {threshold:.0e} (paper scale)"
        elif key == "c":
            value, threshold = report.cross_batch_stability, t.stability_drift_ceiling
            text = (f"cross-batch stability {value:.3f} at layer {report.stability_layer} "
                    f"> {threshold:g}")
        else:
            value, threshold = report.frozen_margin_pp, t.frozen_acc_margin_pp
            text = (f"margin {value:+.2f} pp over the frozen baseline "
                    f"{report.frozen_baseline_acc:.4f} < {threshold:g} pp")
        if key in reasons:  # fired on bad input: say why instead of comparing a NaN
            text = reasons[key]
        out[key] = StopReason(key, DIAGNOSTIC_NAMES[key], value, threshold, epoch,
                              f"({key}) {text} at epoch {epoch}")
    return out


def _nonfinite_stop(epoch: int, why: str, value: float = float("nan")) -> StopReason:
    return StopReason("nonfinite", NONFINITE_NAME, value, None, epoch,
                      f"non-finite values: {why} at epoch {epoch}")


class Monitor:
    """Runs the protocol during training and decides whether to stop (SPEC §5).

    Args:
        every: run `diagnose` at epoch 0 and every `every` epochs. A non-finite train loss is
            checked every epoch regardless.
        stop_on: the diagnostics that stop the run, among "a", "b", "c", "d", "nonfinite".
            The others are still evaluated and recorded.
        thresholds: `DiagnosticThresholds` (default: the paper's).
        frozen_baseline_acc: the rule's frozen-random-blocks baseline (3-seed mean) for (d);
            None: (d) is skipped (never passed), so "d" cannot be in `stop_on`.

    After a run, `records` holds one dict per monitored epoch (strict JSON: the full report dict,
    the StopReason of every diagnostic that fired, the stop if any), `first_fired` the first epoch
    each diagnostic fired (None: never), `stop_reason` the stop (None: the run completed).
    A Monitor holds the records of the last run it watched: `train` resets it at the start.
    """

    def __init__(self, every: int = 1, stop_on: Sequence[str] = ("a", "b", "nonfinite"),
                 thresholds: Optional[DiagnosticThresholds] = None,
                 frozen_baseline_acc: Optional[float] = None):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"Monitor.every must be an int >= 1 (epochs between checks), "
                             f"got {every!r}")
        if isinstance(stop_on, str):
            stop_on = (stop_on,)
        stop_on = tuple(stop_on)
        unknown = [k for k in stop_on if k not in STOP_KEYS]
        if unknown:
            raise ValueError(f"Monitor.stop_on has unknown key(s) {unknown}; valid keys: "
                             + ", ".join(f"{k!r} ({STOP_NAMES[k]})" for k in STOP_KEYS))
        thresholds = DiagnosticThresholds() if thresholds is None else thresholds
        if not isinstance(thresholds, DiagnosticThresholds):
            raise TypeError(f"Monitor.thresholds must be a DiagnosticThresholds, got "
                            f"{type(thresholds).__name__}")
        reason = _check_accuracy("frozen_baseline_acc", frozen_baseline_acc)
        if reason:
            raise ValueError(f"Monitor.frozen_baseline_acc must be a finite fraction in [0, 1]; "
                             f"{reason}")
        if "d" in stop_on and frozen_baseline_acc is None:
            raise ValueError("Monitor.stop_on includes 'd' but no frozen_baseline_acc was given: "
                             "(d) would be skipped and could never stop the run")
        self.every = every
        self.stop_on = stop_on
        self.thresholds = thresholds
        self.frozen_baseline_acc = (None if frozen_baseline_acc is None
                                    else float(frozen_baseline_acc))
        self.reset()

    # ------------------------------------------------------------------------------------------
    def reset(self, method_name: str = "") -> None:
        """Forget the previous run's records."""
        self.method_name = method_name
        self.records: list[dict] = []
        self.first_fired: dict[str, Optional[int]] = {k: None for k in STOP_KEYS}
        self.stop_reason: Optional[StopReason] = None
        self.last_report: Optional[DiagnosticReport] = None

    def due(self, epoch: int) -> bool:
        return epoch % self.every == 0

    def settings(self) -> dict[str, Any]:
        return {"every": self.every, "stop_on": list(self.stop_on),
                "thresholds": self.thresholds.to_dict(),
                "frozen_baseline_acc": self.frozen_baseline_acc}

    def record_for(self, epoch: int) -> Optional[dict]:
        for rec in reversed(self.records):
            if rec["epoch"] == epoch:
                return rec
        return None

    # ------------------------------------------------------------------------------------------
    def check(self, model, eval_batches, epoch: int, acc_eval: float,
              train_loss: Optional[float] = None) -> Optional[StopReason]:
        """One epoch: diagnose if due, check the train loss; the StopReason if the run must stop.

        Among stopping diagnostics that fire together the reason names the first of
        nonfinite, (a), (b), (c), (d); the record lists all of them.
        """
        fired: dict[str, StopReason] = {}
        report = None
        if self.due(epoch):
            report = diagnose(model, eval_batches, headline_acc=acc_eval,
                              frozen_baseline_acc=self.frozen_baseline_acc,
                              method_name=self.method_name, notes=f"epoch {epoch}",
                              thresholds=self.thresholds)
            self.last_report = report
            fired.update(fired_reasons(report, epoch))
            why = nonfinite_reason(report, train_loss)
            if why:
                fired["nonfinite"] = _nonfinite_stop(epoch, why)
        elif train_loss is not None and not _finite(train_loss):
            fired["nonfinite"] = _nonfinite_stop(epoch, f"train loss {train_loss}", train_loss)
        stop = next((fired[k] for k in STOP_ORDER if k in fired and k in self.stop_on), None)
        for key in fired:
            if self.first_fired[key] is None:
                self.first_fired[key] = epoch
        if report is not None or fired:
            self.records.append({
                "epoch": epoch, "acc_eval": _num(acc_eval), "train_loss": _num(train_loss),
                "report": report.to_dict() if report is not None else None,
                "fired": {k: fired[k].to_dict() for k in STOP_ORDER if k in fired},
                "stop_reason": stop.to_dict() if stop is not None else None,
            })
        if stop is not None:
            self.stop_reason = stop
        return stop

    def restore(self, trace: list[dict]) -> None:
        """Rebuild `records` and `first_fired` from a resumed run's trace (its "protocol" dicts)."""
        for e in trace:
            protocol, stop = e.get("protocol"), e.get("stop_reason")
            if protocol is None and stop is None:
                continue
            fired = {}
            if protocol is not None:
                report = DiagnosticReport.from_dict(protocol)
                fired = {k: v.to_dict() for k, v in fired_reasons(report, e["epoch"]).items()}
                why = nonfinite_reason(report, e.get("train_loss") if e["epoch"] else None)
                if why:
                    fired["nonfinite"] = _nonfinite_stop(e["epoch"], why).to_dict()
            if stop is not None:
                fired.setdefault(stop["diagnostic"], stop)
                self.stop_reason = StopReason.from_dict(stop)
            for key in fired:
                if self.first_fired.get(key) is None:
                    self.first_fired[key] = e["epoch"]
            self.records.append({"epoch": e["epoch"], "acc_eval": _num(e.get("acc_eval")),
                                 "train_loss": _num(e.get("train_loss")), "report": protocol,
                                 "fired": fired, "stop_reason": stop, "restored": True})

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, **self.settings(),
                "first_fired": dict(self.first_fired),
                "stop_reason": self.stop_reason.to_dict() if self.stop_reason else None,
                "records": copy.deepcopy(self.records)}

    def __repr__(self) -> str:
        return (f"Monitor(every={self.every}, stop_on={self.stop_on!r}, "
                f"frozen_baseline_acc={self.frozen_baseline_acc!r})")


# ---------------------------------------------------------------------------------------------
# Replay of a saved trace
# ---------------------------------------------------------------------------------------------
REPLAY_ROWS = ("a", "b", "c", "d", "a|b", "nonfinite")
REPLAY_LABELS = {"a": "(a) " + DIAGNOSTIC_NAMES["a"], "b": "(b) " + DIAGNOSTIC_NAMES["b"],
                 "c": "(c) " + DIAGNOSTIC_NAMES["c"], "d": "(d) " + DIAGNOSTIC_NAMES["d"],
                 "a|b": "any of (a), (b)", "nonfinite": NONFINITE_NAME}


@dataclass(frozen=True)
class ReplayRow:
    """One diagnostic over a trace. status: "fired", "never fired" or "not available"."""

    key: str
    label: str
    status: str
    first_epoch: Optional[int] = None
    acc_then: Optional[float] = None
    acc_end: Optional[float] = None
    diff_pp: Optional[float] = None       # 100 * (acc_end - acc_then), rounded to 1e-9
    saved_share: Optional[float] = None   # (E - e) / E, E the last epoch of the trace
    detail: str = ""                      # the statistic and threshold when it fired, or why

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "label": self.label, "status": self.status,
                "first_epoch": self.first_epoch, "acc_then": _num(self.acc_then),
                "acc_end": _num(self.acc_end), "diff_pp": _num(self.diff_pp),
                "saved_share": _num(self.saved_share), "detail": self.detail}


@dataclass(frozen=True)
class ReplayResult:
    """Per diagnostic, when a monitor would have stopped this trace and what it would have cost."""

    rows: tuple
    first_epoch: int
    last_epoch: int
    num_entries: int
    final_acc: Optional[float]
    thresholds: DiagnosticThresholds
    frozen_baseline_acc: Optional[float]
    frozen_source: str

    def row(self, key: str) -> ReplayRow:
        for r in self.rows:
            if r.key == key:
                return r
        raise KeyError(f"no replay row {key!r}; rows: {', '.join(r.key for r in self.rows)}")

    def __getitem__(self, key: str) -> ReplayRow:
        return self.row(key)

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "first_epoch": self.first_epoch,
                "last_epoch": self.last_epoch, "num_entries": self.num_entries,
                "final_acc": _num(self.final_acc), "thresholds": self.thresholds.to_dict(),
                "frozen_baseline_acc": _num(self.frozen_baseline_acc),
                "frozen_source": self.frozen_source,
                "rows": {r.key: r.to_dict() for r in self.rows}}

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), allow_nan=False, **kw)

    def __str__(self) -> str:
        t = self.thresholds
        final = "n/a" if self.final_acc is None or not _finite(self.final_acc) \
            else f"{self.final_acc:.4f}"
        lines = [
            f"Replay of a trace: {self.num_entries} entries, epochs {self.first_epoch}.."
            f"{self.last_epoch}, final acc_eval {final}",
            f"Thresholds: (a) max per-block growth > {t.h_norm_explosion_ratio:g}x, "
            f"(b) ||g_L|| < {t.g_norm_floor:.0e}, (c) stability > {t.stability_drift_ceiling:g}, "
            f"(d) margin < {t.frozen_acc_margin_pp:g} pp ({self.frozen_source})",
        ]
        head = (f"{'diagnostic':<50} {'first fired':>12} {'acc then':>9} {'acc end':>8} "
                f"{'diff (pp)':>10} {'saved (epochs)':>16}")
        lines += [head, "-" * len(head)]
        f4 = lambda v: "n/a" if v is None or not _finite(v) else f"{v:.4f}"
        for r in self.rows:
            if r.status == "fired":
                diff = "n/a" if r.diff_pp is None or not _finite(r.diff_pp) else f"{r.diff_pp:+.1f}"
                saved = ("n/a" if r.saved_share is None else f"{100 * r.saved_share:.0f}% "
                         f"({self.last_epoch - r.first_epoch}/{self.last_epoch})")
                lines.append(f"{r.label:<50} {'epoch ' + str(r.first_epoch):>12} "
                             f"{f4(r.acc_then):>9} {f4(r.acc_end):>8} {diff:>10} {saved:>16}")
                lines.append(f"{'':<4}{r.detail}")
            else:
                lines.append(f"{r.label:<50} {r.status:>12}" + (f"  ({r.detail})" if r.detail
                                                                  else ""))
        return "\n".join(lines)


def _entries(trace) -> list[dict]:
    if isinstance(trace, dict):
        if "trace" not in trace:
            raise ValueError("a trace file is {'metadata': ..., 'trace': [...]}; this dict has no "
                             "'trace' key")
        trace = trace["trace"]
    if not isinstance(trace, (list, tuple)) or not trace:
        raise ValueError("replay needs a non-empty list of trace entries (dicts with 'epoch' and "
                         "'acc_eval')")
    for i, e in enumerate(trace):
        if not isinstance(e, dict) or "epoch" not in e or "acc_eval" not in e:
            raise ValueError(f"trace entry {i} must be a dict with at least 'epoch' and "
                             f"'acc_eval', got {e!r:.200}")
    return sorted(trace, key=lambda e: e["epoch"])


def _entry_report(e: dict, thresholds: DiagnosticThresholds,
                  frozen_baseline_acc: Optional[float]) -> tuple[DiagnosticReport, dict]:
    """The report for one trace entry (the report's own logic, with the replay's thresholds),
    and which diagnostics the entry can decide."""
    protocol = e.get("protocol")
    saved = DiagnosticReport.from_dict(protocol) if protocol is not None else None
    h = e.get("hidden_norms")
    g = e.get("bp_grad_norms_per_sample_med")
    frozen = frozen_baseline_acc if frozen_baseline_acc is not None else (
        saved.frozen_baseline_acc if saved is not None else None)
    report = DiagnosticReport(
        method_name=saved.method_name if saved else "", notes=f"epoch {e['epoch']}",
        residual_norms=[_nan_if_none(v) for v in (h or [])],
        bp_grad_norms=[_nan_if_none(v) for v in (g or [])],
        stability_layer=saved.stability_layer if saved else 0,
        cross_batch_stability=saved.cross_batch_stability if saved else float("nan"),
        headline_acc=_nan_if_none(e.get("acc_eval")), frozen_baseline_acc=frozen,
        thresholds=thresholds,
        input_reasons=dict(saved.input_reasons) if saved else {},
    )
    available = {"a": h is not None, "b": g is not None, "c": saved is not None,
                 "d": frozen is not None}
    return report, available


def replay_trace(trace, thresholds: Optional[DiagnosticThresholds] = None,
                 frozen_baseline_acc: Optional[float] = None) -> ReplayResult:
    """When would each diagnostic have stopped this run, and at what cost? (SPEC §5)

    `trace`: a list of entries (the trainer's format: `epoch`, `acc_eval`, `hidden_norms`,
    `bp_grad_norms_per_sample_med`, optional `train_loss` and `protocol`) or the
    `{"metadata": ..., "trace": [...]}` file format. (a) is the max per-block growth of
    `hidden_norms` (SPEC §4, not max / h_0), (b) the deepest `bp_grad_norms_per_sample_med`,
    (c) the stored `protocol`'s cross-batch stability (only entries that carry one), (d) the
    `frozen_baseline_acc` given here (else the protocol's) against `acc_eval`. A null number in a
    saved trace was non-finite when written (strict JSON) and fires with a reason.
    """
    thresholds = DiagnosticThresholds() if thresholds is None else thresholds
    if not isinstance(thresholds, DiagnosticThresholds):
        raise TypeError(f"thresholds must be a DiagnosticThresholds, got {type(thresholds).__name__}")
    reason = _check_accuracy("frozen_baseline_acc", frozen_baseline_acc)
    if reason:
        raise ValueError(f"frozen_baseline_acc must be a finite fraction in [0, 1]; {reason}")
    entries = _entries(trace)
    first: dict[str, tuple[dict, str]] = {}
    seen = {k: False for k in REPLAY_ROWS}
    frozen_source = ("given to replay" if frozen_baseline_acc is not None else "not provided")
    for e in entries:
        report, available = _entry_report(e, thresholds, frozen_baseline_acc)
        if frozen_baseline_acc is None and available["d"]:
            frozen_source = "from the trace's protocol records"
        fired = report.fired
        why = fired_reasons(report, e["epoch"])
        for key in DIAGNOSTIC_KEYS:
            if not available[key]:
                continue
            seen[key] = True
            if fired[key] and key not in first:
                first[key] = (e, why[key].message)
        if available["a"] or available["b"]:
            seen["a|b"] = True
            hits = [k for k in ("a", "b") if available[k] and fired[k]]
            if hits and "a|b" not in first:
                first["a|b"] = (e, "; ".join(why[k].message for k in hits))
        seen["nonfinite"] = True
        loss = None  # epoch 0 has no train loss (null by design)
        if e["epoch"] > 0 and "train_loss" in e:
            # null after epoch 0 in a saved trace: non-finite when written (strict JSON)
            loss = float("nan") if e["train_loss"] is None else e["train_loss"]
        nf = nonfinite_reason(report, loss)
        if nf and "nonfinite" not in first:
            first["nonfinite"] = (e, f"non-finite values: {nf} at epoch {e['epoch']}")

    last = entries[-1]
    E = last["epoch"]
    acc_end = last.get("acc_eval")
    rows = []
    for key in REPLAY_ROWS:
        label = REPLAY_LABELS[key]
        if key in first:
            e, detail = first[key]
            acc_then = e.get("acc_eval")
            diff = (round(100.0 * (acc_end - acc_then), 9)
                    if _finite(acc_end) and _finite(acc_then) else None)
            share = (E - e["epoch"]) / E if E > 0 else None
            rows.append(ReplayRow(key, label, "fired", e["epoch"], acc_then, acc_end, diff,
                                  share, detail))
        elif seen[key]:
            rows.append(ReplayRow(key, label, "never fired"))
        else:
            missing = {"a": "no hidden_norms in the trace",
                       "b": "no bp_grad_norms_per_sample_med in the trace",
                       "c": "no protocol records in the trace (train with a Monitor)",
                       "d": "no frozen_baseline_acc given or recorded",
                       "a|b": "neither (a) nor (b) can be computed"}[key]
            rows.append(ReplayRow(key, label, "not available", detail=missing))
    return ReplayResult(rows=tuple(rows), first_epoch=entries[0]["epoch"], last_epoch=E,
                        num_entries=len(entries), final_acc=acc_end, thresholds=thresholds,
                        frozen_baseline_acc=frozen_baseline_acc, frozen_source=frozen_source)


def replay_file(path, thresholds: Optional[DiagnosticThresholds] = None,
                frozen_baseline_acc: Optional[float] = None) -> ReplayResult:
    """`replay_trace` on a saved trace.json (`{"metadata": ..., "trace": [...]}`) or a bare list."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no trace file at {path}; the trainer writes trace.json beside "
                                "each run's checkpoint (train(..., runs_root=DIR))")
    return replay_trace(json.loads(path.read_text()), thresholds=thresholds,
                        frozen_baseline_acc=frozen_baseline_acc)
