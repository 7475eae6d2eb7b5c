"""Notebook 03's logic: the protocol as an early-stopping rule, from this project's own traces.

    rows = early_stop_table(main_runs(profile, results_dir))   # replay_trace of every trace
    live = live_monitored_run(profile, results_dir)            # DFA under Monitor(), stops itself
    save_timeline(runs, profile, results_dir)                  # figure 03_timeline

`early_stop_table` turns `monitor.replay_trace` of each run into one row per rule, seed and
diagnostic, beside the paper's numbers (`published.EARLY_STOP`). The live run trains DFA with a
`Monitor` in its own runs folder: the monitor is not part of a run's key, so in the main folder
the unmonitored run of the same config would be returned as finished work and never stop.
Not here: the monitor and replay (monitor.py), training (trainer.py, experiments.py).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Optional, Sequence

from . import published
from .experiments import RunRecord, profile_data, run_grid
from .figures import (data_stamp, figures_dir, profile_metadata, save_figure,
                      save_table, stamp_caption, tables_dir)
from ..diagnostics import DIAGNOSTICS, default_stop_keys
from ..monitor import (NONFINITE, Monitor, ReplayResult, any_stop_key, replay_labels,
                       replay_trace)
from .profiles import Profile, get_profile
from ..report import DiagnosticThresholds
from ..trace import entry_reports
from ..rules import rule_label
from ..runs import TrainResult
from ..trainer import train
from ..validation import finite_or_none


def default_keys() -> tuple[str, ...]:
    """The replay rows of the diagnostics a default Monitor stops on, in the table's order, then
    the first of them ("a|b") and non-finite values."""
    keys = tuple(k for k in default_stop_keys() if k != NONFINITE)
    return keys + (any_stop_key(), NONFINITE)


def short_label(key: str) -> str:
    """"(a)", "(a) or (b)", "non-finite"."""
    if key == NONFINITE:
        return "non-finite"
    return " or ".join(f"({k})" for k in key.split("|"))


def __getattr__(name):  # DEFAULT_KEYS follows the diagnostics table
    if name == "DEFAULT_KEYS":
        return default_keys()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


PAPER_COLUMN = "paper (CIFAR-10)"
MONITORED_RUNS = "runs_monitored"
TABLE_COLUMNS = ("rule", "seed", "diagnostic", "status", "first_epoch", "epochs", "acc_then",
                 "acc_end", "diff_pp", "saved_share", PAPER_COLUMN)
TABLE_FORMATS = {"acc_then": ".4f", "acc_end": ".4f", "diff_pp": "+.1f", "saved_share": ".0%",
                 "saved_share_mean": ".0%", "acc_then_mean": ".4f", "acc_end_mean": ".4f"}
SUMMARY_COLUMNS = ("rule", "diagnostic", "fired_on", "first_epochs", "saved_share_mean",
                   "acc_then_mean", "acc_end_mean", PAPER_COLUMN)


# --- The paper's early-stop numbers ---------------------------------------------------------------
def paper_early_stop(rule: str, key: str) -> Optional[str]:
    """The paper's replayed first-fire epochs (`published.EARLY_STOP`) as a cell, or None;
    "(a) or (b)" is the earlier of the two ranges it reports."""
    quoted = published.EARLY_STOP.get(rule)
    if quoted is None:
        return None
    of = get_profile("paper").epochs
    if quoted.get("fires") is False:
        return "never fires" if key in ("a", "b", "a|b") else None
    ranges = {k: quoted.get(f"{k}_epoch") for k in ("a", "b")}
    if key == "a|b":
        known = {k: r for k, r in ranges.items() if r is not None}
        if not known:
            return None
        first = min(known, key=lambda k: known[k][0])
        lo, hi = known[first]
        return f"epoch {lo}–{hi} of {of} (via ({first}))"
    r = ranges.get(key)
    return None if r is None else f"epoch {r[0]}–{r[1]} of {of}"


# --- Replay of the main-audit traces --------------------------------------------------------------
def main_runs(profile: Profile, results_dir: str | Path, *, rules: Optional[Sequence[str]] = None,
              data=None, train_missing: bool = False) -> list[RunRecord]:
    """Notebook 01's trained runs (every rule x seed, no frozen baselines), read, not trained
    (`train_missing=True` trains a missing one here)."""
    return run_grid(profile, results_dir, rules=rules, frozen=False, data=data,
                    train_missing=train_missing)


def replay_runs(runs: Iterable[RunRecord], thresholds: Optional[DiagnosticThresholds] = None,
                frozen_baseline_acc: Optional[dict[str, float]] = None
                ) -> list[tuple[RunRecord, ReplayResult]]:
    """`replay_trace` of every (non-frozen) run's trace, in the runs' order; with
    `frozen_baseline_acc` ({rule: frozen accuracy}) (d) is replayed too."""
    out = []
    for run in runs:
        if run.frozen:
            continue
        frozen = (frozen_baseline_acc or {}).get(run.rule)
        out.append((run, replay_trace(run.result.trace, thresholds=thresholds,
                                      frozen_baseline_acc=frozen)))
    return out


def early_stop_table(runs: Iterable[RunRecord], keys: Optional[Sequence[str]] = None,
                     thresholds: Optional[DiagnosticThresholds] = None,
                     frozen_baseline_acc: Optional[dict[str, float]] = None) -> list[dict]:
    """One row per rule, seed and diagnostic: the replay's numbers (`ReplayRow`), unchanged,
    and the paper's. `keys`: the replay rows to show (default: `default_keys()`).
    """
    keys = default_keys() if keys is None else tuple(keys)
    labels = replay_labels()
    rows = []
    for run, replay in replay_runs(runs, thresholds, frozen_baseline_acc):
        for key in keys:
            r = replay.row(key)
            rows.append({
                "rule": run.rule, "seed": run.seed, "diagnostic": short_label(key), "key": key,
                "label": labels[key], "status": r.status, "first_epoch": r.first_epoch,
                "epochs": replay.last_epoch, "acc_then": r.acc_then,
                "acc_end": r.acc_end if r.status == "fired" else replay.final_acc,
                "diff_pp": r.diff_pp, "saved_share": r.saved_share, "detail": r.detail,
                PAPER_COLUMN: paper_early_stop(run.rule, key),
            })
    return rows


def _mean(values: list) -> Optional[float]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


def early_stop_summary(rows: Sequence[dict]) -> list[dict]:
    """Per rule and diagnostic over seeds: how many seeds fire, their first epochs, the mean
    saved share and accuracies (over the seeds that fire), and the paper's column."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["rule"], r["key"]), []).append(r)
    out = []
    for (rule, key), rs in groups.items():
        fired = [r for r in rs if r["status"] == "fired"]
        epochs = sorted(r["first_epoch"] for r in fired)
        out.append({
            "rule": rule, "diagnostic": short_label(key), "key": key,
            "fired_on": f"{len(fired)}/{len(rs)} seeds",
            "first_epochs": ", ".join(map(str, epochs)) if epochs else "never",
            "saved_share_mean": _mean([r["saved_share"] for r in fired]),
            "acc_then_mean": _mean([r["acc_then"] for r in fired]),
            "acc_end_mean": _mean([r["acc_end"] for r in rs]),
            PAPER_COLUMN: rs[0][PAPER_COLUMN],
        })
    return out


def save_early_stop_table(rows: Sequence[dict], profile: Profile, results_dir: str | Path,
                          live: Optional[dict] = None) -> dict[str, Path]:
    """Table `03_early_stop` (per rule, seed, diagnostic) with the summary and the live run
    (`describe_live_run`) in its sidecar."""
    summary = early_stop_summary(rows)
    caption = stamp_caption(
        f"Replay of the main-audit traces ({profile.name} profile): when each diagnostic first "
        "fires, accuracy then and at the end, and the share of the run a stop would have saved, "
        f"(E - e)/E. Column '{PAPER_COLUMN}' quotes the paper (100-epoch CIFAR-10 runs).",
        profile)
    seeds = sorted({r["seed"] for r in rows})
    return save_table(list(rows), "03_early_stop", columns=TABLE_COLUMNS,
                      metadata=profile_metadata(profile, seeds=seeds), caption=caption,
                      outdir=tables_dir(results_dir),
                      numbers={"summary": summary, "live": live, "paper_source": published.SOURCE})


# --- The live monitored run -----------------------------------------------------------------------
def live_monitored_run(profile: Profile, results_dir: str | Path, *, rule: str = "dfa",
                       seed: Optional[int] = None, monitor: Optional[Monitor] = None,
                       data=None, **overrides) -> TrainResult:
    """Train `rule` for `profile.monitor_epochs` under `monitor` (default `Monitor()`), in
    `<results_dir>/runs_monitored`. A rerun returns the stopped run at once, whatever monitor it
    is given: delete that folder to watch it again with other thresholds.
    """
    monitor = Monitor() if monitor is None else monitor
    data = profile_data(profile) if data is None else data
    seed = profile.seeds[0] if seed is None else seed
    config = profile.config(rule, seed, epochs=profile.monitor_epochs,
                            device=str(data.device), **overrides)
    return train(config, data=data, runs_root=Path(results_dir) / MONITORED_RUNS,
                 monitor=monitor)


def describe_live_run(result: TrainResult) -> dict:
    """What the live run did: planned vs trained epochs, the stop reason and what it saved."""
    planned = result.config.epochs
    last = result.trace[-1]
    stop = result.stop_reason
    out = {"rule": result.config.rule, "seed": result.config.seed, "planned_epochs": planned,
           "trained_epochs": last["epoch"], "acc_at_end_of_trace": last["acc_eval"],
           "stopped": stop is not None,
           "stop_reason": stop.to_dict() if stop is not None else None,
           "message": (stop.message if stop is not None
                       else f"no stop: the monitor let all {planned} epochs run"),
           "saved_share": ((planned - stop.epoch) / planned if stop is not None and planned
                           else None)}
    return out


def stop_epoch(replay: ReplayResult, stop_on: Optional[Sequence[str]] = None) -> Optional[int]:
    """The epoch a monitor with these `stop_on` keys (default: a default Monitor's) would have
    stopped the replayed run."""
    stop_on = default_stop_keys() if stop_on is None else stop_on
    rows = {r.key for r in replay.rows}
    epochs = [replay.row(k).first_epoch for k in stop_on
              if k in rows and replay.row(k).status == "fired"]
    return min(epochs) if epochs else None


def live_vs_replay(result: TrainResult, runs: Iterable[RunRecord]) -> Optional[dict]:
    """The live stop beside what the replay of the unmonitored run of the same config predicts;
    None when no main-audit run has the live run's config."""
    live = result.config.to_dict()
    for run in runs:
        if run.frozen or run.config.to_dict() != live:
            continue
        monitor = result.monitor or Monitor()
        replay = replay_trace(run.result.trace, thresholds=monitor.thresholds,
                              frozen_baseline_acc=monitor.frozen_baseline_acc)
        predicted = stop_epoch(replay, monitor.stop_on)
        actual = result.stop_reason.epoch if result.stop_reason is not None else None
        return {"rule": run.rule, "seed": run.seed, "replay_stop_epoch": predicted,
                "live_stop_epoch": actual, "agree": predicted == actual}
    return None


# --- The timeline figure --------------------------------------------------------------------------
def timeline(runs: Iterable[RunRecord], seed: Optional[int] = None,
             thresholds: Optional[DiagnosticThresholds] = None) -> dict[str, dict]:
    """Per rule, one seed's trace as series: epoch, (a)'s max per-block growth, (b)'s ||g_L||,
    acc_eval, and the first epochs (a) and (b) fire in its replay. Seed: 42 if present, else the
    first seed of each rule."""
    runs = [r for r in runs if not r.frozen]
    out = {}
    for rule in dict.fromkeys(r.rule for r in runs):
        mine = [r for r in runs if r.rule == rule]
        chosen = next((r for r in mine if r.seed == (42 if seed is None else seed)), None)
        if chosen is None:
            if seed is not None:
                continue
            chosen = mine[0]
        trace = chosen.result.trace
        replay = replay_trace(trace, thresholds=thresholds)
        reports = entry_reports(trace, thresholds)
        out[rule] = {
            "seed": chosen.seed,
            "epoch": list(reports),
            "max_block_growth": [finite_or_none(DIAGNOSTICS["a"].value(r))
                                 for r in reports.values()],
            "g_L": [finite_or_none(DIAGNOSTICS["b"].value(r)) for r in reports.values()],
            "acc_eval": [finite_or_none(r.headline_acc) for r in reports.values()],
            "first_fired": {k: replay.row(k).first_epoch for k in ("a", "b")},
        }
    return out


def plot_timeline(series: dict[str, dict], thresholds: Optional[DiagnosticThresholds] = None,
                  stamp: Optional[str] = None):
    """Three panels against epoch: (a)'s max per-block growth and (b)'s ||g_L|| (log y, the
    thresholds as dashed lines, first-fire epochs marked with an x), and accuracy."""
    from .figures import figure_legend, new_figure, paper_style, rule_colour

    t = thresholds or DiagnosticThresholds()
    with paper_style():
        fig, axes = new_figure(1, 3, aspect=0.42)
        panels = (("max_block_growth", "a", "(a) max per-block growth", t.h_norm_explosion_ratio,
                   f"threshold {t.h_norm_explosion_ratio:g}×"),
                  ("g_L", "b", "(b) median ‖g_L‖ (paper scale)", t.g_norm_floor,
                   f"floor {t.g_norm_floor:.0e}"))
        for ax, (field, key, title, level, level_label) in zip(axes, panels):
            for rule, s in series.items():
                pts = [(e, v) for e, v in zip(s["epoch"], s[field]) if v is not None and v > 0]
                if not pts:
                    continue
                color = rule_colour(rule)
                ax.plot(*zip(*pts), color=color, label=f"{rule_label(rule)} (seed {s['seed']})")
                fired = s["first_fired"][key]
                if fired is not None:
                    value = dict(pts).get(fired)
                    if value is not None:
                        ax.plot([fired], [value], "x", color=color, markersize=6, mew=1.5)
                    ax.axvline(fired, color=color, ls=":", lw=0.8)
            ax.axhline(level, color="0.3", ls="--", lw=0.8, label=level_label)
            ax.set_yscale("log")
            ax.set_xlabel("epoch")
            ax.set_title(title)
        ax = axes[2]
        for rule, s in series.items():
            color = rule_colour(rule)  # the rule's colour in every figure
            ax.plot(s["epoch"], s["acc_eval"], color=color,
                    label=f"{rule_label(rule)} (seed {s['seed']})")  # one legend entry per rule
            for key, marker in (("a", "x"), ("b", "+")):
                fired = s["first_fired"][key]
                if fired is not None and fired in s["epoch"]:
                    ax.plot([fired], [s["acc_eval"][s["epoch"].index(fired)]], marker,
                            color=color, markersize=6, mew=1.5)
        ax.set_xlabel("epoch")
        ax.set_title("accuracy (full test split)")
        figure_legend(fig)
        if stamp:
            fig.suptitle(stamp, fontsize="small", color="0.4")
    return fig


def save_timeline(runs: Iterable[RunRecord], profile: Profile, results_dir: str | Path,
                  thresholds: Optional[DiagnosticThresholds] = None):
    """Figure `03_timeline` (pdf, png, json with the plotted series); returns (fig, paths)."""
    from .figures import paper_style

    series = timeline(runs, thresholds=thresholds)
    fig = plot_timeline(series, thresholds,
                        stamp=data_stamp(profile))
    seeds = sorted({s["seed"] for s in series.values()})
    with paper_style():
        paths = save_figure(fig, "03_timeline", numbers=series,
                            metadata=profile_metadata(profile, seeds=seeds,
                                                      thresholds=(thresholds or
                                                                  DiagnosticThresholds()).to_dict()),
                            outdir=figures_dir(results_dir))
    return fig, paths
