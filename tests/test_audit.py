"""Table 1 (audit.py) on tiny runs, and the structure of notebooks 00-02.

One tiny grid (BP and DFA, the tiny profile's two seeds, with their frozen baselines) is trained
once for the module; every test reads the table built from it. The notebooks themselves are
executed by the reproduction test, not here: this file only checks that they are well formed.
"""
import csv
import dataclasses
import json
import re

import numpy as np
import pytest
import torch

from fa_nb_utils.paper import audit
from fa_nb_utils.paper import published
from fa_nb_utils.paper.experiments import run_grid
from fa_nb_utils.paper.profiles import get_profile
from fa_nb_utils.report import DiagnosticReport

RULES = ("bp", "dfa")


@pytest.fixture(scope="module")
def tiny(tiny_grid):
    """The tiny grid (conftest), trained once per session on one torch thread."""
    return tiny_grid


@pytest.fixture(scope="module")
def saved(tiny):
    table = tiny["table"]
    tables = audit.save_audit_table(table, outdir=tiny["results"] / "tables")
    figures = audit.save_hero_figure(table, outdir=tiny["results"] / "figures")
    return {"tables": tables, "figures": figures,
            "sidecar": json.loads(tables["json"].read_text())}


def summary_rows(table):
    return [r for r in table.rows if r["kind"] == "summary"]


def seed_rows(table, rule):
    return [r for r in table.rows if r["kind"] == "seed" and r["rule_key"] == rule]


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------
def test_one_summary_row_per_rule_followed_by_its_seed_rows(tiny):
    table, seeds = tiny["table"], tiny["profile"].seeds
    rows = table.rows
    assert [r["rule_key"] for r in summary_rows(table)] == list(RULES)
    assert len(rows) == len(RULES) * (1 + len(seeds))
    for i, rule in enumerate(RULES):
        block = rows[i * (1 + len(seeds)):(i + 1) * (1 + len(seeds))]
        assert block[0]["kind"] == "summary" and block[0]["seed"] == f"all (n={len(seeds)})"
        assert [r["kind"] for r in block[1:]] == ["seed"] * len(seeds)
        assert [int(r["seed"]) for r in block[1:]] == list(seeds)
        assert {r["rule_key"] for r in block} == {rule}


def test_standard_and_protocol_verdict_columns_exist(tiny, saved):
    header = next(csv.reader(saved["tables"]["csv"].read_text().splitlines()))
    for col in ("standard verdict (acc + Γ)", "protocol verdict (matched (d))",
                "protocol verdict ((d) as paper applied)", "fired (matched)", "Γ headline"):
        assert col in tiny["table"].columns and col in header
    for a in tiny["table"].audits:
        assert a.standard_verdict.startswith(("trustworthy", "not trustworthy: "))
        assert a.report.verdict.startswith(("trustworthy", "needs walk-back: "))


def test_walked_back_counts_equal_the_per_seed_verdicts(tiny):
    table = tiny["table"]
    col = "protocol verdict (matched (d))"
    for s in summary_rows(table):
        rows = seed_rows(table, s["rule_key"])
        k, n = map(int, re.fullmatch(r"walked back (\d+)/(\d+) seeds", s[col]).groups())
        assert n == len(rows)
        assert k == sum(r[col] == "needs walk-back" for r in rows)
        assert k == sum(not a.report.trustworthy for a in table.audits_of(s["rule_key"]))
        k_paper = int(re.fullmatch(r"walked back (\d+)/\d+ seeds",
                                   s["protocol verdict ((d) as paper applied)"]).group(1))
        assert k_paper == sum(not a.report_paper_d.trustworthy
                              for a in table.audits_of(s["rule_key"]))


def test_fired_column_is_the_union_in_the_papers_form():
    assert audit.fired_summary([["a", "b", "d"], ["a", "b", "c", "d"], ["a", "b", "d"]]) \
        == "(a)+(b)+(d), (c) on 1/3 seeds"
    assert audit.fired_summary([[], []]) == "none"
    assert audit.fired_summary([["c"], []]) == "(c) on 1/2 seeds"


def test_mean_and_std_are_sample_std_over_the_seed_numbers(tiny, saved):
    per_seed = saved["sidecar"]["numbers"]["per_seed"]
    for s in summary_rows(tiny["table"]):
        mine = [p for p in per_seed if p["rule"] == s["rule_key"]]
        stats = saved["sidecar"]["numbers"]["summary"][s["rule_key"]]["stats"]
        for key in ("acc", "h_L", "g_L", "stability", "margin_matched_pp"):
            values = np.array([p[key] for p in mine], dtype=float)
            assert stats[key]["mean"] == pytest.approx(np.mean(values), rel=1e-12)
            assert stats[key]["std"] == pytest.approx(np.std(values, ddof=1), rel=1e-12)
            assert stats[key]["std"] != pytest.approx(np.std(values, ddof=0), rel=1e-6)
        acc = np.array([p["acc"] for p in mine])
        assert s["acc (ours)"] == f"{acc.mean():.3f} ± {np.std(acc, ddof=1):.3f}"


def test_a_single_seed_has_no_spread():
    assert audit.mean_std([0.3]) == (0.3, None, 1)
    m, s, n = audit.mean_std([0.1, None, float("nan"), 0.3])
    assert (m, n) == (pytest.approx(0.2), 2) and s == pytest.approx(np.std([0.1, 0.3], ddof=1))


def test_d_as_paper_applied_is_not_provided_for_bp_and_matched_otherwise(tiny):
    table = tiny["table"]
    col = "(d) margin pp, as paper applied"
    assert "bp" not in published.PAPER_APPLIED_D and "dfa" in published.PAPER_APPLIED_D
    assert all(r[col] == "not provided" for r in [*summary_rows(table)[:1],
                                                   *seed_rows(table, "bp")])
    for a in table.audits_of("bp"):
        assert a.report_paper_d.fired["d"] is None          # skipped, never passed
        assert a.report_paper_d.to_dict()["diagnostics"]["d"] == "skipped"
        assert a.report.fired["d"] is not None               # matched: evaluated
    frozen = [r.result.trace[-1]["acc_eval"] for r in tiny["records"]
              if r.rule == "dfa" and r.frozen]
    for a in table.audits_of("dfa"):
        assert a.frozen_baseline_acc == pytest.approx(np.mean(frozen))
        assert a.margin_paper_pp == a.margin_matched_pp
        assert a.margin_matched_pp == round(100 * (a.acc - np.mean(frozen)), 9)
    # the two readings differ for BP (not provided vs matched), and the table says so
    assert any(line.startswith("BP:") for line in table.differences)
    assert not any(line.startswith("DFA:") for line in table.differences)


def test_accuracy_is_the_traces_final_full_test_split_value(tiny):
    for a in tiny["table"].audits:
        rec = next(r for r in tiny["records"]
                   if r.rule == a.rule and r.seed == a.seed and not r.frozen)
        assert a.acc == rec.result.trace[-1]["acc_eval"]
        assert a.report.num_eval_samples == 1280 and a.report.num_eval_batches == 10
        # the protocol's numbers at the final model are the trace's last per-layer numbers
        assert a.report.residual_norms == pytest.approx(rec.result.trace[-1]["residual_norms"])


def test_gamma_uses_the_runs_saved_rule(tiny):
    # BP's credit is the BP gradient: Γ is 1 at every layer (a fresh or wrong credit is not)
    for a in tiny["table"].audits_of("bp"):
        assert a.gamma_per_layer == pytest.approx([1.0] * 5, abs=1e-9)
        assert a.standard_verdict == "trustworthy"
    for a in tiny["table"].audits_of("dfa"):
        assert a.report.alignment["source"].startswith("rule 'dfa' with its saved feedback")


def test_synthetic_stamp_paper_column_and_cifar_not_run(tiny, saved):
    table = tiny["table"]
    assert table.stamp == "synthetic data" and "synthetic data" in table.caption
    assert saved["sidecar"]["metadata"]["data_stamp"] == "synthetic data"
    assert "synthetic data" in saved["sidecar"]["caption"]
    assert saved["sidecar"]["metadata"]["profile"] == "tiny"
    assert saved["sidecar"]["metadata"]["seeds"] == list(tiny["profile"].seeds)
    for s in summary_rows(table):
        assert s["CIFAR-10 acc (paper)"] == published.paper_acc(s["rule_key"])
        assert s["CIFAR-10 acc (ours)"] == "not run"
    assert summary_rows(table)[0]["CIFAR-10 acc (paper)"] == "0.615 ± 0.004"
    assert all(r["CIFAR-10 acc (ours)"] == "not run" for r in table.rows)
    hero = json.loads(saved["figures"]["json"].read_text())
    assert hero["metadata"]["data_stamp"] == "synthetic data"
    assert hero["numbers"]["data_stamp"] == "synthetic data"


def test_table_and_figure_files_appear(saved):
    for kind in ("csv", "tex", "json"):
        assert saved["tables"][kind].name == f"02_audit_table.{kind}"
        assert saved["tables"][kind].stat().st_size > 0
    tex = saved["tables"]["tex"].read_text()
    assert "\\toprule" in tex and "\\bottomrule" in tex
    side = json.loads(saved["tables"]["json"].read_text(), parse_constant=pytest.fail)
    reports = side["numbers"]["reports"]
    assert set(reports) == {f"{r}_s{s}" for r in RULES for s in get_profile("tiny").seeds}
    for rep in reports.values():
        assert DiagnosticReport.from_dict(rep).verdict == rep["verdict"]
    for kind in ("pdf", "png", "json"):
        assert saved["figures"][kind].name == f"02_hero_layer_norms.{kind}"
        assert saved["figures"][kind].stat().st_size > 0
    assert saved["figures"]["pdf"].read_bytes()[:5] == b"%PDF-"
    numbers = json.loads(saved["figures"]["json"].read_text())["numbers"]
    assert numbers["g_floor"] == 1e-7 and set(numbers["rules"]) == set(RULES)


def test_hero_figure_pdf_is_byte_identical_across_saves(tiny, tmp_path):
    first = audit.save_hero_figure(tiny["table"], outdir=tmp_path / "one")["pdf"].read_bytes()
    second = audit.save_hero_figure(tiny["table"], outdir=tmp_path / "two")["pdf"].read_bytes()
    assert first == second


def test_hero_lines_are_the_seed_geometric_mean_of_the_reports(tiny):
    numbers = audit.hero_numbers(tiny["table"])
    for rule in RULES:
        h = np.array([a.report.residual_norms for a in tiny["table"].audits_of(rule)])
        assert numbers["rules"][rule]["seed_mean_h"] == pytest.approx(
            np.exp(np.log(h).mean(axis=0)).tolist())


def test_runs_from_other_data_are_refused(tiny):
    other = dataclasses.replace(tiny["data"], fingerprint="0" * 64)
    with pytest.raises(ValueError, match="trained on data"):
        audit.audit_runs(tiny["records"], other, profile="tiny")


# ---------------------------------------------------------------------------------------------
# Notebook 01's summary and notebook 00's helpers
# ---------------------------------------------------------------------------------------------
def test_runs_summary_says_trained_then_reused(tiny):
    assert {audit.run_status(r) for r in tiny["records"]} == {"trained"}
    threads = torch.get_num_threads()
    try:
        again = run_grid(tiny["profile"], tiny["results"], rules=RULES, data=tiny["data"],
                         threads=1, progress=False)
    finally:
        torch.set_num_threads(threads)
    rows = audit.runs_summary(again)
    assert {r["status"] for r in rows} == {"reused"}
    assert len(rows) == len(RULES) * 2 * len(tiny["profile"].seeds)
    for row, rec in zip(rows, again):
        assert row["acc_eval"] == rec.result.trace[-1]["acc_eval"]
        assert row["epochs"] == tiny["profile"].epochs
    paths = audit.save_runs_table(again, profile=tiny["profile"], data=tiny["data"],
                                  outdir=tiny["results"] / "tables")
    assert {p.name for p in paths.values()} == {"01_runs.csv", "01_runs.tex", "01_runs.json"}
    assert json.loads(paths["json"].read_text())["metadata"]["data_stamp"] == "synthetic data"


def test_worked_example_config_follows_the_profile():
    profile = get_profile("tiny")
    config = audit.worked_example_config(profile)
    we = profile.worked_example
    assert (config.rule, config.d_hidden, config.epochs) == ("dfa", we["d_hidden"], we["epochs"])
    assert config.rule_options == {"credit_norm": "rms"} and not config.freeze_blocks
    frozen = audit.worked_example_config(profile, frozen=True)
    assert frozen.freeze_blocks and dataclasses.replace(frozen, freeze_blocks=False) == config


def test_explain_verdict_is_computed_from_the_report(tiny):
    a = tiny["table"].audits_of("dfa")[0]
    text = audit.explain_verdict(a.report, num_classes=10)
    assert a.report.verdict in text
    for key, fired in a.report.fired.items():
        assert (f"({key})" in text) == bool(fired)
    assert a.standard_verdict in text
    healthy = DiagnosticReport(method_name="x", notes="", residual_norms=[1.0, 1.1],
                               bp_grad_norms=[1e-3, 1e-3], stability_layer=0,
                               cross_batch_stability=0.05, headline_acc=0.6,
                               frozen_baseline_acc=None)
    text = audit.explain_verdict(healthy)
    assert "Nothing fired" in text and "(d) was skipped" in text and "walk" not in text
