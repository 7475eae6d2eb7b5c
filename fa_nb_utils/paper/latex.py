"""From a results folder to the paper: `results/paper/` with the macros, Table 1 and every table.

`write_paper(results_dir)` (run at the end of every reproduction) reads the tables' JSON sidecars
and writes `preamble.tex` (the packages), `numbers.tex` (one `\\newcommand` per number the
notebooks state, computed by the same `findings` functions their sentences use, from the same
rows), `table1.tex` (the paper's six-column Table 1) and `<table>.tex`, a paper form of each
table that fits the text width: fewer columns, text columns that wrap (tabularx). The CSV and
JSON under `tables/` keep every column. Not here: the numbers (the notebooks' modules).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from ..diagnostics import mode_keys
from ..io import write_bytes_atomic
from ..rules import RULES, rule_label
from ..text import fmt, latex_ascii, latex_escape
from . import figures, findings, published

PAPER_DIR = "paper"
PREAMBLE = r"""% Packages for results/paper/*.tex and results/tables/*.tex (written by fa-eval).
\usepackage[T1]{fontenc}
\usepackage{amsmath}
\usepackage{booktabs}
\usepackage{array}
\usepackage{tabularx}
\usepackage{graphicx}
"""

# Per table: the columns of its paper form (key, header). The JSON/CSV keep all of them.
PAPER_COLUMNS = {
    "01_runs": (("rule", "Rule"), ("seed", "Seed"), ("frozen", "Frozen"),
                ("acc_eval", "Acc."), ("‖h_L‖", "‖h_L‖"), ("‖g_L‖", "‖g_L‖"),
                ("epochs", "Epochs")),
    "02_audit_table": (("rule", "Rule"), ("‖h_L‖", "‖h_L‖"), ("‖g_L‖", "‖g_L‖"),
                       ("backward gain (e)", "Gain (e)"), ("stability (c)", "Stab. (c)"),
                       ("(d) margin pp, matched", "(d) margin (pp)")),
    "02_threshold_separation": (("diagnostic", "Diagnostic"),
                                ("healthy (min … max)", "Healthy"),
                                ("failing (min … max)", "Failing"),
                                ("separating thresholds", "Separating"),
                                ("default", "Default"),
                                ("paper (CIFAR-10, quoted)", "Paper")),
    "03_early_stop": (("rule", "Rule"), ("diagnostic", "Diag."), ("fired_on", "Fired on"),
                      ("first_epochs", "First epoch"), ("saved_share_mean", "Saved"),
                      ("paper (CIFAR-10)", "Paper")),
    "04_penalty_audit": (("rule", "Rule"), ("lambda", "λ"), ("acc", "Acc."), ("h_L", "‖h_L‖"),
                         ("g_L", "‖g_L‖"), ("fired", "Fired"),
                         ("paper acc (CIFAR-10)", "Paper acc.")),
    "05_pitfalls": (("pitfall", "Pitfall"), ("result", "Result"),
                    ("paper (CIFAR-10)", "Paper")),
    "06_architectures": (("architecture", "Arch."), ("rule", "Rule"), ("acc", "Acc."),
                         ("‖h_L‖", "‖h_L‖"), ("‖g_L‖ (b)", "‖g_L‖"),
                         ("fired (paper mode)", "Fired"),
                         ("paper (CIFAR-10)", "Paper")),
    "06_depth": (("rule", "Rule"), ("L", "L"), ("acc", "Acc."), ("Γ_0", "Γ_0"),
                 ("Γ deep (mean k > L/2)", "Γ deep"), ("paper", "Paper")),
    "06_claims": (("claim", "Claim"), ("paper (CIFAR-10)", "Paper"), ("these runs", "Ours"),
                  ("reproduced", "Reproduced")),
}
TABLE1_COLUMNS = (("rule", "Method"), ("acc (ours)", "Accuracy"), ("Γ headline", "Γ"),
                  ("standard verdict (acc + Γ)", "Standard verdict"),
                  ("protocol verdict (matched (d))", "Protocol verdict"),
                  ("fired (matched)", "What fired"))
_WORDS = ("Zero One Two Three Four Five Six Seven Eight Nine Ten Eleven Twelve Thirteen Fourteen "
          "Fifteen Sixteen Seventeen Eighteen Nineteen Twenty").split()


# --- Names and values -----------------------------------------------------------------------------
def spell(n: int) -> str:
    """A whole number in letters (macro names allow nothing else): 4 -> Four, 42 -> FourTwo."""
    n = int(n)
    return _WORDS[n] if 0 <= n <= 20 else "".join(_WORDS[int(d)] for d in str(abs(n)))


def macro_name(*parts: Any) -> str:
    """`\\fa` + each part with digit runs spelled and everything but letters dropped:
    ("Acc", "state_bridge") -> "faAccStateBridge", ("DepthAcc", "fa", "L", 4) -> ...LFour."""
    out = "fa"
    for part in parts:
        text = rule_label(part) if part in RULES else str(part)
        word, digits = "", ""
        for ch in text + " ":
            if ch.isdigit():
                digits += ch
                continue
            if digits:
                word += spell(int(digits))
                digits = ""
            if ch.isascii() and ch.isalpha():
                word += ch
        out += word[:1].upper() + word[1:]
    return out


def _num(x: Optional[float], digits: int = 3) -> str:
    if x is None or not math.isfinite(float(x)):
        return "n/a"
    return f"{float(x):.{digits}f}"


def _sci(x: Optional[float]) -> str:
    """1.2e+04 as \\ensuremath{1.2\\times 10^{4}}; plain for 0.01 <= |x| < 1000."""
    if x is None or not math.isfinite(float(x)):
        return "n/a"
    x = float(x)
    if x == 0 or 0.01 <= abs(x) < 1000:
        return f"{x:.3g}"
    mant, exp = f"{x:.2e}".split("e")
    return rf"\ensuremath{{{mant}\times 10^{{{int(exp)}}}}}"


def _pm(mean: Optional[float], std: Optional[float], digits: int = 3) -> str:
    if mean is None:
        return "n/a"
    return _num(mean, digits) if std is None else \
        rf"\ensuremath{{{_num(mean, digits)} \pm {_num(std, digits)}}}"


def _pct(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{100 * float(x):.0f}\\%"


class Macros:
    """Ordered macros with their source comment; a name used twice is an error."""

    def __init__(self):
        self.items: dict[str, tuple[str, str]] = {}

    def add(self, parts: Sequence[Any], value: Any, source: str) -> None:
        name = macro_name(*parts)
        if name in self.items:
            raise ValueError(f"macro \\{name} defined twice ({self.items[name][1]}; {source}): "
                             "give one of them another name")
        text = value if isinstance(value, str) else latex_escape(fmt(value))
        self.items[name] = (text, source)

    def tex(self) -> str:
        return "".join(f"\\newcommand{{\\{n}}}{{{v}}} % {latex_ascii(s)}\n"
                       for n, (v, s) in self.items.items())


# --- Reading the results folder -------------------------------------------------------------------
def _read(path: Path) -> Optional[dict]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def load_sidecars(results_dir: Path) -> dict[str, dict]:
    """Every table's JSON sidecar under `results_dir`/tables, by table name."""
    out = {}
    for path in sorted((Path(results_dir) / "tables").glob("*.json")):
        data = _read(path)
        if data is not None and "columns" in data and "rows" in data:
            out[path.stem] = data
    return out


def _report_macros(m: "Macros", results_dir: Path) -> None:
    """Notebook 00's worked example (its report) and notebook 02's fit run (the gain curve)."""
    example = _read(Path(results_dir) / "tables" / "00_worked_example_report.json")
    if example and example.get("report"):
        r, src = example["report"], "00_worked_example_report.json (notebook 00's report)"
        gamma = (r.get("alignment") or {}).get("headline")
        fired = [k for k in mode_keys(r.get("mode", "paper")) if (r.get("fired") or {}).get(k)]
        for name, value in (("Acc", _num(r.get("headline_acc"))),
                            ("HL", _sci((r.get("residual_norms") or [None])[-1])),
                            ("GL", _sci((r.get("bp_grad_norms") or [None])[-1])),
                            ("Growth", _sci(r.get("max_block_growth"))),
                            ("FrozenAcc", _num(r.get("frozen_baseline_acc"))),
                            ("Margin", _num(r.get("frozen_margin_pp"), 1)),
                            ("Gamma", _num(gamma)),
                            ("Fired", "+".join(f"({k})" for k in fired) or "none"),
                            ("Verdict", latex_escape(str(r.get("verdict", "")).split(":")[0]))):
            m.add(("Example", name), value, f"{src}: {name}")
    curve = (_read(Path(results_dir) / "figures" / "02_gain_curve.json") or {}).get("numbers")
    if curve:
        src = "figures/02_gain_curve.json (notebook 02's BP fit run)"
        gains = [v for v in curve.get("gain_L") or [] if v is not None and math.isfinite(v)]
        last = lambda key: (curve.get(key) or [None])[-1]
        cross = curve.get("g_L_under_floor_from_step")
        for name, value in (("Acc", _num(last("acc_eval"))), ("GL", _sci(last("g_L"))),
                            ("Gain", _sci(last("gain_L"))),
                            ("ErrorNorm", _sci(last("error_norm"))),
                            ("GLUnderFloorStep", "never" if cross is None else str(cross)),
                            ("GainMin", _sci(min(gains) if gains else None)),
                            ("GainMax", _sci(max(gains) if gains else None))):
            m.add(("Fit", name), value, f"{src}: {name}")


def _provenance(sidecars: dict[str, dict]) -> dict:
    metas = [s.get("metadata") or {} for s in sidecars.values()]
    pick = lambda key: next((m[key] for m in metas if m.get(key)), "unknown")
    return {"commit": pick("git_commit"), "profile": pick("profile"),
            "data": pick("data"), "data_fingerprint": pick("data_fingerprint"),
            "version": pick("fa_eval_version")}


def numbers_macros(sidecars: dict[str, dict], results_dir: Optional[Path] = None) -> Macros:
    """The macros of every number the notebooks state, from the sidecars they saved."""
    m = Macros()
    if results_dir is not None:
        _report_macros(m, results_dir)
    audit = sidecars.get("02_audit_table")
    if audit:
        src = "02_audit_table (per-seed rows; notebook 02's findings)"
        per_seed = audit["numbers"]["per_seed"]
        stats = {r: s.get("stats", {}) for r, s in audit["numbers"]["summary"].items()}
        for rule, n in findings.audit_numbers(per_seed).items():
            m.add(("Acc", rule), _pm(n["acc"], n["acc_std"]), f"{src}: accuracy mean +- std")
            m.add(("AccMean", rule), _num(n["acc"]), f"{src}: accuracy, mean over seeds")
            m.add(("AccStd", rule), _num(n["acc_std"]), f"{src}: accuracy, sample std")
            m.add(("FrozenAcc", rule), _num(n["frozen_baseline_acc"]),
                  f"{src}: own frozen-blocks baseline")
            m.add(("Margin", rule), _num(n["margin_pp"], 1), f"{src}: acc - baseline, pp")
            m.add(("WalkedBack", rule), f"{n['walked_back']}/{n['seeds']}",
                  f"{src}: seeds the protocol walks back")
            st = stats.get(rule, {})
            for key, name in (("h_L", "HL"), ("g_L", "GL"), ("gain_L", "Gain")):
                m.add((name, rule), _sci((st.get(key) or {}).get("mean")),
                      f"02_audit_table summary: {key}, mean over seeds")
            g = st.get("gamma_headline") or {}
            m.add(("Gamma", rule), _pm(g.get("mean"), g.get("std")),
                  "02_audit_table summary: Gamma headline mean +- std")
    for rule, row in published.MAIN_TABLE.items():
        m.add(("PaperAcc", rule), _pm(*row["acc"]), "published.MAIN_TABLE (paper, Table 1)")
        if row["verdict"]:
            m.add(("PaperVerdict", rule), row["verdict"], "published.MAIN_TABLE")
    sep = sidecars.get("02_threshold_separation")
    if sep:
        for key, r in ((sep.get("numbers") or {}).get("rows") or {}).items():
            src = f"02_threshold_separation, {r['label']}"
            lo, hi = (r.get("interval") or (None, None))[:2]
            m.add(("SepLow", key), _sci(lo), f"{src}: separating interval, low end")
            m.add(("SepHigh", key), _sci(hi), f"{src}: separating interval, high end")
            width = r.get("width_decades")
            m.add(("SepWidth", key), "n/a" if width is None else f"{width:.2f}",
                  f"{src}: interval width, decades")
            m.add(("SepDefaultInside", key), "yes" if r.get("default_inside") else "no",
                  f"{src}: default threshold inside the interval")
    for key, r in published.SEPARATION.items():
        m.add(("PaperSepHealthy", key), _sci(r["healthy"]), "published.SEPARATION")
        m.add(("PaperSepFailing", key), _sci(r["failing"]), "published.SEPARATION")
    early = sidecars.get("03_early_stop")
    if early:
        rows, src = early["rows"], "03_early_stop (replayed traces; notebook 03's findings)"
        for rule in dict.fromkeys(r["rule"] for r in rows):
            for key in dict.fromkeys(r["key"] for r in rows if r["rule"] == rule):
                first = [r["first_epoch"] for r in rows if r["rule"] == rule and r["key"] == key
                         and r["status"] == "fired" and r["first_epoch"] is not None]
                m.add(("FirstEpoch", "Or".join(k.capitalize() for k in key.split("|")), rule),
                      str(min(first)) if first else "never",
                      f"{src}: first epoch ({key}) fires, earliest seed")
        stops = findings.stop_numbers(rows)
        for rule in dict.fromkeys(r["rule"] for r in stops["runs"]):
            at = [r["stop"] for r in stops["runs"] if r["rule"] == rule and r["stop"] is not None]
            m.add(("StopEpoch", rule), str(min(at)) if at else "never",
                  f"{src}: epoch a default monitor stops it, earliest seed")
        m.add(("SavedEpochs",), str(stops["saved_epochs"]), f"{src}: epochs a stop saves")
        m.add(("TotalEpochs",), str(stops["total_epochs"]), f"{src}: epochs of all runs")
        m.add(("SavedShare",), _pct(stops["saved_share"]), f"{src}: share of epochs saved")
        live = (early.get("numbers") or {}).get("live")
        if live:
            src = f"03_early_stop sidecar: the live monitored {live['rule']} run"
            m.add(("LiveStopEpoch",), str(live["trained_epochs"]) if live["stopped"] else "never",
                  f"{src}: epoch the monitor stopped it")
            m.add(("LivePlannedEpochs",), str(live["planned_epochs"]), f"{src}: planned epochs")
            m.add(("LiveSavedShare",), _pct(live["saved_share"] if live["stopped"] else 0.0),
                  f"{src}: share of epochs never trained")
    for key in ("a", "b"):
        lo, hi = published.EARLY_STOP["dfa"][f"{key}_epoch"]
        m.add(("PaperFirstEpoch", key.upper(), "dfa"), f"{lo}--{hi}", "published.EARLY_STOP")
    pen = sidecars.get("04_penalty_audit")
    if pen:
        rows, lam = pen["rows"], (pen.get("numbers") or {}).get("penalty_lambda")
        src = "04_penalty_audit (means over seeds; notebook 04's findings)"
        if lam is not None:
            m.add(("PenaltyLambda",), _sci(lam), f"{src}: the penalty's lambda")
            ratio = findings.penalty_reduction(rows, lam)
            near = ratio is not None and 1 / 1.1 <= ratio <= 1.1  # as findings words it
            m.add(("PenaltyReduction",), "n/a" if ratio is None else
                  f"{ratio:.2f}" if near else f"{ratio:.3g}",
                  f"{src}: DFA h_L at lambda=0 over h_L at the penalty lambda")
            for rule in dict.fromkeys(r["rule"] for r in rows):
                for tag, at in (("Off", 0.0), ("On", lam)):
                    row = next((r for r in rows if r["rule"] == rule
                                and math.isclose(float(r["lambda"]), at)), None)
                    if row is not None:
                        m.add(("PenaltyAcc", tag, rule), _pm(row["acc_mean"], row["acc_std"]),
                              f"{src}: accuracy at lambda={at:g}")
                        m.add(("PenaltyHL", tag, rule), _sci(row["h_L"]),
                              f"{src}: h_L at lambda={at:g}")
                        for key in ("a", "d"):
                            c = (row.get("fired_counts") or {}).get(key)
                            m.add(("PenaltyFires", key.upper(), tag, rule),
                                  "skipped" if c is None else f"{c}/{row['seeds']}",
                                  f"{src}: seeds ({key}) fires on at lambda={at:g}")
    for rule, (off, on) in published.PENALTY.items():
        m.add(("PaperPenaltyAccOff", rule), _num(off), "published.PENALTY (no penalty)")
        m.add(("PaperPenaltyAccOn", rule), _num(on), "published.PENALTY (lambda 1e-2)")
    m.add(("PaperPenaltyHL",), _sci(published.PENALTY_H_L[1e-2]), "published.PENALTY_H_L")
    pit = sidecars.get("05_pitfalls")
    if pit:
        rows = pit["rows"]
        shown = sum(1 for r in rows if r.get("holds"))
        m.add(("PitfallsShown",), str(shown), "05_pitfalls: pitfalls shown on this input")
        m.add(("PitfallsTotal",), str(len(rows)), "05_pitfalls: pitfalls checked")
    claims = sidecars.get("06_claims")
    if claims:
        rows = claims["rows"]
        yes = sum(1 for r in rows if str(r.get("reproduced", "")).split(" (")[0] == "yes")
        m.add(("ClaimsReproduced",), str(yes), "06_claims: claims these runs reproduce")
        m.add(("ClaimsTotal",), str(len(rows)), "06_claims: claims compared")
    arch = sidecars.get("06_architectures")
    if arch:
        for r in arch["rows"]:
            variant = str(r.get("variant", r["architecture"])).title().replace("_", "")
            src = f"06_architectures: {r['architecture']}, {r['rule']}"
            m.add(("ArchAcc", variant, r["rule"]), latex_escape(r["acc"]), f"{src}: accuracy")
            m.add(("ArchHL", variant, r["rule"]), latex_escape(r["‖h_L‖"]), f"{src}: h_L")
            m.add(("ArchFired", variant, r["rule"]), latex_escape(r["fired (paper mode)"]),
                  f"{src}: fired, paper mode")
    depth = sidecars.get("06_depth")
    if depth:
        for r in depth["rows"]:
            if r.get("acc_mean") is not None or r.get("acc") is not None:
                val = r.get("acc_mean", r.get("acc"))
                m.add(("DepthAcc", r["rule"], "L", int(r["L"])),
                      latex_escape(val) if isinstance(val, str) else _num(val),
                      f"06_depth: accuracy, L={r['L']}")
    for (rule, L), row in published.DEPTH.items():
        if "acc" in row:
            m.add(("PaperDepthAcc", rule, "L", L), _num(row["acc"]), "published.DEPTH")
    return m


def numbers_tex(results_dir: Path, sidecars: Optional[dict] = None) -> str:
    sidecars = load_sidecars(results_dir) if sidecars is None else sidecars
    p = _provenance(sidecars)
    head = (f"% Numbers for the text, written by fa-eval {p['version']} from {len(sidecars)} "
            f"tables' sidecars.\n% commit {p['commit']}, profile {p['profile']}, data "
            f"{p['data']} (fingerprint {p['data_fingerprint']}), written "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n"
            "% Do not edit: a reproduction rewrites this file.\n")
    return head + numbers_macros(sidecars, results_dir).tex()


# --- Tables ---------------------------------------------------------------------------------------
def tabular(rows: Sequence[dict], columns: Sequence[tuple[str, str]], caption: str,
            label: str, venue: str) -> str:
    """A booktabs table at the text width: short columns `l`, the others wrap (tabularx X)."""
    cells = [[latex_escape(fmt(r.get(key))).replace("/", r"/\allowbreak{}") for key, _ in columns]
             for r in rows]
    spec = ""
    for j, (key, head) in enumerate(columns):
        longest = max([len(fmt(r.get(key))) for r in rows] + [len(head)])
        spec += "l" if longest <= 10 else r">{\raggedright\arraybackslash}X"
    if "X" not in spec:
        spec = spec[:-1] + r">{\raggedright\arraybackslash}X"
    env = "table*" if venue in figures.TWO_COLUMN else "table"
    lines = [rf"\begin{{{env}}}[t]", r"\centering", r"\small",
             rf"\caption{{{latex_escape(caption)}}}", rf"\label{{{label}}}",
             rf"\begin{{tabularx}}{{\linewidth}}{{@{{}}{spec}@{{}}}}", r"\toprule",
             " & ".join(latex_escape(h) for _, h in columns) + r" \\", r"\midrule"]
    lines += [" & ".join(c) + r" \\" for c in cells]
    lines += [r"\bottomrule", r"\end{tabularx}", rf"\end{{{env}}}"]
    return "\n".join(lines) + "\n"


def paper_table(name: str, sidecar: dict, venue: str = "neurips") -> str:
    """The paper form of table `name`: the columns of PAPER_COLUMNS (all if not listed, wrapped)."""
    rows, columns, summary = sidecar["rows"], PAPER_COLUMNS.get(name), False
    if name == "02_audit_table" and any(r.get("kind") == "summary" for r in rows):
        rows, summary = [r for r in rows if r.get("kind") == "summary"], True
    if name == "03_early_stop" and (sidecar.get("numbers") or {}).get("summary"):
        rows = [{**r, "saved_share_mean": None if r["saved_share_mean"] is None
                 else f"{100 * r['saved_share_mean']:.0f}%"} for r in sidecar["numbers"]["summary"]]
        summary = True
    if columns is None:
        columns = [(c, c) for c in sidecar["columns"]]
    columns = [(k, h) for k, h in columns if any(k in r for r in rows)]
    rows = [{**r, "rule": rule_label(r["rule"])} if isinstance(r.get("rule"), str) else r
            for r in rows]
    dropped = [c for c in sidecar["columns"] if c not in {k for k, _ in columns}]
    caption = sidecar.get("caption", "") + (
        f" Summary over seeds; every seed and column: tables/{name}.csv." if summary else
        f" Columns left out here (in tables/{name}.csv): {', '.join(dropped)}." if dropped else "")
    return tabular(rows, columns, caption, f"tab:paper:{name}", venue)


def table1(sidecar: dict, venue: str = "neurips") -> str:
    """The paper's Table 1 from the audit table's summary rows (mean ± std over seeds)."""
    rows = [r for r in sidecar["rows"] if r.get("kind") == "summary"]
    meta = sidecar.get("metadata") or {}
    seeds = ", ".join(str(s) for s in meta.get("seeds") or [])
    caption = (f"Test accuracy and Γ (mean ± sample std over seeds {seeds}; "
               f"{meta.get('data', 'unknown')} data, profile {meta.get('profile')}), the "
               "standard verdict (accuracy above chance and Γ > 0), and the protocol's verdict "
               "in paper mode with (d) matched per rule (each rule against its own "
               "frozen-random-blocks baseline), with the diagnostics that fired. "
               "Per-seed numbers: tables/02_audit_table.csv.")
    return tabular(rows, TABLE1_COLUMNS, caption, "tab:table1", venue)


def write_paper(results_dir: Path | str, venue: Optional[str] = None) -> dict[str, Path]:
    """Write `results_dir`/paper/{preamble,numbers,table1,<table>}.tex from the tables' sidecars,
    the tables as floats for `venue` (figures.VENUES; None: `figures.venue()`, the figures')."""
    venue = figures.check_venue(venue if venue is not None else figures.venue(), "venue")
    results_dir = Path(results_dir)
    out = results_dir / PAPER_DIR
    sidecars = load_sidecars(results_dir)
    paths = {"preamble": write_bytes_atomic(out / "preamble.tex", PREAMBLE.encode()),
             "numbers": write_bytes_atomic(out / "numbers.tex",
                                           numbers_tex(results_dir, sidecars).encode())}
    if "02_audit_table" in sidecars:
        paths["table1"] = write_bytes_atomic(out / "table1.tex",
                                             table1(sidecars["02_audit_table"], venue).encode())
    for name, sidecar in sidecars.items():
        paths[name] = write_bytes_atomic(out / f"{name}.tex",
                                         paper_table(name, sidecar, venue).encode())
    return paths

