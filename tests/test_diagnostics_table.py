"""The diagnostics table is the one place a diagnostic is declared.

A toy diagnostic registered here, with no other edit, appears in the report's verdict, text and
JSON, in the monitor (default stop and records), in the replay of a saved trace, in the audit
table's fired column, in the penalty table's counts, in the early-stop table's rows and in the
partial audit (as "not measured").
"""
import json

import pytest
import torch

from fa_nb_utils.diagnostics import (ABOVE, DIAGNOSTICS, PARTIAL_BOUND, PARTIAL_NOT_MEASURED,
                                     Diagnostic, register_diagnostic, unregister_diagnostic)
from fa_nb_utils.model import ResidualMLP
from fa_nb_utils.monitor import Monitor, replay_trace
from fa_nb_utils.paper import audit, early_stop, penalty
from fa_nb_utils.partial_audit import partial_audit
from fa_nb_utils.report import DiagnosticReport, DiagnosticThresholds

TOY_NAME = "final stream norm above its ceiling"


@pytest.fixture
def toy():
    diag = register_diagnostic(Diagnostic(
        key="z", name=TOY_NAME, title="final stream norm",
        statistic=lambda r: r.residual_norms[-1], threshold_field="toy_h_L_ceiling",
        direction=ABOVE, default_threshold=1e3,
        describe=lambda v, t: f"||h_L|| {v:.3g} > ceiling {t:g}",
        meaning="the last hidden state is far larger than a healthy one.",
        advice="the stream ends at {value:.3g} (ceiling {threshold:g}).",
        section=lambda r: [f"(z) Final stream norm: {r.residual_norms[-1]:.3e}"],
        needs=("residual_norms",), stops_by_default=True, partial=PARTIAL_NOT_MEASURED,
        partial_note="needs the per-layer norms"))
    yield diag
    unregister_diagnostic("z")
    assert "z" not in DIAGNOSTICS


def report_with(h_last, thresholds=None):
    return DiagnosticReport(method_name="toy", notes="", residual_norms=[10.0, 20.0, h_last],
                            bp_grad_norms=[1e-3, 1e-3, 1e-3], stability_layer=1,
                            cross_batch_stability=0.05, headline_acc=0.5,
                            frozen_baseline_acc=None,
                            thresholds=thresholds or DiagnosticThresholds())


def test_toy_diagnostic_appears_in_the_report_verdict_text_and_json(toy):
    # growth 5000/20 = 250 also fires (a): the toy is listed after it, in the table's order
    r = report_with(5e3)
    assert r.fired["z"] is True and r.statistics["z"] == 5e3
    assert r.verdict.endswith(f"; {TOY_NAME}")
    text = str(r)
    assert "(z) Final stream norm: 5.000e+03" in text
    assert "FLAG: ||h_L|| 5e+03 > ceiling 1000 — the last hidden state" in text
    d = json.loads(r.to_json())
    assert d["diagnostics"]["z"] == "fired" and d["statistics"]["z"] == 5e3
    assert d["names"]["z"] == TOY_NAME and d["thresholds"]["toy_h_L_ceiling"] == 1e3
    assert DiagnosticReport.from_dict(d).fired == r.fired
    # its threshold is set like any other, through DiagnosticThresholds
    relaxed = report_with(5e3, DiagnosticThresholds(extra={"toy_h_L_ceiling": 1e4}))
    assert relaxed.fired["z"] is False and TOY_NAME not in relaxed.verdict
    assert report_with(30.0).fired == {"a": False, "b": False, "c": False, "d": None, "e": None,
                                       "z": False}


def test_toy_diagnostic_stops_a_monitored_run_and_is_recorded(toy):
    torch.manual_seed(0)
    model = ResidualMLP(12, 16, 3, 2, seed=0)
    x, y = torch.randn(64, 12), torch.randint(0, 3, (64,))
    batches = [(x[:32], y[:32]), (x[32:], y[32:])]
    low = DiagnosticThresholds(extra={"toy_h_L_ceiling": 1e-3})  # any stream is above it
    monitor = Monitor(thresholds=low)                           # default stop_on: (a), (b), (z)
    assert "z" in monitor.stop_on
    stop = monitor.check(model, batches, epoch=0, acc_eval=0.4)
    assert stop is not None and stop.diagnostic == "z" and stop.name == TOY_NAME
    assert stop.threshold == 1e-3 and "||h_L||" in stop.message
    assert monitor.records[0]["report"]["diagnostics"]["z"] == "fired"
    assert monitor.first_fired["z"] == 0


def test_toy_diagnostic_has_a_replay_row(toy):
    trace = [{"epoch": e, "acc_eval": 0.3, "residual_norms": [400.0, 800.0, 600.0 * (e + 1)],
              "bp_grad_norms": [1e-3] * 3} for e in range(4)]
    rep = replay_trace(trace)
    row = rep["z"]
    assert (row.status, row.first_epoch, row.label) == ("fired", 1, f"(z) {TOY_NAME}")
    assert row.saved_share == (3 - 1) / 3
    # the "any of the default stops" row now covers (a), (b) and (z)
    assert rep["a|b|z"].first_epoch == 1 and "(z)" in str(rep)
    assert "z" in early_stop.default_keys() and early_stop.short_label("a|b|z") == "(a) or (b) or (z)"


def test_toy_diagnostic_is_counted_by_the_audit_and_penalty_tables(toy):
    fired = report_with(5e3).fired
    assert audit._fired_letters(fired) == ["a", "z"]
    assert audit.fired_summary([["a", "z"], ["z"]]) == "(z), (a) on 1/2 seeds"
    counts = penalty._fired_counts([report_with(5e3), report_with(30.0)])
    assert counts["z"] == 1 and "(z) on 1/2 seeds" in penalty.fired_text(counts, 2)


def test_toy_diagnostic_is_not_measured_by_the_partial_audit(toy):
    res = partial_audit([{"seed": 1, "acc": 0.4, "h_L": 50.0, "h_0": 10.0, "g_k": 1e-4}],
                        frozen_baseline_acc=0.3, h0_source="final entry", num_blocks=2,
                        grad_layer=1, grad_scale="paper scale")
    assert res.status["z"] == "not measured"
    assert "(z)" in res.open_items and "(z) final stream norm — NOT MEASURED" in str(res)
    assert res.to_dict()["z"] == {"status": "not measured", "reason": "needs the per-layer norms"}


def test_registration_is_checked():
    with pytest.raises(ValueError, match="already registered"):
        register_diagnostic(DIAGNOSTICS["a"])
    with pytest.raises(ValueError, match="nonfinite"):
        register_diagnostic(Diagnostic(key="nonfinite", name="x", title="x",
                                       statistic=lambda r: 0.0, threshold_field="x",
                                       direction=ABOVE, describe=lambda v, t: "", meaning="",
                                       advice="", section=lambda r: [], default_threshold=1.0))
    with pytest.raises(ValueError, match="partial audit computes"):
        register_diagnostic(Diagnostic(key="f", name="x", title="x", statistic=lambda r: 0.0,
                                       threshold_field="x", direction=ABOVE,
                                       describe=lambda v, t: "", meaning="", advice="",
                                       section=lambda r: [], partial=PARTIAL_BOUND,
                                       default_threshold=1.0))
    with pytest.raises(ValueError, match="paper's four"):
        unregister_diagnostic("b")


def test_an_audit_column_placed_after_itself_is_refused_not_dropped_from_the_table():
    from fa_nb_utils.diagnostics import AuditColumn, audit_order
    kw = dict(name="x", title="x", statistic=lambda r: 0.0, threshold_field="x", direction=ABOVE,
              describe=lambda v, t: "", meaning="", advice="", section=lambda r: [],
              default_threshold=1.0)
    with pytest.raises(ValueError, match="leads back to itself"):
        register_diagnostic(Diagnostic(key="y", audit=AuditColumn("y", "y", after="y"), **kw))
    register_diagnostic(Diagnostic(key="y", audit=AuditColumn("y", "y", after="e"), **kw))
    try:
        order = audit_order()
        assert order.index("y") == order.index("e") + 1     # right behind (e)
    finally:
        unregister_diagnostic("y")
    assert "y" not in DIAGNOSTICS
