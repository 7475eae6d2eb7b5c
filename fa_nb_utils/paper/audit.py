"""Table 1, the audit table: the protocol beside the field's standard verdict, per rule and seed.

    table = audit_runs(run_grid(profile, results_dir), profile_data(profile), profile=profile)
    save_audit_table(table); save_hero_figure(table)   # 02_audit_table, 02_hero_layer_norms

`audit_runs` runs `diagnose` on each trained model with its saved rule (for Γ), the headline
being the trace's final `acc_eval`. (d) is read twice (docs/protocol.md): *matched*, each rule
against its own frozen-blocks baseline, and *as the paper applied it* (`published.PAPER_APPLIED_D`
against DFA's baseline, the others skipped). Each rule gets a summary row, then one row per seed.
Also here: notebook 01's training summary (`runs_summary`, `save_runs_table`) and notebook 00's
worked example (`worked_example_config`, `explain_verdict`, `template_context`, `save_report`,
`epoch_rows`).
Not here: the diagnostics (diagnostics.py, protocol.py), Γ (alignment.py), training (trainer.py,
experiments.py), the file formats (figures.py).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from . import published
from ..alignment import GammaUnavailable, standard_verdict
from ..architectures import ARCHITECTURE_LABELS
from ..data import DeviceData
from ..protocol import diagnose
from .figures import (STAMPS, data_stamp, dataset_name,
                      paper_style, run_metadata, save_figure, save_table)
from ..io import write_json_atomic
from .profiles import Profile
from ..diagnostics import DIAGNOSTICS, PAPER, ROBUST, AuditColumn, audit_order, mode_keys
from ..report import DiagnosticReport, DiagnosticThresholds
from ..trace import entry_reports
from ..rules import rule_label

NOT_RUN = "not run"
NOT_PROVIDED = "not provided"
TABLE_NAME = "02_audit_table"
HERO_NAME = "02_hero_layer_norms"
RUNS_TABLE_NAME = "01_runs"
SEED_AGGREGATION = "geometric mean over seeds"  # the hero figure's line: norms span decades

# The table's columns: these, each diagnostic's (the diagnostics table's `audit` columns, in
# `audit_order`; (d), which compares with the frozen baseline, as the baseline and both readings),
# then these.
HEAD_COLUMNS = ("rule", "seed", "acc (ours)", "CIFAR-10 acc (ours)", "CIFAR-10 acc (paper)")
FROZEN_ACC = "frozen acc (own baseline)"
TAIL_COLUMNS = (
    "Γ headline", "standard verdict (acc + Γ)", "protocol verdict (matched (d))",
    "protocol verdict ((d) as paper applied)", "fired (matched)", "robust verdict (matched (d))",
    "fired, robust (matched)", "paper's verdict (CIFAR-10)",
)


def _against_baseline(key: str) -> bool:
    """A diagnostic that compares with the frozen baseline ((d)): read matched and as applied."""
    return "frozen_baseline_acc" in DIAGNOSTICS[key].needs


def statistic_columns() -> list[tuple[str, AuditColumn]]:
    """(key, its column) for every diagnostic, in the table's order."""
    return [(k, DIAGNOSTICS[k].audit_column) for k in audit_order()]


def audit_columns() -> tuple[str, ...]:
    """The full audit table's columns (a registered diagnostic's after the built-in ones)."""
    cols = list(HEAD_COLUMNS)
    for key, col in statistic_columns():
        cols += ([FROZEN_ACC, f"{col.label}, matched", f"{col.label}, as paper applied"]
                 if _against_baseline(key) else [col.label])
    return tuple(cols) + TAIL_COLUMNS


def dataset_label(profile_or_data: Profile | DeviceData | str) -> str:
    """"CIFAR-10", "synthetic data", "MNIST (5,000 digits)", or a user's own data set's name."""
    name = dataset_name(profile_or_data)
    return {"cifar10": "CIFAR-10", **STAMPS}.get(name, name)


def mean_std(values: Sequence[Optional[float]]) -> tuple[Optional[float], Optional[float], int]:
    """(mean, sample std with ddof=1, n) over the finite values; std is None for n < 2."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return None, None, 0
    std = float(np.std(vals, ddof=1)) if len(vals) >= 2 else None
    return float(np.mean(vals)), std, len(vals)


def _fired_letters(fired: dict, mode: str = PAPER) -> list[str]:
    """The keys that fired among those counted in `mode`'s verdict ((a)-(d) for the paper's)."""
    return [k for k in mode_keys(mode) if fired.get(k)]


def fired_label(letters: Sequence[str]) -> str:
    return "+".join(f"({k})" for k in letters) if letters else "none"


def fired_summary(per_seed: Sequence[Sequence[str]]) -> str:
    """The paper's form: diagnostics fired on every seed joined by '+', then '(c) on 1/3 seeds'."""
    n = len(per_seed)
    counts = {k: sum(k in s for s in per_seed) for k in DIAGNOSTICS}
    always = [k for k, c in counts.items() if c == n and n]
    some = [f"({k}) on {c}/{n} seeds" for k, c in counts.items() if 0 < c < n]
    parts = ([fired_label(always)] if always else []) + some
    return ", ".join(parts) if parts else "none"


# --- One run, audited -----------------------------------------------------------------------------
@dataclass
class SeedAudit:
    """One trained run through the protocol: its report (matched (d), with Γ) and the numbers."""

    rule: str
    seed: int
    acc: float                            # full test split: the trace's final acc_eval
    frozen_acc: Optional[float]           # this seed's own frozen-baseline run (for display)
    frozen_baseline_acc: Optional[float]  # matched (d): mean over the rule's frozen-baseline seeds
    paper_frozen_baseline_acc: Optional[float]  # (d) as the paper applied it; None: not provided
    report: DiagnosticReport              # matched (d), Γ attached when measurable
    report_paper_d: DiagnosticReport      # the same numbers, (d) as the paper applied it
    standard_verdict: str                 # the field's: accuracy above chance and Γ > 0
    gamma_note: Optional[str] = None      # why Γ is N/A (the rule lacks its saved state)
    run_dir: Optional[str] = None
    epochs: Optional[int] = None

    @property
    def h_L(self) -> float:
        return self.report.residual_norms[-1]

    @property
    def g_L(self) -> float:
        return self.report.bp_grad_norms[-1]

    @property
    def gain_L(self) -> Optional[float]:
        """The deepest layer's median backward gain ((e)); None when not measured."""
        gains = self.report.backward_gains
        return gains[-1] if gains else None

    @property
    def stability(self) -> float:
        return self.report.cross_batch_stability

    @property
    def margin_matched_pp(self) -> Optional[float]:
        return self.report.frozen_margin_pp

    @property
    def margin_paper_pp(self) -> Optional[float]:
        return self.report_paper_d.frozen_margin_pp

    @property
    def gamma_per_layer(self) -> Optional[list]:
        return None if self.report.alignment is None else self.report.alignment["per_layer"]

    @property
    def gamma_headline(self) -> Optional[float]:
        return None if self.report.alignment is None else self.report.alignment["headline"]

    @property
    def gamma_reason(self) -> Optional[str]:
        if self.report.alignment is None:
            return self.gamma_note
        return self.report.alignment.get("headline_reason")

    @property
    def fired(self) -> list[str]:
        """Letters of the diagnostics that fired with matched (d)."""
        return _fired_letters(self.report.fired)

    @property
    def fired_paper_d(self) -> list[str]:
        return _fired_letters(self.report_paper_d.fired)

    @property
    def fired_robust(self) -> list[str]:
        """Letters of the diagnostics the robust verdict counts that fired, matched (d)."""
        return _fired_letters(self.report.fired, ROBUST)

    @property
    def walked_back_robust(self) -> bool:
        return self.report.verdict_for(ROBUST) != "trustworthy"

    @property
    def walked_back(self) -> bool:
        return not self.report.trustworthy

    @property
    def walked_back_paper_d(self) -> bool:
        return not self.report_paper_d.trustworthy

    @property
    def standard_trustworthy(self) -> bool:
        return self.standard_verdict == "trustworthy"

    def numeric(self) -> dict[str, Optional[float]]:
        """The numbers a rule's summary row gives as mean ± sample std, in column order."""
        out: dict[str, Optional[float]] = {"acc": self.acc}
        for key, col in statistic_columns():
            if _against_baseline(key):
                out.update(frozen_acc=self.frozen_acc, margin_matched_pp=self.margin_matched_pp,
                           margin_paper_pp=self.margin_paper_pp)
            else:
                out[col.number] = DIAGNOSTICS[key].audit_value(self.report)
        out["gamma_headline"] = self.gamma_headline
        return out

    def numbers(self) -> dict[str, Any]:
        """Every number of this run, plus both full reports (report.to_dict(): strict JSON)."""
        out = {
            "rule": self.rule, "seed": self.seed, "acc": self.acc, "epochs": self.epochs,
            "h_L": self.h_L, "g_L": self.g_L, "gain_L": self.gain_L,
            "backward_gains": list(self.report.backward_gains),
            "b_cause": self.report.b_cause, "stability": self.stability,
            "stability_layer": self.report.stability_layer,
            "residual_norms": list(self.report.residual_norms),
            "bp_grad_norms": list(self.report.bp_grad_norms),
            "frozen_acc": self.frozen_acc, "frozen_baseline_acc_matched": self.frozen_baseline_acc,
            "margin_matched_pp": self.margin_matched_pp,
            "frozen_baseline_acc_paper_applied": self.paper_frozen_baseline_acc,
            "margin_paper_pp": self.margin_paper_pp,
            "gamma_headline": self.gamma_headline, "gamma_per_layer": self.gamma_per_layer,
            "gamma_reason": self.gamma_reason,
            "standard_verdict": self.standard_verdict,
            "protocol_verdict": self.report.verdict,
            "protocol_verdict_paper_applied_d": self.report_paper_d.verdict,
            "robust_verdict": self.report.verdict_for(ROBUST),
            "fired": self.fired, "fired_paper_applied_d": self.fired_paper_d,
            "fired_robust": self.fired_robust,
            "run_dir": self.run_dir,
            "report": self.report.to_dict(), "report_paper_applied_d": self.report_paper_d.to_dict(),
        }
        return out | {k: v for k, v in self.numeric().items() if k not in out}  # registered ones


@dataclass
class RuleSummary:
    """A rule's summary row: counts over seeds and mean ± sample std (ddof=1) of the numbers."""

    rule: str
    seeds: list[int]
    walked_back: int
    walked_back_paper_d: int
    standard_trustworthy: int
    fired: str                       # the paper's form, e.g. "(a)+(b), (c) on 1/2 seeds"
    fired_union: list[str]
    stats: dict[str, dict]           # column -> {"mean", "std", "n"}
    d_matched_fires: int
    d_paper_status: str              # "applied" | "not provided"
    walked_back_robust: int = 0      # the robust verdict ((e) in place of (b)), matched (d)
    fired_robust: str = "none"

    @property
    def n(self) -> int:
        return len(self.seeds)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _summarise(rule: str, audits: list[SeedAudit]) -> RuleSummary:
    per_seed_fired = [a.fired for a in audits]
    numeric = [a.numeric() for a in audits]
    stats = {}
    for key in (numeric[0] if numeric else {}):
        m, s, n = mean_std([x[key] for x in numeric])
        stats[key] = {"mean": m, "std": s, "n": n}
    return RuleSummary(
        rule=rule, seeds=[a.seed for a in audits],
        walked_back=sum(a.walked_back for a in audits),
        walked_back_paper_d=sum(a.walked_back_paper_d for a in audits),
        standard_trustworthy=sum(a.standard_trustworthy for a in audits),
        fired=fired_summary(per_seed_fired),
        fired_union=sorted({k for s in per_seed_fired for k in s}),
        stats=stats, d_matched_fires=sum(bool(a.report.fired["d"]) for a in audits),
        d_paper_status="applied" if rule in published.PAPER_APPLIED_D else NOT_PROVIDED,
        walked_back_robust=sum(a.walked_back_robust for a in audits),
        fired_robust=fired_summary([a.fired_robust for a in audits]))


# --- Cells ----------------------------------------------------------------------------------------
PLAIN, PP, GAMMA = ".3f", "+.2f", "+.3f"  # cell formats; a spread drops the sign


def _fmt(v: Optional[float], spec: str) -> str:
    if v is None or not math.isfinite(v):
        return "—"
    return f"{v:{spec}}"


def _fmt_ms(st: dict, spec: str) -> str:
    if st["mean"] is None:
        return "—"
    if st["std"] is None:
        return f"{_fmt(st['mean'], spec)} (n={st['n']})"
    return f"{_fmt(st['mean'], spec)} ± {st['std']:{spec.lstrip('+')}}"


def _paper_verdict(rule: str) -> str:
    row = published.MAIN_TABLE.get(rule)
    if not row or not row.get("verdict"):
        return "—"
    return f"{row['verdict']}: {row['fired']}"


# --- The table ------------------------------------------------------------------------------------
@dataclass
class AuditTable:
    """Table 1: per-seed audits, per-rule summaries, and how (d)'s two readings differ."""

    audits: list[SeedAudit]
    summaries: list[RuleSummary]
    profile: Optional[str]
    dataset: str                      # "cifar10" | "synthetic" | a user's name
    stamp: Optional[str]              # figures.STAMPS' name of the data, None on CIFAR-10
    metadata: dict = field(default_factory=dict)
    columns: tuple = field(default_factory=audit_columns)

    @property
    def rules(self) -> list[str]:
        return [s.rule for s in self.summaries]

    @property
    def on_cifar10(self) -> bool:
        return self.dataset == "cifar10" and bool(self.audits)

    def audits_of(self, rule: str) -> list[SeedAudit]:
        return [a for a in self.audits if a.rule == rule]

    @property
    def differences(self) -> list[str]:
        """Where (d) as the paper applied it and (d) with matched baselines disagree, per rule."""
        out = []
        for s in self.summaries:
            audits = self.audits_of(s.rule)
            changed = sum(a.walked_back != a.walked_back_paper_d for a in audits)
            if s.rule in published.PAPER_APPLIED_D and not changed:
                continue  # the same baseline either way
            st = s.stats["margin_matched_pp"]
            if st["mean"] is None:
                out.append(f"{rule_label(s.rule)}: no frozen baseline run, (d) is skipped both ways")
                continue
            how = (f"the paper did not apply (d) ({NOT_PROVIDED}); with its matched baseline "
                   f"(d) fires on {s.d_matched_fires}/{s.n} seeds (margin {_fmt_ms(st, PP)} pp)")
            out.append(f"{rule_label(s.rule)}: {how}; verdict changes on {changed}/{s.n} seeds "
                       f"(walked back {s.walked_back_paper_d}/{s.n} as the paper applied (d), "
                       f"{s.walked_back}/{s.n} matched)")
        return out

    @property
    def disagreements(self) -> list[str]:
        """Runs the field's standard verdict calls trustworthy and the protocol walks back."""
        return [f"{rule_label(a.rule)} seed {a.seed}: standard verdict trustworthy, protocol: "
                f"{a.report.verdict}" for a in self.audits
                if a.standard_trustworthy and a.walked_back]

    @property
    def caption(self) -> str:
        seeds = sorted({a.seed for a in self.audits})
        where = ("CIFAR-10" if self.dataset == "cifar10" else
                 f"{dataset_label(self.dataset)}, not CIFAR-10")
        text = (f"Audit of every rule with the four-part protocol ({where}; profile "
                f"{self.profile}; seeds {', '.join(map(str, seeds))}). Summary rows: walked back "
                "k/n seeds, mean ± sample std (ddof=1). (d) matched: each rule against the seed "
                "mean of its own frozen-random-blocks baseline; as paper applied: DFA, SB and CB "
                "only, others not provided. Γ: mean over layers, null when a layer's BP gradient "
                f"is under the floor. Paper column quoted from {published.SOURCE}.")
        if not self.on_cifar10:
            text += f" Our CIFAR-10 column: {NOT_RUN}."
        return text

    @property
    def rows(self) -> list[dict]:
        """Display rows: each rule's summary row, then its per-seed rows."""
        out = []
        cifar_ours = lambda cell: cell if self.on_cifar10 else NOT_RUN
        for s in self.summaries:
            st = s.stats
            gamma = _fmt_ms(st["gamma_headline"], GAMMA)
            nulls = s.n - st["gamma_headline"]["n"]
            if nulls:
                gamma = "null" if nulls == s.n else f"{gamma}; null on {nulls}/{s.n} seeds"
            acc = _fmt_ms(st["acc"], PLAIN)
            row = {
                "kind": "summary", "rule_key": s.rule, "rule": rule_label(s.rule),
                "seed": f"all (n={s.n})", "acc (ours)": acc,
                "CIFAR-10 acc (ours)": cifar_ours(acc),
                "CIFAR-10 acc (paper)": published.paper_acc(s.rule)}
            for key, col in statistic_columns():
                if not _against_baseline(key):
                    row[col.label] = _fmt_ms(st[col.number], col.format)
                    continue
                matched, applied = st["margin_matched_pp"], st["margin_paper_pp"]
                row[FROZEN_ACC] = _fmt_ms(st["frozen_acc"], PLAIN)
                row[f"{col.label}, matched"] = (
                    _fmt_ms(matched, col.format) + f" (fires {s.d_matched_fires}/{s.n})"
                    if matched["mean"] is not None else NOT_PROVIDED)
                row[f"{col.label}, as paper applied"] = (
                    _fmt_ms(applied, col.format) if s.d_paper_status == "applied"
                    and applied["mean"] is not None else NOT_PROVIDED)
            out.append({**row, **dict(zip(TAIL_COLUMNS, (
                gamma, f"trustworthy {s.standard_trustworthy}/{s.n} seeds",
                f"walked back {s.walked_back}/{s.n} seeds",
                f"walked back {s.walked_back_paper_d}/{s.n} seeds", s.fired,
                f"walked back {s.walked_back_robust}/{s.n} seeds", s.fired_robust,
                _paper_verdict(s.rule))))})
            for a in self.audits_of(s.rule):
                acc = _fmt(a.acc, PLAIN)
                gamma = (_fmt(a.gamma_headline, GAMMA) if a.gamma_headline is not None
                         else "N/A" if a.report.alignment is None else "null")
                row = {"kind": "seed", "rule_key": a.rule, "rule": rule_label(a.rule),
                       "seed": str(a.seed), "acc (ours)": acc,
                       "CIFAR-10 acc (ours)": cifar_ours(acc), "CIFAR-10 acc (paper)": ""}
                numeric = a.numeric()
                for key, col in statistic_columns():
                    if not _against_baseline(key):
                        row[col.label] = _fmt(numeric[col.number], col.format)
                        continue
                    row[FROZEN_ACC] = _fmt(a.frozen_acc, PLAIN)
                    row[f"{col.label}, matched"] = (
                        NOT_PROVIDED if a.margin_matched_pp is None
                        else _fmt(a.margin_matched_pp, col.format))
                    row[f"{col.label}, as paper applied"] = (
                        NOT_PROVIDED if a.margin_paper_pp is None
                        else _fmt(a.margin_paper_pp, col.format))
                back = lambda walked: "needs walk-back" if walked else "trustworthy"
                out.append({**row, **dict(zip(TAIL_COLUMNS, (
                    gamma, "trustworthy" if a.standard_trustworthy else "not trustworthy",
                    back(a.walked_back), back(a.walked_back_paper_d), fired_label(a.fired),
                    back(a.walked_back_robust), fired_label(a.fired_robust), "")))})
        return out

    def numbers(self) -> dict[str, Any]:
        """Everything behind the table, for the JSON sidecar (per-seed reports included)."""
        return {
            "data_stamp": self.stamp, "dataset": self.dataset, "profile": self.profile,
            "cifar10_ours": None if self.on_cifar10 else NOT_RUN,
            "per_seed": [a.numbers() for a in self.audits],
            "summary": {s.rule: s.to_dict() for s in self.summaries},
            "differences_d": self.differences,
            "standard_vs_protocol": self.disagreements,
            "reports": {f"{a.rule}_s{a.seed}": a.report.to_dict() for a in self.audits},
            "paper": {"source": published.SOURCE, "main_table": published.MAIN_TABLE,
                      "applied_d": list(published.PAPER_APPLIED_D),
                      "frozen_baseline_acc": published.PAPER_FROZEN_BASELINE_ACC},
            "conventions": {
                "acc": "full test split, the trace's final acc_eval",
                "h_L, g_L": "diagnose's medians at the deepest layer; g on the paper scale (/128)",
                "spread": "sample std, ddof=1, over seeds",
                "d_matched": "each rule against the seed mean of its own frozen-random-blocks "
                             "baseline",
                "d_paper_applied": f"only {', '.join(published.PAPER_APPLIED_D)}, all against DFA's "
                                   "frozen-baseline seed mean (as the paper's 0.349); other "
                                   "rules not provided (skipped)",
                "gamma": "headline = mean over layers; null if any layer's median ||g|| < floor",
                "standard_verdict": "trustworthy when accuracy > chance and headline Γ > 0",
            },
        }


def _check_same_data(records, data: DeviceData) -> None:
    for r in records:
        fp = (r.result.metadata or {}).get("data", {}).get("fingerprint")
        if fp is not None and fp != data.fingerprint:
            raise ValueError(
                f"run {r.rule} seed {r.seed}{' (frozen)' if r.frozen else ''} was trained on data "
                f"{fp[:12]}… but the audit's data are {data.fingerprint[:12]}…; pass the data the "
                "runs were trained on (experiments.profile_data(profile))")


def audit_run(record, data: DeviceData, *, frozen_baseline_acc: Optional[float],
              paper_frozen_baseline_acc: Optional[float] = None,
              frozen_acc: Optional[float] = None,
              thresholds: Optional[DiagnosticThresholds] = None,
              eval_batches=None) -> SeedAudit:
    """One trained run through the protocol, with Γ from its own saved rule."""
    result, config = record.result, record.config
    acc = float(result.trace[-1]["acc_eval"])
    if eval_batches is None:
        eval_batches = data.eval_batches(config.eval_batches, config.eval_batch_size)
    arch = ARCHITECTURE_LABELS[config.architecture]
    notes = (f"{config.num_blocks}-block d={config.d_hidden} {arch}, {dataset_label(data)}, "
             f"seed {record.seed}, {result.trace[-1]['epoch']} epochs")
    kw = dict(headline_acc=acc, frozen_baseline_acc=frozen_baseline_acc,
              method_name=rule_label(record.rule), notes=notes, thresholds=thresholds)
    gamma_note = None
    try:
        report = diagnose(result.model, eval_batches, rule=result.rule, **kw)
    except GammaUnavailable as exc:  # N/A, never a fallback to fresh draws
        gamma_note = f"N/A: {exc}"
        report = diagnose(result.model, eval_batches, **kw)
    paper_frozen = paper_frozen_baseline_acc if record.rule in published.PAPER_APPLIED_D else None
    report_paper_d = dataclasses.replace(report, frozen_baseline_acc=paper_frozen,
                                         input_reasons=dict(report.input_reasons))
    gamma_arg = report.alignment or {"headline": None, "headline_reason": gamma_note}
    return SeedAudit(
        rule=record.rule, seed=record.seed, acc=acc, frozen_acc=frozen_acc,
        frozen_baseline_acc=frozen_baseline_acc, paper_frozen_baseline_acc=paper_frozen,
        report=report, report_paper_d=report_paper_d,
        standard_verdict=standard_verdict(acc, gamma_arg, data.num_classes),
        gamma_note=gamma_note, run_dir=None if result.run_dir is None else str(result.run_dir),
        epochs=int(result.trace[-1]["epoch"]))


def audit_runs(records: Sequence, data: DeviceData, *, profile: Profile | str | None = None,
               thresholds: Optional[DiagnosticThresholds] = None) -> AuditTable:
    """Table 1 from `run_grid`'s records and their data; the frozen-baseline records' mean final
    `acc_eval` over seeds is each rule's matched (d) baseline. Rules in the records' order.
    """
    records = list(records)
    if not records:
        raise ValueError("no runs to audit: pass run_grid(profile, results_dir)'s records")
    _check_same_data(records, data)
    eval_batches = data.eval_batches(records[0].config.eval_batches,
                                     records[0].config.eval_batch_size)
    rules = list(dict.fromkeys(r.rule for r in records if not r.frozen))
    audits, summaries = [], []
    frozen_by_rule = {rule: {r.seed: float(r.result.trace[-1]["acc_eval"])
                             for r in records if r.rule == rule and r.frozen} for rule in rules}
    mean_of = lambda d: float(np.mean(list(d.values()))) if d else None
    paper_baseline = mean_of(frozen_by_rule.get("dfa", {}))  # the paper's (d) used DFA's frozen
    for rule in rules:
        frozen = frozen_by_rule[rule]
        frozen_mean = mean_of(frozen)
        mine = [audit_run(r, data, frozen_baseline_acc=frozen_mean,
                          paper_frozen_baseline_acc=paper_baseline, frozen_acc=frozen.get(r.seed),
                          thresholds=thresholds, eval_batches=eval_batches)
                for r in records if r.rule == rule and not r.frozen]
        audits.extend(mine)
        summaries.append(_summarise(rule, mine))
    profile_name = getattr(profile, "name", profile)
    seeds = sorted({a.seed for a in audits})
    stamp = data_stamp(data)
    metadata = run_metadata(profile=profile_name, seeds=seeds, data=data.name,
                            data_fingerprint=data.fingerprint, data_stamp=stamp)
    return AuditTable(audits=audits, summaries=summaries, profile=profile_name,
                      dataset=data.name, stamp=stamp, metadata=metadata)


def save_audit_table(table: AuditTable, outdir: Path | str | None = None,
                     name: str = TABLE_NAME) -> dict[str, Path]:
    """`name`.csv, `name`.tex (booktabs) and `name`.json (every number, per-seed reports)."""
    return save_table(table.rows, name, columns=table.columns, metadata=table.metadata,
                      caption=table.caption, numbers=table.numbers(),
                      outdir=None if outdir is None else Path(outdir))


# --- The hero figure: where the residual stream and the BP gradient go, layer by layer ------------
def _geomean(rows: list[list[float]]) -> list[Optional[float]]:
    arr = np.asarray(rows, dtype=float)
    out = []
    for col in arr.T:
        ok = col[np.isfinite(col) & (col > 0)]
        out.append(float(np.exp(np.mean(np.log(ok)))) if ok.size == len(col) else None)
    return out


def hero_numbers(table: AuditTable) -> dict[str, Any]:
    floor = (table.audits[0].report.thresholds.g_norm_floor if table.audits
             else DiagnosticThresholds().g_norm_floor)
    rules = {}
    for rule in table.rules:
        audits = table.audits_of(rule)
        h = [list(a.report.residual_norms) for a in audits]
        g = [list(a.report.bp_grad_norms) for a in audits]
        rules[rule] = {"label": rule_label(rule),
                       "per_seed": {str(a.seed): {"h": hh, "g": gg}
                                    for a, hh, gg in zip(audits, h, g)},
                       "seed_mean_h": _geomean(h), "seed_mean_g": _geomean(g)}
    return {"quantity": "per-layer median ||h_l||_2 and median per-sample ||dCE/dh_l||_2 "
                        "(paper scale, /128) on the protocol's eval batches",
            "seed_aggregation": SEED_AGGREGATION, "g_floor": floor, "rules": rules,
            "data_stamp": table.stamp}


def hero_figure(table: AuditTable):
    """Two log-scale panels, ‖h_l‖ and ‖g_l‖ by layer; call inside `figures.paper_style()`.
    Returns (fig, numbers drawn, for the sidecar)."""
    from .figures import figure_legend, new_figure, rule_colour

    numbers = hero_numbers(table)
    fig, axes = new_figure(1, 2, aspect=0.45)
    for rule, entry in numbers["rules"].items():
        colour = rule_colour(rule)  # the rule's colour in every figure
        for ax, key in zip(axes, ("h", "g")):
            for seed_vals in entry["per_seed"].values():
                vals = np.array([v if v is not None and v > 0 else np.nan
                                 for v in seed_vals[key]], dtype=float)
                ax.plot(np.arange(len(vals)), vals, color=colour, alpha=0.25, lw=0.6)
            mean = np.array([np.nan if v is None else v for v in entry[f"seed_mean_{key}"]],
                            dtype=float)
            ax.plot(np.arange(len(mean)), mean, color=colour, marker="o", label=entry["label"])
    floor = numbers["g_floor"]
    axes[1].axhline(floor, color="0.35", ls="--", lw=0.8, label=f"floor {floor:.0e} (b)")
    axes[0].set_ylabel(r"median $\|h_l\|_2$")
    axes[1].set_ylabel(r"median $\|\partial \mathrm{CE}/\partial h_l\|_2$ (paper scale)")
    for ax, title in zip(axes, ("(a) residual stream", "(b) BP gradient")):
        ax.set_yscale("log")
        ax.set_xlabel("layer l")
        ax.set_title(title)
        n_layers = max((len(e["seed_mean_h"]) for e in numbers["rules"].values()), default=1)
        ax.set_xticks(range(n_layers))
    figure_legend(fig)
    stamp = f" — {table.stamp}" if table.stamp else ""
    fig.suptitle(f"Per-layer norms, {SEED_AGGREGATION} (faint: each seed){stamp}")
    return fig, numbers


def save_hero_figure(table: AuditTable, outdir: Path | str | None = None,
                     name: str = HERO_NAME) -> dict[str, Path]:
    """Draw and save the hero figure (PDF, PNG, JSON sidecar) in the paper style."""
    import matplotlib.pyplot as plt

    with paper_style():
        fig, numbers = hero_figure(table)
        try:
            return save_figure(fig, name, numbers=numbers, metadata=table.metadata,
                               outdir=None if outdir is None else Path(outdir))
        finally:
            plt.close(fig)


# --- Notebook 01: which runs exist, and what they ended at ----------------------------------------
def run_status(record) -> str:
    """"trained" (by the grid call that made the record), "reused" (finished earlier) or
    "resumed at epoch k": the record's own status when the grid set it (runs trained by workers
    are loaded afterwards), else read from its result."""
    if getattr(record, "status", None) is not None:
        return record.status
    return record.result.status


def runs_summary(records: Sequence) -> list[dict]:
    """One row per run: rule, seed, frozen, status, final acc_eval, ‖h_L‖, ‖g_L‖, epochs, seconds.

    seconds: the training time the trace recorded over all its epochs (kept across reruns)."""
    rows = []
    for r in records:
        epoch, last = list(entry_reports(r.result.trace).items())[-1]
        rows.append({
            "rule": r.rule, "seed": r.seed, "frozen": bool(r.frozen), "status": run_status(r),
            "acc_eval": last.headline_acc, "h_L": last.residual_norms[-1],
            "g_L": last.bp_grad_norms[-1], "epochs": epoch,
            "seconds": float(sum(e.get("seconds") or 0.0 for e in r.result.trace)),
            "run_dir": None if r.result.run_dir is None else str(r.result.run_dir),
        })
    return rows


RUNS_COLUMNS = ("rule", "seed", "frozen", "status", "acc_eval", "‖h_L‖", "‖g_L‖", "epochs",
                "seconds")


def save_runs_table(records: Sequence, *, profile: Profile, data: DeviceData | None = None,
                    outdir: Path | str | None = None, name: str = RUNS_TABLE_NAME
                    ) -> dict[str, Path]:
    """`name`.csv/.tex/.json: the summary of every run of the grid (notebook 01)."""
    rows = runs_summary(records)
    display = [{**row, "frozen": "yes" if row["frozen"] else "no", "acc_eval": f"{row['acc_eval']:.4f}",
                "‖h_L‖": f"{row['h_L']:.3e}", "‖g_L‖": f"{row['g_L']:.3e}",
                "seconds": f"{row['seconds']:.1f}"} for row in rows]
    source = profile if data is None else data
    stamp = data_stamp(source)
    where = "CIFAR-10" if dataset_name(source) == "cifar10" else \
        f"{dataset_label(source)}, not CIFAR-10"
    caption = (f"Training runs of profile {profile.name} ({where}): final acc_eval "
               "(full test split), median ‖h_L‖ and ‖g_L‖ (paper scale) on the eval batches, "
               "epochs, training seconds from the trace.")
    metadata = run_metadata(profile=profile.name, seeds=list(profile.seeds), data_stamp=stamp,
                            **({} if data is None else {"data": data.name,
                                                        "data_fingerprint": data.fingerprint}))
    return save_table(display, name, columns=RUNS_COLUMNS, metadata=metadata, caption=caption,
                      numbers=rows, outdir=None if outdir is None else Path(outdir))


# --- Notebook 00: the minimal worked example (DFA with RMS-normalised credit, with this package) ---
def epoch_rows(trace: list[dict]) -> list[dict]:
    """The worked example's per-epoch table: accuracy and the median ||h_L|| of every entry."""
    return [{"epoch": epoch, "acc_eval": r.headline_acc, "median ‖h_L‖": r.residual_norms[-1]}
            for epoch, r in entry_reports(trace).items()]


def worked_example_config(profile: Profile, *, frozen: bool = False, seed: int | None = None,
                          **overrides):
    """The worked example's TrainConfig: `profile.worked_example` (DFA, d=128, a few
    epochs, RMS-normalised credit) on the profile's data; `frozen=True` gives its matched
    frozen-random-blocks baseline (same everything, blocks fixed at init)."""
    we = dict(profile.worked_example)
    rule = we.pop("rule", "dfa")
    epochs = we.pop("epochs")
    cosine = profile.cosine_epochs if (profile.cosine_epochs or 0) >= epochs else None
    return profile.config(rule, profile.seeds[0] if seed is None else seed, epochs=epochs,
                          cosine_epochs=cosine, freeze_blocks=frozen, **{**we, **overrides})


def explain_verdict(report: DiagnosticReport, *, num_classes: int | None = None) -> str:
    """The worked example's last step, computed: what the verdict means for this run and what to
    do next (each fired diagnostic's `advice` from the diagnostics table, with its numbers)."""
    lines = []
    if report.trustworthy:
        lines.append("Nothing fired: the network is in the regime where headline accuracy and Γ "
                     "measure what they claim. Report them, with the per-layer numbers above.")
    else:
        lines.append(f"The protocol walks this run back. Verdict: {report.verdict}")
        for key, fired in report.fired.items():
            if fired:
                diag = DIAGNOSTICS[key]
                why = report.reasons.get(key)
                advice = diag.advice.format(value=diag.value(report),
                                            threshold=diag.threshold(report.thresholds))
                lines.append(f"  {diag.label}: " + (f"{why}." if why else advice))
        lines.append("Next: walk back the headline claim and report the failure mode, or change "
                     "the training (e.g. the residual-stream penalty) and re-apply the protocol.")
    if report.fired["d"] is None:
        lines.append("(d) was skipped: no frozen-random-blocks baseline was given, so the "
                     "verdict says nothing about whether the blocks beat a random network.")
    if report.alignment is not None and num_classes is not None:
        std = standard_verdict(report.headline_acc, report.alignment, num_classes)
        lines.append(f"The field's standard verdict (accuracy above chance and Γ > 0) on the same "
                     f"run: {std}.")
        if (std == "trustworthy") != report.trustworthy:
            lines.append("The two verdicts disagree: that gap is what the protocol is for.")
    return "\n".join(lines)


def template_context(result, *, dataset: str, seeds: Sequence[int] | None = None,
                     acc_mean_std: str | None = None) -> dict:
    """The reporting template's context (docs/reporting.md) for `report.template_row(**...)`,
    read from a TrainResult."""
    config = result.config
    credit = getattr(result.rule, "description", config.rule)
    opts = config.rule_options or {}
    if opts:
        credit += " (" + ", ".join(f"{k}={v}" for k, v in opts.items()) + ")"
    return {
        "credit_signal": credit,
        "architecture": f"pre-LN residual MLP, d={config.d_hidden}, L={config.num_blocks}"
                        + ("" if config.residual else ", no residual add"),
        "terminal_ln": "yes" if config.terminal_ln else "no",
        "dataset": dataset, "seeds": ", ".join(map(str, seeds or [config.seed])),
        "feedback_seed": (f"{config.seed} (generator 'feedback', saved with the run)"
                          if list(result.rule.buffers()) or list(result.rule.parameters())
                          else "—"),
        "acc_mean_std": acc_mean_std,
        "pitfalls_checked": "norm(dim=-1); hand-written float64 cosine; fp32 or wider; saved "
                            "feedback; per-layer Γ",
    }


def save_report(report: DiagnosticReport, name: str, *, metadata: dict,
                outdir: Path | str | None = None, **extra: Any) -> Path:
    """`name`.json under `outdir` (default results/tables): the report's to_dict() + metadata."""
    outdir = Path(outdir) if outdir is not None else \
        Path(__file__).resolve().parents[2] / "results" / "tables"
    return write_json_atomic(outdir / f"{name}.json",
                             {"report": report.to_dict(), **extra, "metadata": metadata})
