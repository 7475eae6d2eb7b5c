"""The protocol in training: a `Monitor` that stops a degenerate run, and replay of a saved trace.

    result = train(config, monitor=Monitor())        # stops on (a), (b) and non-finite values
    print(replay_file("runs/dfa-s42-.../trace.json"))  # when would the protocol have fired?

The monitor runs `diagnose` at epoch 0 and every `every` epochs on the run's eval batches, with
the epoch's `acc_eval` as the headline; every diagnostic is recorded, those in `stop_on` stop the
run with a named `StopReason` ("nonfinite": any NaN or inf number). `replay_trace` answers the
same question from a saved trace: per diagnostic, the first epoch it fires, the accuracy then and
at the end, and the share of the run a stop would have saved.
Not here: the diagnostics (diagnostics.py, protocol.py), the trace format (trace.py), the
training loop (trainer.py), logs without per-layer numbers (partial_audit.py).
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from .diagnostics import ABOVE, DIAGNOSTICS, PAPER, check_mode, default_stop_keys, diagnostic_keys
from .protocol import diagnose
from .report import DiagnosticReport, DiagnosticThresholds, thresholds_or_default
from .trace import missing_text, read_entry, read_trace
from .validation import check_accuracy
from .validation import finite_or_none as _num, is_finite_number as _finite

SCHEMA_VERSION = 1
NONFINITE = "nonfinite"
NONFINITE_NAME = "non-finite values"


def stop_keys() -> tuple[str, ...]:
    """What `Monitor.stop_on` may name: every diagnostic judged during training, and nonfinite.

    A `final_only` diagnostic ((d)) cannot: early accuracy is always below a final baseline, so
    it would stop every run at its first check."""
    return tuple(k for k, d in DIAGNOSTICS.items() if not d.final_only) + (NONFINITE,)


def stop_order() -> tuple[str, ...]:
    """When several stopping diagnostics fire at one epoch, the reason names the first of these."""
    return (NONFINITE,) + diagnostic_keys()


def stop_names() -> dict[str, str]:
    return {**{k: d.name for k, d in DIAGNOSTICS.items()}, NONFINITE: NONFINITE_NAME}


def _float_or_none(v) -> Optional[float]:
    """A number as a Python float (NaN and inf kept), None as None."""
    return None if v is None else float(v)


@dataclass(frozen=True)
class StopReason:
    """Why a diagnostic fired at an epoch: key, name, the statistic, its threshold, a sentence
    (for "nonfinite": the offending number and no threshold).
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
    for key in diagnostic_keys():
        reason = report.input_reasons.get(key)
        if reason and "non-finite" in reason and reason not in why:
            why.append(reason)
    return "; ".join(why) if why else None


def fired_reasons(report: DiagnosticReport, epoch: int) -> dict[str, StopReason]:
    """A StopReason for every diagnostic of the table that fires in `report`, by key: its value
    and threshold in its own units, and its firing message (the bad-input reason when its input
    was NaN, inf, zero or empty)."""
    out = {}
    for key, fired in report.fired.items():
        if not fired:
            continue
        diag = DIAGNOSTICS[key]
        out[key] = StopReason(key, diag.name, diag.value(report),
                              diag.threshold(report.thresholds), epoch,
                              f"({key}) {diag.message(report)} at epoch {epoch}")
    return out


def _nonfinite_stop(epoch: int, why: str, value: float = float("nan")) -> StopReason:
    return StopReason("nonfinite", NONFINITE_NAME, value, None, epoch,
                      f"non-finite values: {why} at epoch {epoch}")


class Monitor:
    """Runs the protocol during training and decides whether to stop.

    Args:
        every: run `diagnose` at epoch 0 and every `every` epochs (a non-finite train loss is
            checked every epoch).
        stop_on: keys of the diagnostics table or "nonfinite" (default: the table's
            `stops_by_default` ones of `mode`, and "nonfinite"); (d), judged on final numbers
            only, is refused.
        thresholds, frozen_baseline_acc, hidden_modules, logits_fn: as for `diagnose`.
        mode: "paper" (default: stops on (a), (b)) or "robust" (on (a), (e)).

    After a run, `records` holds one strict-JSON dict per monitored epoch, `first_fired` the
    first epoch each diagnostic fired, `stop_reason` the stop (None: the run completed).
    """

    def __init__(self, every: int = 1, stop_on: Optional[Sequence[str]] = None,
                 thresholds: Optional[DiagnosticThresholds] = None,
                 frozen_baseline_acc: Optional[float] = None, mode: str = PAPER,
                 hidden_modules=None, logits_fn=None):
        check_mode(mode)
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"Monitor.every must be an int >= 1 (epochs between checks), "
                             f"got {every!r}")
        if stop_on is None:
            stop_on = default_stop_keys(mode)  # the table's `stops_by_default`, and nonfinite
        if isinstance(stop_on, str):
            stop_on = (stop_on,)
        stop_on = tuple(stop_on)
        names = stop_names()
        unknown = [k for k in stop_on if k not in names]
        if unknown:
            raise ValueError(f"Monitor.stop_on has unknown key(s) {unknown}; valid keys: "
                             + ", ".join(f"{k!r} ({names[k]})" for k in stop_keys()))
        final = [k for k in stop_on if k in DIAGNOSTICS and DIAGNOSTICS[k].final_only]
        if final:
            k = final[0]
            raise ValueError(
                f"Monitor.stop_on includes {k!r}, but ({k}) {DIAGNOSTICS[k].title} is judged on "
                "the run's final numbers (for (d): the finished run's accuracy against the frozen "
                "baseline's final accuracy): early accuracy is always below a final baseline, so "
                "it would stop every run at its first check, and at the last epoch a stop saves "
                f"nothing. Remove {k!r} from stop_on; the monitor still records it at every check, "
                "and the finished run is judged with replay_trace(trace, "
                f"frozen_baseline_acc=...)[{k!r}] or diagnose(model, ..., frozen_baseline_acc=...)")
        thresholds = thresholds_or_default(thresholds, "Monitor.thresholds")
        reason = check_accuracy("frozen_baseline_acc", frozen_baseline_acc)
        if reason:
            raise ValueError(f"Monitor.frozen_baseline_acc must be a finite fraction in [0, 1]; "
                             f"{reason}")
        self.every = every
        self.mode = mode
        self.hidden_modules = hidden_modules  # for a model without return_hidden (hooks.py)
        self.logits_fn = logits_fn
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
        self.first_fired: dict[str, Optional[int]] = {k: None for k in stop_names()}
        self.stop_reason: Optional[StopReason] = None
        self.last_report: Optional[DiagnosticReport] = None

    def due(self, epoch: int) -> bool:
        return epoch % self.every == 0

    def settings(self) -> dict[str, Any]:
        return {"every": self.every, "mode": self.mode, "stop_on": list(self.stop_on),
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

        Diagnostics firing together: the reason names the first (nonfinite, then the table's
        order); the record lists all of them."""
        fired: dict[str, StopReason] = {}
        report = None
        if self.due(epoch):
            report = diagnose(model, eval_batches, headline_acc=acc_eval,
                              frozen_baseline_acc=self.frozen_baseline_acc,
                              method_name=self.method_name, notes=f"epoch {epoch}",
                              thresholds=self.thresholds, mode=self.mode,
                              hidden_modules=self.hidden_modules, logits_fn=self.logits_fn)
            self.last_report = report
            fired.update(fired_reasons(report, epoch))
            why = nonfinite_reason(report, train_loss)
            if why:
                fired["nonfinite"] = _nonfinite_stop(epoch, why)
        elif train_loss is not None and not _finite(train_loss):
            fired["nonfinite"] = _nonfinite_stop(epoch, f"train loss {train_loss}", train_loss)
        stop = next((fired[k] for k in stop_order() if k in fired and k in self.stop_on), None)
        for key in fired:
            if self.first_fired[key] is None:
                self.first_fired[key] = epoch
        if report is not None or fired:
            self.records.append({
                "epoch": epoch, "acc_eval": _num(acc_eval), "train_loss": _num(train_loss),
                "report": report.to_dict() if report is not None else None,
                "fired": {k: fired[k].to_dict() for k in stop_order() if k in fired},
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
        return (f"Monitor(every={self.every}, mode={self.mode!r}, stop_on={self.stop_on!r}, "
                f"frozen_baseline_acc={self.frozen_baseline_acc!r})")


# --- Replay of a saved trace ----------------------------------------------------------------------
def any_stop_key(mode: str = PAPER) -> str:
    """The replay row "any of the diagnostics a default monitor stops on" in `mode`: "a|b" in
    paper mode, "a|e" in robust mode."""
    return "|".join(k for k in default_stop_keys(mode) if k != NONFINITE)


def replay_rows(mode: str = PAPER) -> tuple[str, ...]:
    """The rows of a replay: every diagnostic of the table, the default-stopping ones of `mode`
    together, and non-finite values."""
    return diagnostic_keys() + (any_stop_key(mode), NONFINITE)


def replay_labels(mode: str = PAPER) -> dict[str, str]:
    keys = [k for k in default_stop_keys(mode) if k != NONFINITE]
    return {**{k: d.label for k, d in DIAGNOSTICS.items()},
            any_stop_key(mode): "any of " + ", ".join(f"({k})" for k in keys),
            NONFINITE: NONFINITE_NAME}


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
    saved_share: Optional[float] = None   # (E - e) / E, E the last epoch of the trace; 0 for (d)
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
    mode: str = PAPER

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
                "frozen_source": self.frozen_source, "mode": self.mode,
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
            "Thresholds: " + ", ".join(
                f"({k}) {d.title} {'>' if d.direction == ABOVE else '<'} "
                f"{d.threshold(t):g}{d.unit}" + (f" ({self.frozen_source})" if d.final_only else "")
                for k, d in DIAGNOSTICS.items()) + f"; mode {self.mode}",
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


def _available(carried: dict[str, bool]) -> dict[str, bool]:
    """Which diagnostics an entry can decide: those whose inputs it carries."""
    return {k: all(carried[f] for f in d.needs) for k, d in DIAGNOSTICS.items()}


def _recorded_frozen(entries: list[dict]) -> Optional[float]:
    """The frozen baseline the trace's protocol records used (the monitor's, the last recorded)."""
    for e in reversed(entries):
        protocol = e.get("protocol")
        if protocol is not None and protocol.get("frozen_baseline_acc") is not None:
            return float(protocol["frozen_baseline_acc"])
    return None


def replay_trace(trace, thresholds: Optional[DiagnosticThresholds] = None,
                 frozen_baseline_acc: Optional[float] = None, mode: str = PAPER) -> ReplayResult:
    """When would each diagnostic have stopped this run, and at what cost?

    `trace`: a list of entries (trace.py; format 1 is read too) or the saved file's dict. Each
    diagnostic is reported at the first entry where it fires; (d) compares final accuracies, so
    it is judged on the last entry only, against `frozen_baseline_acc`, else the one the trace's
    protocol records used. `mode` picks what the "any of" row combines: (a) and (b) ("paper"),
    or (a) and (e) ("robust").
    """
    check_mode(mode)
    thresholds = thresholds_or_default(thresholds)
    reason = check_accuracy("frozen_baseline_acc", frozen_baseline_acc)
    if reason:
        raise ValueError(f"frozen_baseline_acc must be a finite fraction in [0, 1]; {reason}")
    entries = read_trace(trace)
    rows_keys, labels = replay_rows(mode), replay_labels(mode)
    any_key = any_stop_key(mode)
    during = [k for k, d in DIAGNOSTICS.items() if not d.final_only]  # judged at every entry
    first: dict[str, tuple[dict, str]] = {}
    seen = {k: False for k in rows_keys}
    for e in entries:
        report, carried = read_entry(e, thresholds, frozen_baseline_acc)
        available = _available(carried)
        fired = report.fired
        why = fired_reasons(report, e["epoch"])
        for key in during:
            if not available[key]:
                continue
            seen[key] = True
            if fired[key] and key not in first:
                first[key] = (e, why[key].message)
        parts = [k for k in any_key.split("|") if k]
        if any(available[k] for k in parts):
            seen[any_key] = True
            hits = [k for k in parts if available[k] and fired[k]]
            if hits and any_key not in first:
                first[any_key] = (e, "; ".join(why[k].message for k in hits))
        seen[NONFINITE] = True
        loss = None  # epoch 0 has no train loss (null by design)
        if e["epoch"] > 0 and "train_loss" in e:
            # null after epoch 0 in a saved trace: non-finite when written (strict JSON)
            loss = float("nan") if e["train_loss"] is None else float(e["train_loss"])
        nf = nonfinite_reason(report, loss)
        if nf and NONFINITE not in first:
            first[NONFINITE] = (e, f"non-finite values: {nf} at epoch {e['epoch']}")

    last = entries[-1]
    E = last["epoch"]
    acc_end = _float_or_none(last.get("acc_eval"))
    frozen = frozen_baseline_acc if frozen_baseline_acc is not None else _recorded_frozen(entries)
    frozen_source = ("given to replay" if frozen_baseline_acc is not None else
                     "from the trace's protocol records" if frozen is not None else
                     "not provided")
    last_report, last_carried = read_entry(last, thresholds, frozen)
    last_available = _available(last_carried)
    rows = []
    for key in rows_keys:
        label = labels[key]
        diag = DIAGNOSTICS.get(key)
        if diag is not None and diag.final_only:
            if last_available[key]:
                rows.append(_final_row(diag, last, last_report, label))
            else:
                missing = [missing_text(f) for f in diag.needs if not last_carried[f]]
                rows.append(ReplayRow(key, label, "not available", detail="; ".join(missing)))
        elif key in first:
            e, detail = first[key]
            acc_then = _float_or_none(e.get("acc_eval"))
            diff = (round(100.0 * (acc_end - acc_then), 9)
                    if _finite(acc_end) and _finite(acc_then) else None)
            share = (E - e["epoch"]) / E if E > 0 else None
            rows.append(ReplayRow(key, label, "fired", e["epoch"], acc_then, acc_end, diff,
                                  share, detail))
        elif seen[key]:
            parts = [k for k in key.split("|") if k] if diag is None and key != NONFINITE else []
            unseen = [k for k in parts if not seen.get(k)]
            detail = "; ".join(
                f"({k}) not available: " + "; ".join(missing_text(f) for f in DIAGNOSTICS[k].needs
                                                     if not last_carried[f])
                for k in unseen)
            rows.append(ReplayRow(key, label, "never fired", detail=detail))
        else:
            if diag is not None:  # no entry carried what it needs
                missing = "; ".join(missing_text(f) for f in diag.needs if not last_carried[f])
            else:
                missing = "none of " + ", ".join(f"({k})" for k in key.split("|")) + \
                    " can be computed"
            rows.append(ReplayRow(key, label, "not available", detail=missing))
    return ReplayResult(rows=tuple(rows), first_epoch=entries[0]["epoch"], last_epoch=E,
                        num_entries=len(entries), final_acc=acc_end, thresholds=thresholds,
                        frozen_baseline_acc=_float_or_none(frozen_baseline_acc),
                        frozen_source=frozen_source, mode=mode)


def _final_row(diag, last: dict, report: DiagnosticReport, label: str) -> ReplayRow:
    """A diagnostic judged on final numbers ((d)), on the trace's last entry."""
    E, key = last["epoch"], diag.key
    final = (f"({key}) is judged on the final accuracy only (epoch {E}, the last entry): early "
             "accuracy is always below a final baseline, and a stop on it saves nothing")
    if not report.fired[key]:
        value, threshold = diag.value(report), diag.threshold(report.thresholds)
        return ReplayRow(key, label, "never fired",
                         detail=f"{diag.title}: {value:{diag.value_format}}{diag.unit} against "
                                f"threshold {threshold:g}{diag.unit} does not fire; {final}")
    acc = _float_or_none(last.get("acc_eval"))
    return ReplayRow(key, label, "fired", E, acc, acc, 0.0 if _finite(acc) else None, 0.0,
                     f"{fired_reasons(report, E)[key].message}; {final}")


def replay_file(path, thresholds: Optional[DiagnosticThresholds] = None,
                frozen_baseline_acc: Optional[float] = None, mode: str = PAPER) -> ReplayResult:
    """`replay_trace` on a saved trace.json (`{"metadata": ..., "trace": [...]}`) or a bare list.

    A file that is not complete JSON is refused with a ValueError that names the path and how to
    get the trace back from the run's checkpoint.
    """
    from .checkpoint import CHECKPOINT_NAME

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no trace file at {path}; the trainer writes trace.json beside "
                                "each run's checkpoint (train(..., runs_root=DIR))")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        what = (f"{exc.msg} at line {exc.lineno}, column {exc.colno}"
                if isinstance(exc, json.JSONDecodeError) else "not UTF-8 text")
        ckpt = path.parent / CHECKPOINT_NAME
        if ckpt.is_file():
            fix = (f"The run's checkpoint {ckpt} keeps the full trace: replay it with "
                   f"replay_trace(load_checkpoint({str(ckpt)!r})['trace']) (load_checkpoint is "
                   "in fa_nb_utils.checkpoint), or rerun the training with the same runs_root: it "
                   "rewrites trace.json from the verified checkpoint, finished runs included")
        else:
            fix = (f"There is no {CHECKPOINT_NAME} beside it to recover the trace from: rerun "
                   "the training with the same runs_root (train(config, runs_root=DIR)), which "
                   "trains the run again and writes trace.json")
        raise ValueError(f"{path} is truncated or not JSON ({path.stat().st_size} bytes; {what}), "
                         f"so it cannot be replayed. {fix}.") from exc
    return replay_trace(data, thresholds=thresholds, frozen_baseline_acc=frozen_baseline_acc,
                        mode=mode)
