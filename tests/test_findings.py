"""The notebooks' set-up and "What this shows" (findings.py), and the one paper style (figures.py).

Every finding is checked on small hand-built inputs, once where the effect is there and once where
it is not: the sentences must carry the numbers they were given (recomputed here by hand) and must
never claim what did not happen. The penalty sweep's seaborn bars are checked against mean ± sample
std computed independently with numpy, and against the sidecar.
"""
import json
from pathlib import Path

import numpy as np
import pytest

from fa_nb_utils.paper import findings
from fa_nb_utils.paper import penalty as pen
from fa_nb_utils.paper.figures import (OKABE_ITO, markdown_table, paper_style, rule_colour,
                                       show_table)
from fa_nb_utils.paper.profiles import get_profile
from fa_nb_utils.report import DiagnosticReport

TINY = get_profile("tiny")
ROOT = Path(__file__).resolve().parents[1]


def report(h_L=1.5, g_L=1e-3, stability=0.05, acc=0.60, frozen=0.30, alignment=None):
    """A report with 4 blocks; growth is h_L / 1.1 at the last block only."""
    return DiagnosticReport(method_name="test", notes="", residual_norms=[1.0, 1.0, 1.0, 1.1, h_L],
                            bp_grad_norms=[1e-3, 1e-3, 1e-3, 1e-3, g_L], stability_layer=2,
                            cross_batch_stability=stability, headline_acc=acc,
                            frozen_baseline_acc=frozen, alignment=alignment)


def joined(lines):
    assert isinstance(lines, list) and all(isinstance(l, str) and l for l in lines)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Set-up
# ---------------------------------------------------------------------------------------------
def test_notebook_setup_returns_the_profile_and_an_absolute_results_folder(tmp_path, capsys):
    prof, results = findings.notebook_setup("tiny", str(tmp_path / "r"), train_missing=False)
    assert prof is TINY and results == tmp_path / "r"
    out = capsys.readouterr().out
    assert "'tiny'" in out and str(tmp_path / "r") in out and "train_missing=False" in out
    # a relative folder is under the project root wherever the kernel starts (Lab: notebooks/)
    _, rel = findings.notebook_setup("smoke", "results")
    assert rel == ROOT / "results"


@pytest.mark.parametrize("args,error,match", [
    (("huge", "results"), ValueError, "unknown profile 'huge'"),
    (("tiny", ""), TypeError, "results_dir must be a non-empty str"),
    (("tiny", 3), TypeError, "results_dir must be a non-empty str"),
    (("tiny", "results", "yes"), TypeError, "train_missing must be True or False"),
])
def test_notebook_setup_refuses_bad_parameters(args, error, match):
    with pytest.raises(error, match=match):
        findings.notebook_setup(*args)


# ---------------------------------------------------------------------------------------------
# 00: the worked example
# ---------------------------------------------------------------------------------------------
def test_worked_example_names_what_fired_with_its_numbers():
    r = report(h_L=1.1 * 300, g_L=2e-9)          # growth 300x at the last block, g_L under 1e-7
    text = joined(findings.worked_example(r, profile=TINY))
    assert "walks this run back" in text and "2 of 4 diagnostics fired ((a)+(b))" in text
    assert "300" in text and "2.00e-09" in text        # the measured values, not just letters
    assert "passed (c)" in text and "passed (d)" in text and "trustworthy" not in text.split(".")[0]
    assert "too short" not in text                     # something fired: no tiny caveat


def test_worked_example_trustworthy_run_says_so_and_what_was_skipped():
    r = report(frozen=None)
    text = joined(findings.worked_example(r, profile="smoke"))
    assert text.startswith("The protocol calls this run trustworthy")
    assert "skipped (d)" in text and "walks" not in text and "too short" not in text
    tiny = joined(findings.worked_example(r, profile=TINY))
    assert "tiny profile" in tiny and "too short" in tiny


def test_worked_example_sets_the_standard_verdict_beside_the_protocol():
    exploded_but_aligned = report(h_L=1.1 * 300, alignment={"headline": 0.2, "per_layer": [0.2]})
    text = joined(findings.worked_example(exploded_but_aligned, num_classes=10))
    assert "standard verdict" in text and "disagrees" in text
    healthy = report(alignment={"headline": 0.2, "per_layer": [0.2]})
    text = joined(findings.worked_example(healthy, num_classes=10))
    assert "agrees with the protocol" in text


# ---------------------------------------------------------------------------------------------
# 01: training
# ---------------------------------------------------------------------------------------------
def run(rule, seed, acc, frozen=False, status="trained"):
    return {"rule": rule, "seed": seed, "frozen": frozen, "status": status, "acc_eval": acc}


def test_training_counts_trained_and_reused_and_compares_with_the_frozen_baseline():
    rows = [run("bp", 1, 0.60), run("bp", 2, 0.62, status="reused"), run("bp", 1, 0.40, True),
            run("bp", 2, 0.42, True, "reused"), run("dfa", 1, 0.31, status="reused"),
            run("dfa", 2, 0.33, status="reused"), run("dfa", 1, 0.315, True, "reused"),
            run("dfa", 2, 0.315, True, "reused")]
    text = joined(findings.training(rows))
    assert text.startswith("8 runs: 2 trained by this execution, 6 reused")
    # BP: 0.61 vs 0.41 -> +20.0 pp; DFA: 0.32 vs 0.315 -> +0.5 pp
    assert "BP: final accuracy 0.610 ± 0.014 (2 seeds) vs 0.410" in text
    assert "+20.0 pp, above (d)'s 2 pp margin" in text
    assert "DFA: final accuracy 0.320" in text and "+0.5 pp, under (d)'s 2 pp margin" in text


def test_training_without_a_frozen_baseline_says_so():
    text = joined(findings.training([run("bp", 1, 0.6, status="reused")]))
    assert "0 trained by this execution, 1 reused" in text
    assert "no frozen-random-blocks baseline" in text and "pp" not in text


# ---------------------------------------------------------------------------------------------
# 02: the audit table
# ---------------------------------------------------------------------------------------------
def seed(rule, s, acc, fired, standard="trustworthy", frozen=0.30):
    return {"rule": rule, "seed": s, "acc": acc, "fired": fired, "standard_verdict": standard,
            "protocol_verdict": "trustworthy" if not fired else "needs walk-back: ...",
            "frozen_baseline_acc_matched": frozen,
            "margin_matched_pp": None if frozen is None else 100 * (acc - frozen)}


def test_audit_table_names_the_rules_the_standard_verdict_misses():
    rows = [seed("bp", 1, 0.60, []), seed("bp", 2, 0.62, []),
            seed("dfa", 1, 0.31, ["a", "b", "d"]), seed("dfa", 2, 0.33, ["a", "b"]),
            seed("fa", 1, 0.09, ["d"], standard="not trustworthy: accuracy at or below chance")]
    text = joined(findings.audit_table(rows, profile=TINY))
    assert ("DFA: the standard verdict (accuracy above chance, Γ > 0) passes it on 2/2 seeds that "
            "the protocol walks back; fired there: (a)+(b) on 2/2 seeds, (d) on 1/2 seeds.") in text
    assert "No rule was walked back" not in text
    assert "FA: walked back on 1/1 seeds where the standard verdict fails too" in text
    assert "Trustworthy on every seed: BP." in text
    # per rule accuracy vs its own frozen baseline: BP 0.61 vs 0.30 -> +31.0 pp
    assert "BP: accuracy 0.610 ± 0.014 over 2 seeds vs its frozen baseline 0.300 (+31.0 pp)" in text
    assert "(d) fires (margin under 2 pp) on 1/2 seeds" in text      # DFA
    assert "too short" not in text


def test_audit_table_says_when_nothing_was_walked_back():
    rows = [seed("bp", 1, 0.60, [], frozen=None), seed("dfa", 1, 0.50, [], frozen=None)]
    text = joined(findings.audit_table(rows, profile="smoke"))
    assert "No rule was walked back while the standard verdict passed it" in text
    assert "Trustworthy on every seed: BP, DFA." in text and "(d) skipped" in text
    assert "too short" not in text
    assert "too short" in joined(findings.audit_table(rows, profile="tiny"))


# ---------------------------------------------------------------------------------------------
# 03: early stop
# ---------------------------------------------------------------------------------------------
def replay(rule, s, key, first=None, epochs=10, acc_then=None, acc_end=0.3):
    return {"rule": rule, "seed": s, "key": key, "status": "fired" if first is not None else
            "never fired", "first_epoch": first, "epochs": epochs, "acc_then": acc_then,
            "acc_end": acc_end}


def test_early_stop_says_who_is_stopped_when_and_what_it_saves():
    rows = [replay("dfa", 42, "a", 4, acc_then=0.25, acc_end=0.30),
            replay("dfa", 42, "b", 3, acc_then=0.22, acc_end=0.30),
            replay("dfa", 42, "a|b", 3, acc_then=0.22, acc_end=0.30),   # not a stop key itself
            replay("dfa", 42, "nonfinite"),
            replay("bp", 42, "a"), replay("bp", 42, "b"), replay("bp", 42, "nonfinite")]
    live = {"rule": "dfa", "seed": 42, "stopped": True, "trained_epochs": 3, "planned_epochs": 10,
            "message": "BP grad at numerical floor at epoch 3", "saved_share": 0.7}
    text = joined(findings.early_stop(rows, live, profile=TINY))
    assert ("DFA: a default monitor stops 1/1 runs: seed 42 at epoch 3 of 10 via (b) BP grad at "
            "numerical floor (accuracy 0.220 then, 0.300 at the end).") in text
    assert "BP: a default monitor stops none of its 1 runs" in text
    assert "saves on these runs: 7 of 20 epochs (35%)" in text        # (10 - 3) of 10 + 10
    assert "stopped itself at epoch 3 of 10 planned" in text and "70%" in text
    assert "too short" not in text


def test_early_stop_without_any_stop_is_honest_about_it():
    rows = [replay("dfa", 42, k) for k in ("a", "b", "nonfinite")]
    live = {"rule": "dfa", "seed": 42, "stopped": False, "trained_epochs": 10,
            "planned_epochs": 10, "message": "no stop", "saved_share": None}
    text = joined(findings.early_stop(rows, live, profile="smoke"))
    assert "stops none of its 1 runs" in text and "0 of 10 epochs (0%)" in text
    assert "was not stopped: the monitor let all 10 epochs run" in text
    assert "too short" not in text
    assert "too short" in joined(findings.early_stop(rows, live, profile="tiny"))


# ---------------------------------------------------------------------------------------------
# 04: the penalty
# ---------------------------------------------------------------------------------------------
def prow(rule, lam, h_L, fired, acc=0.35, frozen=0.34, verdict="needs walk-back: ...", seeds=2):
    return {"rule": rule, "lambda": lam, "seeds": seeds, "h_L": h_L, "acc_mean": acc,
            "frozen_baseline_acc": frozen, "fired_counts": fired, "verdict": verdict}


def test_penalty_reports_the_h_L_ratio_and_whether_a_and_d_fire():
    rows = [prow("bp", 0.0, 200.0, {"a": 0, "b": 0, "c": 0, "d": 0}, acc=0.6, verdict="trustworthy"),
            prow("bp", 1e-2, 150.0, {"a": 0, "b": 0, "c": 0, "d": 0}, acc=0.55,
                 verdict="trustworthy"),
            prow("dfa", 0.0, 4e6, {"a": 2, "b": 2, "c": 0, "d": 2}),
            prow("dfa", 1e-2, 4e4, {"a": 0, "b": 1, "c": 0, "d": 2}),
            prow("fa", 1e-2, 1e3, {"a": 0, "b": 0, "c": 0, "d": 0}, verdict="trustworthy")]
    comparison = [{"diagnostic": "(a) residual stream exploded", "comparison": "partial cannot decide (undetermined)"},
                  {"diagnostic": "(d) deep blocks fail", "comparison": "agree"},
                  {"diagnostic": "verdict", "comparison": ""}]
    text = joined(findings.penalty(rows, 1e-2, profile=TINY, comparison=comparison))
    assert "DFA's ‖h_L‖ is 4.00e+04, against 4.00e+06 without it: 100× lower" in text
    assert "(a) fires on 2/2 seeds at λ=0, (a) fires on 0/2 seeds at λ=0.01" in text
    assert "(d) fires on 2/2 seeds at λ=0.01" in text
    assert "BP control: accuracy 0.600 at λ=0, 0.550 at λ=0.01" in text
    assert "FA trustworthy" in text
    assert "agrees with the full audit on (d), cannot decide (a)" in text
    assert "too short" not in text                   # (a) fired at λ = 0


def test_penalty_that_does_not_lower_h_L_says_so():
    rows = [prow("dfa", 0.0, 100.0, {"a": 0, "b": 0, "c": 0, "d": None}),
            prow("dfa", 1e-2, 102.0, {"a": 0, "b": 0, "c": 0, "d": None})]
    text = joined(findings.penalty(rows, 1e-2, profile="tiny"))
    assert "about the same (ratio 0.98)" in text and "lower" not in text
    assert "(d) is skipped at λ=0.01" in text and "(d) fires" not in text
    assert "too short for DFA's stream to explode" in text
    higher = [prow("dfa", 0.0, 100.0, {"a": 0}), prow("dfa", 1e-2, 300.0, {"a": 0})]
    assert "3× higher" in joined(findings.penalty(higher, 1e-2, profile="smoke"))
    assert "not run at both" in joined(findings.penalty(rows[:1], 1e-2))


# ---------------------------------------------------------------------------------------------
# 05: the pitfalls
# ---------------------------------------------------------------------------------------------
def pit(name, holds, measured):
    return {"pitfall": name, "holds": holds, "what we measured": measured}


def test_pitfalls_one_line_each_and_the_count_that_showed():
    rows = [pit("1. norm(-1)", True, "h.norm(-1) = 1.6e-05"),
            pit("4. saved feedback", False, "Γ -0.05 saved, -0.04 fresh")]
    lines = findings.pitfalls(rows)
    assert lines[0] == "1. norm(-1): shown — h.norm(-1) = 1.6e-05"
    assert lines[1] == "4. saved feedback: not shown on this input — Γ -0.05 saved, -0.04 fresh"
    assert lines[2] == "1 of 2 pitfalls showed on this input; not shown: 4. saved feedback."
    assert findings.pitfalls(rows[:1])[-1] == "All 1 pitfalls showed on this model's input."
    assert findings.pitfalls(rows[1:])[-1].startswith("None of the 1 pitfalls showed")


# ---------------------------------------------------------------------------------------------
# Tables and the paper style
# ---------------------------------------------------------------------------------------------
def test_markdown_table_formats_escapes_and_bolds():
    text = markdown_table([{"a": 0.123456, "b": "x|y", "kind": "summary"}, {"a": None, "b": 2}],
                          ["a", "b"], formats={"a": ".2f"}, headers={"a": "‖h_L‖"},
                          bold=lambda r: r.get("kind") == "summary")
    assert text.splitlines() == ["| ‖h_L‖ | b |", "|---|---|", "| **0.12** | **x\\|y** |",
                                 "| — | 2 |"]


def test_show_table_prints_markdown_outside_a_notebook(capsys):
    show_table([{"rule": "bp", "acc": 0.5}])
    assert capsys.readouterr().out.splitlines()[:3] == ["| rule | acc |", "|---|---|",
                                                        "| bp | 0.5 |"]


def test_seaborn_and_matplotlib_share_the_paper_style_and_nothing_leaks():
    import matplotlib as mpl
    import seaborn as sns
    from matplotlib.colors import to_rgb

    before = dict(mpl.rcParams)
    with paper_style():
        assert [to_rgb(c) for c in sns.color_palette()] == [to_rgb(c) for c in OKABE_ITO]
        assert mpl.rcParams["font.family"] == ["DejaVu Sans"] and mpl.rcParams["pdf.fonttype"] == 42
    assert dict(mpl.rcParams) == before
    # a rule's colour depends on the registry only, not on which rules a figure draws
    from fa_nb_utils.rules import RULES
    assert rule_colour("bp") == OKABE_ITO[0]
    first = sorted(RULES, key=lambda r: (r != "bp", r))[:len(OKABE_ITO)]
    assert len({rule_colour(r) for r in first}) == len(first)


# ---------------------------------------------------------------------------------------------
# The penalty sweep: seaborn's per-seed points and mean ± std are the sidecar's numbers
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sweep_audits():
    rng = np.random.default_rng(0)

    def entry(rule, lam, s, acc, h):
        return {"rule": rule, "lambda": lam, "seed": s, "acc": acc,
                "report": report(h_L=h, g_L=h * 1e-12)}
    audits = []
    for s in (42, 123, 456):
        for lam in TINY.lambdas:
            audits.append(entry("dfa", lam, s, 0.3 + lam + rng.normal(0, 0.01),
                                10 ** (6 - 20 * lam + rng.normal(0, 0.3))))
        for lam in (0.0, TINY.penalty_lambda):
            audits.append(entry("bp", lam, s, 0.5 + rng.normal(0, 0.01), 100.0 + s))
    return audits


def test_penalty_sweep_bars_are_mean_and_sample_std_and_the_pdf_is_stable(sweep_audits, tmp_path):
    fig, paths = pen.save_penalty_sweep(sweep_audits, TINY, tmp_path / "one",
                                        {"dfa": {"mean": 0.3}})
    _, again = pen.save_penalty_sweep(sweep_audits, TINY, tmp_path / "two", {"dfa": {"mean": 0.3}})
    assert paths["pdf"].read_bytes() == again["pdf"].read_bytes()
    assert paths["png"].stat().st_size > 0
    side = json.loads(paths["json"].read_text())["numbers"]
    dfa = side["rules"]["dfa"]
    assert "ddof=1" in side["statistic"] and dfa["lambda"] == list(TINY.lambdas)
    for q, panel in (("acc", 0), ("h_L", 1)):
        # independent: numpy over the hand-built values
        want_mean, want_std = [], []
        for lam in TINY.lambdas:
            vals = [a["acc"] if q == "acc" else a["report"].residual_norms[-1]
                    for a in sweep_audits if a["rule"] == "dfa" and a["lambda"] == lam]
            want_mean.append(np.mean(vals))
            want_std.append(np.std(vals, ddof=1))
        np.testing.assert_allclose(dfa["mean"][q], want_mean, rtol=1e-12)
        np.testing.assert_allclose(dfa["std"][q], want_std, rtol=1e-12)
        assert dfa["n"] == [3] * len(TINY.lambdas)
        # what was drawn: the DFA error bars span mean ± std, the points are every seed's value
        ax = fig.axes[panel]
        colour = rule_colour("dfa")
        bars = [c for c in ax.containers
                if np.allclose(_rgb(c.lines[0].get_color()), _rgb(colour))]
        assert len(bars) == 1
        (segments,) = [bc.get_segments() for bc in bars[0].lines[2]]
        lo = [seg[0][1] for seg in segments]
        hi = [seg[1][1] for seg in segments]
        np.testing.assert_allclose(sorted(lo), sorted(np.subtract(want_mean, want_std)),
                                   rtol=1e-9)
        np.testing.assert_allclose(sorted(hi), sorted(np.add(want_mean, want_std)), rtol=1e-9)
        points = np.concatenate([c.get_offsets() for c in ax.collections
                                 if c.get_label() == "DFA per seed"])
        drawn = sorted(points[:, 1].tolist())
        per_seed = sorted(v for s in dfa["per_seed"].values() for v in s[q])
        np.testing.assert_allclose(drawn, per_seed, rtol=1e-12)


def _rgb(c):
    from matplotlib.colors import to_rgb
    return np.array(to_rgb(c))


def _claim(name, verdict):
    return {"claim": name, "paper (CIFAR-10)": "p", "these runs": "r", "reproduced": verdict,
            "note": ""}


def test_architectures_counts_each_outcome_from_the_claims_table():
    claims = [_claim("A", "yes"), _claim("B", "partly"), _claim("C", "no"),
              _claim("D", "not comparable (synthetic data)"), _claim("E", "not run")]
    text = "\n".join(findings.architectures(claims, get_profile("smoke")))
    assert "Of the paper's 5 mechanism and cross-architecture claims, these runs reproduce 1." \
        in text
    assert "Reproduced: A." in text and "Not reproduced: C." in text
    assert "Partly reproduced" in text and ": B." in text
    assert "Not comparable" in text and "): D." in text and "Not run" in text
    assert "synthetic data" in text          # a smoke run says what it cannot refute


def test_architectures_on_cifar10_adds_no_synthetic_caveat():
    text = "\n".join(findings.architectures([_claim("A", "no")], get_profile("paper")))
    assert "reproduce 0." in text and "Not reproduced: A." in text
    assert "synthetic" not in text and "Partly" not in text
