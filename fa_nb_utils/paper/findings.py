"""What each notebook starts from, and what it shows, computed from the numbers it just made.

`notebook_setup(profile, results_dir, train_missing=None)` is the set-up cell every notebook
shares, right after its `parameters` cell. One function per notebook's closing "What this shows"
cell (`worked_example`, `training`, `audit_table`, `gain_fit`, `separation`, `early_stop`,
`penalty`, `pitfalls`, `architectures`) returns sentences built only from the numbers it is
given, never a claim typed in advance, and honest on any outcome (it says "no rule was walked
back" when none was).
Not here: the numbers themselves (audit.py, early_stop.py, penalty.py, pitfalls.py, the
protocol), tables and figures (figures.py).
"""
from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from ..io import project_root
from ..validation import is_finite_number
from ..diagnostics import ABOVE, DIAGNOSTICS, default_stop_keys, mode_keys
from ..report import DiagnosticThresholds
from ..rules import rule_label
from .profiles import Profile, get_profile

TINY = "tiny"


# --- Set-up: the cell after every notebook's parameters -------------------------------------------
def resolve_results_dir(results_dir: str | os.PathLike) -> Path:
    """`results_dir` as an absolute folder. A relative one is taken under the project root, so
    that a notebook writes to the same `results/` whether papermill runs it (from the project
    root) or JupyterLab does (its kernels start in `notebooks/`); the current folder when the
    package is not a checkout."""
    path = Path(results_dir).expanduser()
    if path.is_absolute():
        return path
    return (project_root() or Path.cwd()) / path


def notebook_setup(profile: str, results_dir: str | os.PathLike,
                   train_missing: Optional[bool] = None) -> tuple[Profile, Path]:
    """Validate a notebook's parameters (a ValueError names the bad one) and return `(Profile,
    results folder)`; prints the profile, the data it runs on and where the results go.
    """
    prof = get_profile(profile)
    if not isinstance(results_dir, (str, os.PathLike)) or not str(results_dir).strip():
        raise TypeError(f"results_dir must be a non-empty str (a folder), got {results_dir!r}")
    if train_missing is not None and not isinstance(train_missing, bool):
        raise TypeError(f"train_missing must be True or False, got {train_missing!r}")
    results = resolve_results_dir(results_dir)
    data = "CIFAR-10" if prof.data == "cifar10" else f"{prof.data} data"
    print(f"profile {prof.name!r} ({data}): {prof.description}")
    print(f"results under {results}"
          + ("" if train_missing is None else f"; train_missing={train_missing}"))
    return prof, results


# --- Shared wording -------------------------------------------------------------------------------
def _profile_name(profile: Profile | str | None) -> Optional[str]:
    return getattr(profile, "name", profile)


def _too_short(profile: Profile | str | None, what: str) -> list[str]:
    """The tiny-profile caveat, for when nothing fired on the tiny profile (and only then)."""
    if _profile_name(profile) != TINY:
        return []
    return [f"The tiny profile trains for seconds: too short for {what}. Its numbers only show "
            "that the pipeline runs; the smoke and paper profiles are sized for the diagnostics "
            "to fire."]


def _mean(values: Iterable[Any]) -> Optional[float]:
    vals = [float(v) for v in values if is_finite_number(v)]
    return sum(vals) / len(vals) if vals else None


def _std(values: Iterable[Any]) -> Optional[float]:
    """Sample std (ddof=1) of the finite values; None under two."""
    vals = [float(v) for v in values if is_finite_number(v)]
    if len(vals) < 2:
        return None
    m = sum(vals) / len(vals)
    return math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def _acc(mean: Optional[float], std: Optional[float] = None) -> str:
    if mean is None:
        return "undefined"
    return f"{mean:.3f}" + ("" if std is None else f" ± {std:.3f}")


def _letters(keys: Iterable[str]) -> str:
    keys = list(keys)
    return "+".join(f"({k})" for k in keys) if keys else "none"


def _counted(per_seed_fired: Sequence[Sequence[str]]) -> str:
    """"(a)+(b) on 2/2 seeds, (d) on 1/2 seeds" from each seed's fired keys."""
    n = len(per_seed_fired)
    counts = Counter(k for fired in per_seed_fired for k in set(fired))
    keys = [k for k in DIAGNOSTICS if counts.get(k)] + sorted(k for k in counts
                                                             if k not in DIAGNOSTICS)
    groups: dict[int, list[str]] = {}
    for k in keys:
        groups.setdefault(counts[k], []).append(k)
    parts = [f"{_letters(ks)} on {c}/{n} seeds" for c, ks in sorted(groups.items(), reverse=True)]
    return ", ".join(parts) if parts else "none"


def _margin_pp(thresholds: Optional[DiagnosticThresholds]) -> float:
    return (thresholds or DiagnosticThresholds()).frozen_acc_margin_pp


# --- 00: the worked example -----------------------------------------------------------------------
def worked_example(report, *, profile: Profile | str | None = None,
                   num_classes: Optional[int] = None) -> list[str]:
    """The verdict of one `DiagnosticReport`, what fired (with its numbers), what passed and what
    was skipped, and the field's standard verdict beside it when Γ was measured."""
    counted = mode_keys(report.mode)    # the diagnostics of the report's mode's verdict
    fired = {k: v for k, v in report.fired.items() if k in counted}
    on = [k for k, v in fired.items() if v]
    passed = [k for k, v in fired.items() if v is False]
    skipped = [k for k, v in fired.items() if v is None]
    if on:
        lines = [f"The protocol walks this run back: {len(on)} of {len(fired)} diagnostics "
                 f"fired ({_letters(on)}). Verdict: {report.verdict}."]
        lines += [f"  {DIAGNOSTICS[k].label}: {DIAGNOSTICS[k].message(report)}" for k in on]
    else:
        lines = ["The protocol calls this run trustworthy: none of "
                 f"{_letters(passed) if passed else 'the diagnostics'} fired."]
    for k in passed:
        d = DIAGNOSTICS[k]
        side = "above" if d.direction == ABOVE else "below"
        lines.append(f"  passed ({k}) {d.title}: {d.value(report):{d.value_format}}{d.unit} "
                     f"(fires {side} {d.threshold(report.thresholds):g}{d.unit})")
    for k in skipped:
        lines.append(f"  skipped ({k}) {DIAGNOSTICS[k].title}: its optional input (for (d), a "
                     "frozen baseline) was not given, so the verdict says nothing about it")
    other = "robust" if report.mode == "paper" else "paper"
    if report.verdict_for(other) not in (None, report.verdict):
        lines.append(f"In {other} mode the verdict would be: {report.verdict_for(other)}.")
    if report.b_cause:
        lines.append(f"Why (b) fired: {report.b_cause}.")
    if report.alignment is not None and num_classes is not None:
        from ..alignment import standard_verdict
        std = standard_verdict(report.headline_acc, report.alignment, num_classes)
        agree = (std == "trustworthy") == (not on)
        lines.append(f"The field's standard verdict (accuracy above chance and Γ > 0): {std}; "
                     + ("it agrees with the protocol." if agree else
                        "it disagrees with the protocol — the gap the protocol is for."))
    if not on:
        lines += _too_short(profile, "DFA's residual stream to explode on this run")
    return lines


# --- 01: the training grid ------------------------------------------------------------------------
def training(rows: Sequence[dict], *,
             thresholds: Optional[DiagnosticThresholds] = None) -> list[str]:
    """From `audit.runs_summary(records)` (rule, seed, frozen, status, acc_eval per run): how
    many runs this execution trained and how many it reused, and per rule its final accuracy
    (mean over seeds) against the mean of its frozen-random-blocks baseline."""
    rows = list(rows)
    if not rows:
        return ["No runs: the grid is empty."]
    status = Counter(r["status"] for r in rows)
    trained, reused = status.pop("trained", 0), status.pop("reused", 0)
    resumed = sum(status.values())
    parts = [f"{trained} trained by this execution", f"{reused} reused (finished earlier)"]
    if resumed:
        parts.append(f"{resumed} resumed from an interrupted run")
    lines = [f"{len(rows)} runs: " + ", ".join(parts) + "."]
    margin = _margin_pp(thresholds)
    for rule in dict.fromkeys(r["rule"] for r in rows):
        mine = [r["acc_eval"] for r in rows if r["rule"] == rule and not r["frozen"]]
        frozen = [r["acc_eval"] for r in rows if r["rule"] == rule and r["frozen"]]
        acc, base = _mean(mine), _mean(frozen)
        head = f"{rule_label(rule)}: final accuracy {_acc(acc, _std(mine))} ({len(mine)} seeds)"
        if base is None or acc is None:
            lines.append(head + "; no frozen-random-blocks baseline among these runs.")
            continue
        pp = 100 * (acc - base)
        where = ("above" if pp >= margin else "under")
        lines.append(f"{head} vs {base:.3f} for its frozen-random-blocks baseline: {pp:+.1f} pp, "
                     f"{where} (d)'s {margin:g} pp margin on the seed means (notebook 02 applies "
                     "(d) per seed).")
    return lines


# --- 02: the audit table --------------------------------------------------------------------------
def audit_numbers(rows: Sequence[dict]) -> dict[str, dict]:
    """Per rule, from per-seed audit rows (`table.numbers()["per_seed"]`, also the sidecar's): the
    numbers `audit_table` states and `latex.numbers_tex` writes as macros."""
    out = {}
    for rule in dict.fromkeys(r["rule"] for r in rows):
        mine = [r for r in rows if r["rule"] == rule]
        accs = [r["acc"] for r in mine]
        acc, base = _mean(accs), _mean(r.get("frozen_baseline_acc_matched") for r in mine)
        out[rule] = {"seeds": len(mine), "acc": acc, "acc_std": _std(accs),
                     "frozen_baseline_acc": base,
                     "margin_pp": None if acc is None or base is None else 100 * (acc - base),
                     "d_fires": sum(1 for r in mine if "d" in r["fired"]),
                     "walked_back": sum(1 for r in mine if r["protocol_verdict"] != "trustworthy")}
    return out


def audit_table(table, *, profile: Profile | str | None = None,
                thresholds: Optional[DiagnosticThresholds] = None) -> list[str]:
    """Which rules the protocol walks back while the field's standard verdict passes them (with
    the diagnostics that fired), which it walks back where the standard verdict fails too, and per
    rule accuracy against its own frozen baseline.

    `table`: an `audit.AuditTable`, or its per-seed numbers (`table.numbers()["per_seed"]`, also
    the saved sidecar's)."""
    if hasattr(table, "numbers"):
        profile = table.profile if profile is None else profile
        rows = [a.numbers() for a in table.audits]
    else:
        rows = list(table)
    if not rows:
        return ["No runs were audited."]
    margin = _margin_pp(thresholds)
    lines, hidden, both, clean = [], [], [], []
    for rule in dict.fromkeys(r["rule"] for r in rows):
        mine = [r for r in rows if r["rule"] == rule]
        n = len(mine)
        back = [r for r in mine if r["protocol_verdict"] != "trustworthy"]
        missed = [r for r in back if r["standard_verdict"] == "trustworthy"]
        if missed:
            hidden.append(f"{rule_label(rule)}: the standard verdict (accuracy above chance, "
                          f"Γ > 0) passes it on {len(missed)}/{n} seeds that the protocol walks "
                          f"back; fired there: {_counted([r['fired'] for r in missed])}.")
        if len(back) > len(missed):
            rest = [r for r in back if r not in missed]
            both.append(f"{rule_label(rule)}: walked back on {len(rest)}/{n} seeds where the "
                        f"standard verdict fails too; fired: "
                        f"{_counted([r['fired'] for r in rest])}.")
        if not back:
            clean.append(rule_label(rule))
    lines += hidden or ["No rule was walked back while the standard verdict passed it, on these "
                        "runs."]
    lines += both
    if clean:
        lines.append("Trustworthy on every seed: " + ", ".join(clean) + ".")
    for rule, n in audit_numbers(rows).items():
        acc, base = n["acc"], n["frozen_baseline_acc"]
        head = f"{rule_label(rule)}: accuracy {_acc(acc, n['acc_std'])} over {n['seeds']} seeds"
        if base is None or acc is None:
            lines.append(head + ("; no frozen baseline, (d) skipped." if base is None else
                                 f" against its frozen baseline {base:.3f}."))
            continue
        lines.append(f"{head} vs its frozen baseline {base:.3f} "
                     f"({n['margin_pp']:+.1f} pp); (d) fires (margin under "
                     f"{margin:g} pp) on {n['d_fires']}/{n['seeds']} seeds.")
    if not any(r["fired"] for r in rows):
        lines += _too_short(profile, "any diagnostic to fire")
    return lines


# --- 03: early stop -------------------------------------------------------------------------------
def gain_fit(report, curve: dict) -> list[str]:
    """The fit run (gain.py): its two verdicts, why (b) fired or not, and when ||g_L|| and the
    gain crossed their floors, from the report and the curve it is given."""
    g, gain, err = report.bp_grad_norms[-1], report.backward_gains[-1], report.output_error_norm
    lines = [f"The BP fit run ends at accuracy {report.headline_acc:.3f} with median ||e|| "
             f"{err:.2e}, ||g_L|| {g:.2e} and backward gain {gain:.2e}."]
    paper_v, robust_v = report.verdict_for("paper"), report.verdict_for("robust")
    lines.append(f"Paper mode: {paper_v}. Robust mode: {robust_v}.")
    if report.b_cause:
        lines.append(f"(b) fired because of {report.b_cause}.")
    else:
        lines.append("(b) did not fire on this run.")
    cross = curve["g_L_under_floor_from_step"]
    low = [v for v in curve["gain_L"] if is_finite_number(v)]
    lines.append(("||g_L|| crossed (b)'s floor at step " + str(cross)) if cross is not None else
                 "||g_L|| stayed above (b)'s floor over the run.")
    if low:
        lines.append(f"The backward gain stayed between {min(low):.2e} and {max(low):.2e} "
                     f"(its floor: {report.thresholds.backward_gain_floor:.0e}).")
    return lines


def separation(sep) -> list[str]:
    """Per diagnostic: whether any threshold separates the healthy and failing runs, how wide the
    interval is and whether the default sits in it (from the Separation it is given)."""
    lines = []
    for r in sep.rows:
        if r.interval is None:
            lines.append(f"{r.label}: no threshold separates these runs ({r.note}).")
            continue
        width = (f"{r.width_decades:.2f} decades" if r.width_decades is not None
                 else f"{r.width:.3g} wide")
        m = r.margins
        unit = " decades" if r.width_decades is not None else ""
        where = (f"the default {r.default:g} sits inside, {m[0]:.2f}{unit} from the low end and "
                 f"{m[1]:.2f}{unit} from the high end" if r.default_inside
                 else f"the default {r.default:g} lies outside it")
        lines.append(f"{r.label}: separated by an interval {width}; {where}.")
    return lines


def _stops(rows: Sequence[dict], stop_on: Sequence[str]) -> list[dict]:
    """Per run (rule, seed): the earliest replayed epoch a monitor stopping on `stop_on` stops it
    (None: never), the run's last epoch, and the accuracy then and at the end."""
    out = []
    runs = dict.fromkeys((r["rule"], r["seed"]) for r in rows)
    for rule, seed in runs:
        mine = [r for r in rows if r["rule"] == rule and r["seed"] == seed]
        fired = [r for r in mine if r["key"] in stop_on and r["status"] == "fired"]
        first = min(fired, key=lambda r: r["first_epoch"]) if fired else None
        out.append({"rule": rule, "seed": seed, "epochs": mine[0]["epochs"],
                    "stop": None if first is None else first["first_epoch"],
                    "via": None if first is None else first["key"],
                    "acc_then": None if first is None else first["acc_then"],
                    "acc_end": (first or mine[0])["acc_end"]})
    return out


def _via(key: str) -> str:
    return DIAGNOSTICS[key].label if key in DIAGNOSTICS else {"nonfinite": "non-finite values"}.get(
        key, key)


def stop_numbers(rows: Sequence[dict], stop_on: Optional[Sequence[str]] = None) -> dict:
    """From `early_stop.early_stop_table` rows: per run where a default monitor stops it, and the
    epochs it saves of all (`early_stop` states them, `latex.numbers_tex` writes them)."""
    runs = _stops(rows, tuple(default_stop_keys() if stop_on is None else stop_on))
    total = sum(r["epochs"] for r in runs)
    saved = sum(r["epochs"] - r["stop"] for r in runs if r["stop"] is not None)
    return {"runs": runs, "saved_epochs": saved, "total_epochs": total,
            "saved_share": saved / total if total else None}


def early_stop(rows: Sequence[dict], live: Optional[dict] = None, *,
               profile: Profile | str | None = None,
               stop_on: Optional[Sequence[str]] = None) -> list[str]:
    """From `early_stop.early_stop_table` rows (the replay of every trace) and, optionally,
    `early_stop.describe_live_run(live)`: which rules a default monitor would stop, at which
    epoch and through which diagnostic, the compute a stop saves, and what the live run did."""
    numbers = stop_numbers(rows, stop_on)
    runs, saved, total = numbers["runs"], numbers["saved_epochs"], numbers["total_epochs"]
    lines = []
    if not runs:
        lines.append("No traces were replayed.")
    for rule in dict.fromkeys(r["rule"] for r in runs):
        mine = [r for r in runs if r["rule"] == rule]
        stopped = [r for r in mine if r["stop"] is not None]
        if not stopped:
            lines.append(f"{rule_label(rule)}: a default monitor stops none of its {len(mine)} "
                         "runs; they run to completion.")
            continue
        each = "; ".join(
            f"seed {r['seed']} at epoch {r['stop']} of {r['epochs']} via {_via(r['via'])} "
            f"(accuracy {_acc(r['acc_then'])} then, {_acc(r['acc_end'])} at the end)"
            for r in stopped)
        lines.append(f"{rule_label(rule)}: a default monitor stops {len(stopped)}/{len(mine)} "
                     f"runs: {each}.")
    if runs:
        lines.append(f"Compute a default monitor saves on these runs: {saved} of {total} epochs "
                     f"({saved / total:.0%})." if total else "The runs have no epochs.")
    if live is not None:
        who = f"The live {rule_label(str(live.get('rule', '')))} run (seed {live.get('seed')})"
        if live.get("stopped"):
            lines.append(f"{who} stopped itself at epoch {live['trained_epochs']} of "
                         f"{live['planned_epochs']} planned ({live['message']}); "
                         f"{live['saved_share']:.0%} of its epochs were never trained.")
        else:
            lines.append(f"{who} was not stopped: the monitor let all {live['planned_epochs']} "
                         "epochs run.")
    if saved == 0 and not (live or {}).get("stopped"):
        lines += _too_short(profile, "(a) or (b) to fire during training")
    return lines


# --- 04: the penalty ------------------------------------------------------------------------------
def same_lambda(a: float, b: float) -> bool:
    """Whether two penalty lambdas are the same (to rounding): how notebook 04's rows are found."""
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)


def _fires(row: dict, key: str, where: str) -> str:
    """"(a) fires on 2/3 seeds at λ=0", or "(d) is skipped at λ=0" (no frozen baseline)."""
    c = row["fired_counts"].get(key)
    if c is None:
        return f"({key}) is skipped {where}"
    return f"({key}) fires on {c}/{row['seeds']} seeds {where}"


def _ratio(before: float, after: float) -> str:
    """"128× lower", "about the same (ratio 1.02)", "3.1× higher"."""
    ratio = before / after
    if 1 / 1.1 <= ratio <= 1.1:
        return f"about the same (ratio {ratio:.2f})"
    return f"{ratio:.3g}× lower" if ratio > 1 else f"{1 / ratio:.3g}× higher"


def penalty_reduction(rows: Sequence[dict], penalty_lambda: float) -> Optional[float]:
    """DFA's ‖h_L‖ at λ = 0 over its ‖h_L‖ at `penalty_lambda` (means over seeds), from
    `penalty.penalty_table` rows; None when either is missing or not positive."""
    at = {float(r["lambda"]): r["h_L"] for r in rows if r["rule"] == "dfa"}
    h0 = next((h for lam, h in at.items() if same_lambda(lam, 0.0)), None)
    h1 = next((h for lam, h in at.items() if same_lambda(lam, penalty_lambda)), None)
    if not (is_finite_number(h0) and is_finite_number(h1) and h0 > 0 and h1 > 0):
        return None
    return float(h0) / float(h1)


def penalty(rows: Sequence[dict], penalty_lambda: float, *,
            profile: Profile | str | None = None,
            comparison: Optional[Sequence[dict]] = None) -> list[str]:
    """From `penalty.penalty_table` rows: DFA's ‖h_L‖ at λ = 0 against the penalty λ (the ratio),
    whether (a) and (d) fire there, the BP control, the other rules' verdicts at the penalty λ,
    and (given `penalty.compare_partial_full`'s rows) what the partial audit could decide."""
    rows = list(rows)
    at = lambda rule, lam: next((r for r in rows if r["rule"] == rule
                                 and same_lambda(r["lambda"], lam)), None)
    lam = f"λ={penalty_lambda:g}"
    lines = []
    off, on = at("dfa", 0.0), at("dfa", penalty_lambda)
    if off is None or on is None:
        lines.append(f"DFA was not run at both λ=0 and {lam}: no penalty effect to report.")
    else:
        h0, h1 = off["h_L"], on["h_L"]
        if penalty_reduction(rows, penalty_lambda) is not None:
            lines.append(f"With the penalty ({lam}) DFA's ‖h_L‖ is {h1:.2e}, against {h0:.2e} "
                         f"without it: {_ratio(h0, h1)} (means over seeds).")
        else:
            lines.append(f"DFA's ‖h_L‖ is {h0!r} at λ=0 and {h1!r} at {lam}: no ratio.")
        lines.append(f"{_fires(off, 'a', 'at λ=0')}, {_fires(on, 'a', f'at {lam}')}; "
                     f"{_fires(on, 'd', f'at {lam}')} (accuracy {_acc(on['acc_mean'])}, "
                     f"frozen baseline {_acc(on.get('frozen_baseline_acc'))}). "
                     f"Verdict at {lam}: {on['verdict']}.")
    bp0, bp1 = at("bp", 0.0), at("bp", penalty_lambda)
    if bp0 is not None and bp1 is not None:
        lines.append(f"BP control: accuracy {_acc(bp0['acc_mean'])} at λ=0, "
                     f"{_acc(bp1['acc_mean'])} at {lam}; verdict at {lam}: {bp1['verdict']}.")
    others = [r for r in rows if r["rule"] not in ("bp", "dfa")
              and same_lambda(r["lambda"], penalty_lambda)]
    if others:
        lines.append(f"Other rules at {lam}: " + "; ".join(
            f"{rule_label(r['rule'])} {r['verdict']}" for r in others) + ".")
    if comparison:
        per = [c for c in comparison if c["diagnostic"] != "verdict"]
        key = lambda c: c["diagnostic"].split(" ")[0]     # "(a) residual stream ..." -> "(a)"
        agree = [key(c) for c in per if c["comparison"] == "agree"]
        undecided = [key(c) for c in per if "cannot decide" in c["comparison"]]
        differ = [key(c) for c in per if c["comparison"] == "DISAGREE"]
        lines.append("The partial audit (logs without per-layer numbers) on the same DFA runs: "
                     f"agrees with the full audit on {', '.join(agree) or 'nothing'}, cannot "
                     f"decide {', '.join(undecided) or 'nothing'}"
                     + (f", and DISAGREES on {', '.join(differ)}" if differ else "") + ".")
    if off is not None and not off["fired_counts"].get("a"):
        lines += _too_short(profile, "DFA's stream to explode, so the penalty has nothing to "
                                     "hold down here")
    return lines


# --- 05: the pitfalls -----------------------------------------------------------------------------
def pitfalls(results: Sequence[Any]) -> list[str]:
    """One line per pitfall with its measured effect (`PitfallResult`s, or their `row()`s), then
    how many showed on this input."""
    rows = [r.row() if hasattr(r, "row") else r for r in results]
    if not rows:
        return ["No pitfall was measured."]
    lines = [f"{r['pitfall']}: {'shown' if r['holds'] else 'not shown on this input'} — "
             f"{r['what we measured']}" for r in rows]
    shown = [r for r in rows if r["holds"]]
    if len(shown) == len(rows):
        lines.append(f"All {len(rows)} pitfalls showed on this model's input.")
    elif not shown:
        lines.append(f"None of the {len(rows)} pitfalls showed on this input: each check ran, "
                     "and on these numbers its pitfall made no difference.")
    else:
        lines.append(f"{len(shown)} of {len(rows)} pitfalls showed on this input; not shown: "
                     + "; ".join(r["pitfall"] for r in rows if not r["holds"]) + ".")
    return lines


def architectures(claims: Sequence[dict], profile: Profile | None = None) -> list[str]:
    """Sentences over the claims table: which these runs reproduce, which not, and which cannot
    be compared, all read from the table."""
    by = {}
    for c in claims:
        word = c["reproduced"].split(" (")[0]
        by.setdefault(word, []).append(c["claim"])
    n = len(claims)
    lines = [f"Of the paper's {n} mechanism and cross-architecture claims, these runs reproduce "
             f"{len(by.get('yes', []))}."]
    for word, head in (("yes", "Reproduced"),
                       ("partly", "Partly reproduced (the stream explodes and the backward pass "
                                  "collapses by (e), but (b) has not fired within the budget)"),
                       ("no", "Not reproduced"),
                       ("not comparable", "Not comparable (a CIFAR-10 accuracy, or a number "
                                          "this project's definitions fix)"),
                       ("not run", "Not run (the grid lacks the runs)")):
        if by.get(word):
            lines.append(f"{head}: " + "; ".join(by[word]) + ".")
    if profile is not None and profile.data != "cifar10":
        from .figures import data_stamp
        lines.append(f"These are {profile.name}-profile runs on {data_stamp(profile) or profile.data}"
                     ", much shorter than the paper's 100 CIFAR-10 epochs; a claim not reproduced "
                     "here is not refuted by it (README, \"What each profile shows\", says what these data "
                     "can show).")
    return lines
