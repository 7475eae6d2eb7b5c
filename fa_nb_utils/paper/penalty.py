"""Notebook 04's logic: the residual penalty, audited in full and from partial logs.

    runs = run_penalty_study(profile, results_dir)      # DFA lambda sweep, BP control, other rules
    frozen = frozen_baselines(runs)                     # each rule's frozen-blocks seed-mean
    rows = penalty_table(audit_runs(runs, frozen), profile)            # table 04_penalty_audit
    partial = partial_audit_from_traces(runs, profile.penalty_lambda, frozen["dfa"]["mean"])

`penalty_plan` trains DFA at every lambda of the profile, BP at 0 and at `penalty_lambda`, the
other rules at `penalty_lambda`, and each rule's frozen baseline at lambda 0 only (with frozen
blocks the penalty has nothing to act on). The partial audit rebuilds from the traces what logs
without per-layer numbers keep and runs `partial_audit`. The paper's numbers sit in their own
columns.
Not here: training (trainer.py), diagnose (protocol.py), the partial audit (partial_audit.py).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from . import published
from ..protocol import diagnose
from .executors import check_settings
from .findings import same_lambda
from .experiments import RunRecord, profile_data, rules_in_order, run_plan
from .figures import (data_stamp, dataset_name, figures_dir, profile_metadata, save_figure,
                      save_table, stamp_caption, tables_dir)
from ..partial_audit import PartialAuditResult, partial_audit
from .profiles import Profile
from ..diagnostics import DIAGNOSTICS, mode_keys
from ..report import DiagnosticReport, DiagnosticThresholds
from ..trace import entry_reports
from ..rules import rule_label
from ..text import fmt

# The paper's penalty comparison ("without -> with", published.PENALTY) used lambda = 1e-2.
PAPER_PENALTY_LAMBDA = 1e-2
PAPER_ACC_COLUMN = "paper acc (CIFAR-10)"
PAPER_HL_COLUMN = "paper ‖h_L‖ (CIFAR-10)"
TABLE_COLUMNS = ("rule", "role", "lambda", "seeds", "acc", "frozen_baseline_acc", "h_L", "g_L",
                 "fired", "verdict", PAPER_ACC_COLUMN, PAPER_HL_COLUMN)
ROLES = {"dfa": "λ sweep", "bp": "BP control"}
TABLE_FORMATS = {"lambda": "g", "h_L": ".2e", "g_L": ".2e", "frozen_baseline_acc": ".4f"}


# --- Training -------------------------------------------------------------------------------------
def penalty_plan(profile: Profile, rules: Optional[Sequence[str]] = None
                 ) -> list[tuple[str, tuple[float, ...]]]:
    """(rule, lambdas) in table order: BP (0 and the penalty lambda), DFA (the sweep), others.

    `rules`: None gives the profile's `penalty_rules` (every registered rule when that is None)."""
    plan = []
    for rule in rules_in_order(profile.penalty_rules if rules is None else rules):
        if rule == "dfa":
            lams = profile.lambdas
        elif rule == "bp":
            lams = (0.0, profile.penalty_lambda)
        else:
            lams = (profile.penalty_lambda,)
        plan.append((rule, tuple(dict.fromkeys(float(l) for l in lams))))
    return plan


def run_penalty_study(profile: Profile, results_dir: str | Path, *,
                      rules: Optional[Sequence[str]] = None, seeds: Optional[Sequence[int]] = None,
                      data=None, executor: Any = None, workers: Optional[int] = None,
                      threads: Optional[int] = None, progress: bool = True) -> list[RunRecord]:
    """Train (or reuse) every run of `penalty_plan` and each rule's frozen baseline (lambda 0,
    the config and run key a frozen run of this plan at lambda 0 has), all on one executor
    (`experiments.run_grid` explains executor, workers, threads)."""
    check_settings(executor, workers, threads)   # before the data load
    data = profile_data(profile) if data is None else data
    plan = penalty_runs(profile, rules, seeds, str(data.device))
    return run_plan(plan, data, results_dir, accept_stopped=False, executor=executor,
                    workers=workers, threads=threads, progress=progress)


def penalty_runs(profile: Profile, rules: Optional[Sequence[str]] = None,
                 seeds: Optional[Sequence[int]] = None, device: str = "cpu") -> list[tuple]:
    """(rule, seed, frozen, config, lambda) for every run of `penalty_plan`, each rule's frozen
    baseline (at lambda 0) included."""
    plan = []
    for rule, lams in penalty_plan(profile, rules):
        order = ([(0.0, False), (0.0, True)] if 0.0 in lams else [(0.0, True)]) + [
            (lam, False) for lam in lams if lam != 0.0]
        for lam, freeze in order:
            for seed in (profile.seeds if seeds is None else seeds):
                config = profile.penalty_config(rule, seed, lam, freeze_blocks=freeze,
                                                device=device)
                plan.append((rule, seed, freeze, config, lam))
    return plan


def final_acc(run: RunRecord) -> float:
    """acc_eval (full test split) at the run's last trace entry."""
    return float(run.result.trace[-1]["acc_eval"])


def frozen_baselines(runs: Iterable[RunRecord]) -> dict[str, dict]:
    """{rule: {"mean", "std" (ddof=1, None with one seed), "per_seed"}} of the frozen runs."""
    accs: dict[str, dict] = {}
    for run in runs:
        if run.frozen:
            accs.setdefault(run.rule, {})[run.seed] = final_acc(run)
    out = {}
    for rule, per_seed in accs.items():
        v = np.array(list(per_seed.values()), dtype=np.float64)
        out[rule] = {"mean": float(v.mean()),
                     "std": float(v.std(ddof=1)) if len(v) > 1 else None,
                     "per_seed": per_seed}
    return out


# --- The full audit -------------------------------------------------------------------------------
def audit_runs(runs: Iterable[RunRecord], frozen: dict[str, dict],
               thresholds: Optional[DiagnosticThresholds] = None) -> list[dict]:
    """`diagnose` of every non-frozen run, with its rule's frozen seed-mean for (d): one dict
    per run (rule, lambda, seed, acc, report)."""
    out = []
    for run in runs:
        if run.frozen:
            continue
        res, cfg = run.result, run.config
        baseline = frozen.get(run.rule, {}).get("mean")
        report = diagnose(res.model, res.data.eval_batches(cfg.eval_batches, cfg.eval_batch_size),
                          headline_acc=final_acc(run), frozen_baseline_acc=baseline,
                          method_name=f"{rule_label(run.rule)} λ={run.penalty_lambda:g}",
                          notes=f"seed {run.seed}, {cfg.epochs} epochs", thresholds=thresholds)
        out.append({"rule": run.rule, "lambda": float(run.penalty_lambda), "seed": run.seed,
                    "acc": final_acc(run), "report": report})
    return out


def paper_penalty_acc(rule: str, lam: float) -> Optional[str]:
    """The paper's accuracy for this rule and lambda (quoted; None if it reports none)."""
    parts = []
    if rule == "dfa":
        for l, acc in published.DFA_LAMBDA_SWEEP.items():
            if same_lambda(l, lam):
                parts.append(f"{acc:.3f} (λ sweep)")
    if rule in published.PENALTY:
        without, with_penalty = published.PENALTY[rule]
        if lam == 0.0:
            parts.append(f"{without:.3f} (penalty table, no penalty)")
        elif same_lambda(lam, PAPER_PENALTY_LAMBDA):
            parts.append(f"{with_penalty:.3f} (penalty table)")
    return "; ".join(parts) or None


def paper_penalty_h_L(rule: str, lam: float) -> Optional[str]:
    if rule != "dfa":
        return None
    for l, h in published.PENALTY_H_L.items():
        if same_lambda(l, lam):
            return f"{h:.1e}"
    return None


def _fired_counts(reports: Sequence[DiagnosticReport]) -> dict[str, Optional[int]]:
    """Per diagnostic, on how many seeds it fired (None: skipped on every seed)."""
    out = {}
    for key in mode_keys():  # those the paper's verdict counts
        vals = [r.fired[key] for r in reports]
        out[key] = None if all(v is None for v in vals) else sum(bool(v) for v in vals)
    return out


def fired_text(counts: dict[str, Optional[int]], n: int) -> str:
    """The paper's form: diagnostics fired on every seed joined by '+', then '(c) on 1/3 seeds';
    '(d) skipped' when no frozen baseline was given."""
    always = [f"({k})" for k, c in counts.items() if c and c == n]
    some = [f"({k}) on {c}/{n} seeds" for k, c in counts.items() if c and c < n]
    parts = (["+".join(always)] if always else []) + some
    parts += [f"({k}) skipped" for k, c in counts.items() if c is None]
    return ", ".join(parts) or "none"


def _group_verdict(counts: dict[str, Optional[int]]) -> str:
    names = [DIAGNOSTICS[k].name for k, n in counts.items() if n]
    return "trustworthy" if not names else "needs walk-back: " + "; ".join(names)


def _mean_std(values: Sequence[float]) -> tuple[float, Optional[float]]:
    v = np.array(values, dtype=np.float64)
    return float(v.mean()), (float(v.std(ddof=1)) if len(v) > 1 else None)


def penalty_table(audits: Sequence[dict], profile: Profile) -> list[dict]:
    """One row per rule and lambda in `penalty_plan` order: accuracy mean ± sample std, the
    frozen baseline, ||h_L|| and ||g_L|| (means over seeds), what fired on how many seeds, the
    verdict (walk-back if any seed fires), and the paper's numbers in their own columns."""
    rows = []
    for rule, lams in penalty_plan(profile, sorted({a["rule"] for a in audits})):
        for lam in lams:
            group = [a for a in audits if a["rule"] == rule and same_lambda(a["lambda"], lam)]
            if not group:
                continue
            reports = [a["report"] for a in group]
            acc_m, acc_s = _mean_std([a["acc"] for a in group])
            counts = _fired_counts(reports)
            fired = fired_text(counts, len(group))
            rows.append({
                "rule": rule, "role": ROLES.get(rule, "rule at λ"), "lambda": lam,
                "seeds": len(group), "acc_mean": acc_m, "acc_std": acc_s,
                "acc": f"{acc_m:.4f} ± {fmt(acc_s, '.4f')}",
                "frozen_baseline_acc": reports[0].frozen_baseline_acc,
                "margin_pp_mean": _mean_std([r.frozen_margin_pp for r in reports])[0]
                if reports[0].frozen_baseline_acc is not None else None,
                "h_L": _mean_std([r.residual_norms[-1] for r in reports])[0],
                "g_L": _mean_std([r.bp_grad_norms[-1] for r in reports])[0],
                "max_block_growth": _mean_std([r.max_block_growth for r in reports])[0],
                "cross_batch_stability": _mean_std([r.cross_batch_stability
                                                    for r in reports])[0],
                "fired_counts": counts, "fired": fired, "verdict": _group_verdict(counts),
                "per_seed": {str(a["seed"]): {"acc": a["acc"], "verdict": a["report"].verdict,
                                              "residual_norms": a["report"].residual_norms,
                                              "bp_grad_norms": a["report"].bp_grad_norms}
                             for a in group},
                PAPER_ACC_COLUMN: paper_penalty_acc(rule, lam),
                PAPER_HL_COLUMN: paper_penalty_h_L(rule, lam),
            })
    return rows


def save_penalty_table(rows: Sequence[dict], profile: Profile, results_dir: str | Path,
                       frozen: Optional[dict[str, dict]] = None) -> dict[str, Path]:
    """Table `04_penalty_audit` (+ per-seed numbers and the frozen baselines in its sidecar)."""
    caption = stamp_caption(
        f"Residual penalty (mean form), {profile.penalty_epochs} epochs, {profile.name} profile: "
        "accuracy mean ± sample std over seeds, ‖h_L‖ and ‖g_L‖ (median over eval samples, mean "
        "over seeds), the diagnostics that fired (seeds) and the verdict; (d) uses each rule's "
        "own frozen-blocks baseline at the same budget. The paper's columns quote the paper.",
        profile)
    seeds = sorted({int(s) for r in rows for s in r["per_seed"]})
    return save_table(list(rows), "04_penalty_audit", columns=TABLE_COLUMNS,
                      metadata=profile_metadata(profile, seeds=seeds,
                                                penalty_epochs=profile.penalty_epochs),
                      caption=caption, outdir=tables_dir(results_dir),
                      numbers={"frozen_baselines": frozen, "paper_source": published.SOURCE,
                               "paper_penalty_lambda": PAPER_PENALTY_LAMBDA,
                               "penalty_lambda": profile.penalty_lambda})


# --- The partial audit (logs without per-layer numbers) -------------------------------------------
def partial_rows(runs: Iterable[RunRecord], lam: float, rule: str = "dfa",
                 grad_layer: Optional[int] = None) -> dict[str, Any]:
    """What logs without per-layer numbers keep, rebuilt per seed from the last trace entry of
    `rule` at `lam`: final accuracy, ||h_L||, a mid-layer ||g_k|| and the same entry's ||h_0||."""
    mine = [r for r in runs
            if not r.frozen and r.rule == rule and same_lambda(r.penalty_lambda, lam)]
    if not mine:
        raise ValueError(f"no {rule} runs at λ={lam:g} among the runs given")
    num_blocks = mine[0].config.num_blocks
    k = num_blocks // 2 if grad_layer is None else grad_layer
    rows = []
    for r in mine:
        epoch, last = list(entry_reports(r.result.trace).items())[-1]
        rows.append({"seed": r.seed, "acc": last.headline_acc,
                     "h_0": last.residual_norms[0], "h_L": last.residual_norms[-1],
                     "g_k": last.bp_grad_norms[k], "epoch": epoch})
    seeds = ", ".join(f"{r.seed} (epoch {row['epoch']}: {row['h_0']:.4g})"
                      for r, row in zip(mine, rows))
    source = (f"each run's own final median ||h_0|| (last trace entry, the entry ||h_L|| comes "
              f"from) of the {rule_label(rule)} λ={lam:g} runs: seeds {seeds}")
    return {"rows": rows, "h0_norm": None, "h0_source": source,
            "num_blocks": num_blocks, "grad_layer": k,
            "grad_scale": (f"paper scale: median per-sample ||dCE/dh_{k}|| of the batch-mean CE "
                           "over 128 samples, final trace entry")}


def partial_audit_from_traces(runs: Iterable[RunRecord], lam: float,
                              frozen_baseline_acc: Optional[float], rule: str = "dfa",
                              grad_layer: Optional[int] = None,
                              thresholds: Optional[DiagnosticThresholds] = None
                              ) -> PartialAuditResult:
    """`partial_audit` on the subset of the traces that logs without per-layer numbers keep
    (see `partial_rows`): (a) is bounded per seed with the run's own final ||h_0||."""
    p = partial_rows(runs, lam, rule=rule, grad_layer=grad_layer)
    return partial_audit(p["rows"], frozen_baseline_acc,
                         h0_source=p["h0_source"], num_blocks=p["num_blocks"],
                         grad_layer=p["grad_layer"], grad_scale=p["grad_scale"],
                         thresholds=thresholds)


def compare_partial_full(partial: PartialAuditResult, audits: Sequence[dict], lam: float,
                         rule: str = "dfa") -> list[dict]:
    """Per diagnostic, what the partial audit could say beside what the full audit measured on
    the same runs, and the two verdicts."""
    reports = [a["report"] for a in audits if a["rule"] == rule and same_lambda(a["lambda"], lam)]
    n = len(reports)
    counts = _fired_counts(reports)
    rows = []
    for key, status in partial.status.items():
        c = counts[key]
        full = "skipped" if c is None else (f"fires on {c}/{n} seeds" if c else
                                            f"passes on {n}/{n} seeds")
        if status == "fires":
            agree = "agree" if c else "DISAGREE"
        elif status == "passes":
            agree = "agree" if c == 0 else "DISAGREE"
        elif status == "skipped":
            agree = "agree" if c is None else "partial skipped it"
        elif key == "a" and partial.a_note:
            agree = f"partial cannot decide ({status}: {partial.a_note})"
        else:
            agree = f"partial cannot decide ({status})"
        rows.append({"diagnostic": DIAGNOSTICS[key].label, "partial": status,
                     "full": full, "comparison": agree})
    rows.append({"diagnostic": "verdict", "partial": partial.verdict,
                 "full": _group_verdict(counts), "comparison": ""})
    return rows


# --- The sweep figure -----------------------------------------------------------------------------
SWEEP_QUANTITIES = ("acc", "h_L", "g_L")
SWEEP_STATISTIC = "mean ± sample std (ddof=1) over seeds; no bar with one seed"


def _seed_stats(values: Sequence[float]) -> tuple[Optional[float], Optional[float], int]:
    """(mean, sample std with ddof=1, n) as seaborn's `errorbar="sd"` computes them (pandas,
    NaN skipped): the sidecar's numbers are the bars drawn."""
    import pandas as pd

    v = pd.Series(list(values), dtype="float64").dropna()
    if v.empty:
        return None, None, 0
    return float(v.mean()), (float(v.std()) if len(v) > 1 else None), int(len(v))


def sweep_series(audits: Sequence[dict], profile: Profile,
                 frozen: Optional[dict[str, dict]] = None) -> dict[str, Any]:
    """The plotted numbers: per rule, its lambdas, per-seed values of accuracy, ||h_L|| and
    ||g_L||, and their mean, sample std (ddof=1) and n over seeds at each lambda."""
    out: dict[str, Any] = {"statistic": SWEEP_STATISTIC, "rules": {}, "frozen_baselines": {
        r: v["mean"] for r, v in (frozen or {}).items()}}
    for rule, lams in penalty_plan(profile, sorted({a["rule"] for a in audits})):
        lam_list, per_seed = [], {}
        mean = {q: [] for q in SWEEP_QUANTITIES}
        std = {q: [] for q in SWEEP_QUANTITIES}
        n = []
        for lam in lams:
            group = [a for a in audits if a["rule"] == rule and same_lambda(a["lambda"], lam)]
            if not group:
                continue
            lam_list.append(lam)
            n.append(len(group))
            vals = {"acc": [a["acc"] for a in group],
                    "h_L": [a["report"].residual_norms[-1] for a in group],
                    "g_L": [a["report"].bp_grad_norms[-1] for a in group]}
            for q, v in vals.items():
                m, sd, _ = _seed_stats(v)
                mean[q].append(m)
                std[q].append(sd)
            for a in group:
                s = per_seed.setdefault(str(a["seed"]), {"lambda": [], "acc": [], "h_L": [],
                                                         "g_L": []})
                s["lambda"].append(lam)
                s["acc"].append(a["acc"])
                s["h_L"].append(a["report"].residual_norms[-1])
                s["g_L"].append(a["report"].bp_grad_norms[-1])
        out["rules"][rule] = {"lambda": lam_list, "mean": mean, "std": std, "n": n,
                              "per_seed": per_seed}
    if dataset_name(profile) == "cifar10":  # the paper's numbers are CIFAR-10's
        out["paper_dfa_acc"] = {"lambda": list(published.DFA_LAMBDA_SWEEP),
                                "acc": list(published.DFA_LAMBDA_SWEEP.values())}
    return out


def sweep_frame(rule_series: dict):
    """One rule's per-seed values in long form (lambda, seed, acc, h_L, g_L): what seaborn
    draws the points and the mean ± std bars from."""
    import pandas as pd

    rows = [{"lambda": lam, "seed": seed, **{q: s[q][i] for q in SWEEP_QUANTITIES}}
            for seed, s in rule_series["per_seed"].items() for i, lam in enumerate(s["lambda"])]
    return pd.DataFrame(rows, columns=["lambda", "seed", *SWEEP_QUANTITIES])


def _lambda_tick(lam: float) -> str:
    """0, 10^-k as a power, else the number: short enough for narrow panels."""
    power = round(math.log10(lam)) if lam > 0 else None
    return ("0" if lam == 0 else f"$10^{{{power}}}$" if math.isclose(lam, 10.0 ** power)
            else f"{lam:g}")


def plot_penalty_sweep(series: dict, thresholds: Optional[DiagnosticThresholds] = None,
                       stamp: Optional[str] = None):
    """Accuracy, ||h_L|| and ||g_L|| against lambda (symlog x so that lambda = 0 shows).

    Each rule's mean ± sample std over seeds (taken on linear axes, then scaled), DFA's per-seed
    points, DFA's frozen baseline and (d)'s margin, the (b) floor, and the paper's DFA sweep on
    CIFAR-10.
    """
    import seaborn as sns

    from .figures import figure_legend, new_figure, paper_style, rule_colour

    t = thresholds or DiagnosticThresholds()
    all_lams = sorted({l for s in series["rules"].values() for l in s["lambda"]})
    positive = [l for l in all_lams if l > 0]
    linthresh = min(positive) if positive else 1.0
    with paper_style():
        fig, axes = new_figure(1, 3, aspect=0.45)
        quantities = (("acc", "accuracy (test split)", False),
                      ("h_L", "median ‖h_L‖", True), ("g_L", "median ‖g_L‖", True))
        for ax, (q, title, logy) in zip(axes, quantities):
            for rule, s in series["rules"].items():
                frame, color = sweep_frame(s), rule_colour(rule)
                name = {"bp": "BP control"}.get(rule, rule_label(rule))
                if rule == "dfa":
                    sns.scatterplot(data=frame, x="lambda", y=q, color=color, alpha=0.45, s=9,
                                    linewidth=0, legend=False, ax=ax, label=f"{name} per seed")
                sns.lineplot(data=frame, x="lambda", y=q, estimator="mean", errorbar="sd",
                             err_style="bars", err_kws={"capsize": 2, "elinewidth": 0.8},
                             color=color, marker={"dfa": "o", "bp": "s"}.get(rule, "D"),
                             linestyle="--" if rule == "bp" else "-" if rule == "dfa" else "",
                             legend=False, ax=ax, label=f"{name} mean ± std")
            if q == "acc":
                base = series["frozen_baselines"].get("dfa")
                if base is not None:
                    ax.axhline(base, color="0.3", ls=":", lw=0.8,
                               label=f"{rule_label('dfa')} frozen baseline")
                    ax.axhline(base + t.frozen_acc_margin_pp / 100, color="0.6", ls=":", lw=0.8,
                               label=f"baseline + {t.frozen_acc_margin_pp:g} pp ((d))")
                if "paper_dfa_acc" in series:
                    p = series["paper_dfa_acc"]
                    ax.plot(p["lambda"], p["acc"], "o", mfc="none", color="0.2",
                            label="paper: DFA (CIFAR-10)")
            if q == "g_L":
                ax.axhline(t.g_norm_floor, color="0.3", ls="--", lw=0.8,
                           label=f"(b) floor {t.g_norm_floor:.0e}")
            if logy:
                ax.set_yscale("log")
            # [0, linthresh] drawn as wide as one decade: lambda = 0 sits one decade left of the
            # smallest positive lambda
            ax.set_xscale("symlog", linthresh=linthresh, linscale=1.0)
            ax.set_xlim(-0.3 * linthresh, max(all_lams) * 2 if positive else 1.0)
            ax.set_xticks(all_lams)
            ax.set_xticklabels([_lambda_tick(l) for l in all_lams])
            ax.set_xlabel("penalty λ")
            ax.set_ylabel("paper scale" if q == "g_L" else "")
            ax.set_title(title)
        figure_legend(fig)  # one legend for the three panels, under them
        if stamp:
            fig.suptitle(stamp, fontsize="small", color="0.4")
    return fig


def save_penalty_sweep(audits: Sequence[dict], profile: Profile, results_dir: str | Path,
                       frozen: Optional[dict[str, dict]] = None,
                       thresholds: Optional[DiagnosticThresholds] = None):
    """Figure `04_penalty_sweep` (pdf, png, json with the plotted numbers); returns (fig, paths)."""
    from .figures import paper_style

    series = sweep_series(audits, profile, frozen)
    fig = plot_penalty_sweep(series, thresholds,
                             stamp=data_stamp(profile))
    seeds = sorted({a["seed"] for a in audits})
    with paper_style():
        paths = save_figure(fig, "04_penalty_sweep", numbers=series,
                            metadata=profile_metadata(profile, seeds=seeds,
                                                      penalty_epochs=profile.penalty_epochs),
                            outdir=figures_dir(results_dir))
    return fig, paths
