"""The backward gain (e), the two verdict modes, why (b) fired, and threshold separation.

Checked against independent computations:
- the gain per layer equals a plain per-sample float64 loop: each sample alone through a float64
  copy of the model, its unit output error written out from the softmax, one VJP per layer;
- the unit output error is exact where the softmax rounds to one-hot (closed form for logits
  (L, 0, 0)), where `softmax - onehot` loses the direction;
- a limit the maths guarantees: with no blocks and a terminal LayerNorm, scaling the stream by c
  divides the gain by c (LayerNorm's Jacobian is 1/sigma), so an exploded stream collapses it;
- ||g_l|| per sample is ||e|| times the gain, times 1/128 (the paper's scale);
- the separation interval equals a brute-force sweep over thresholds.
The long runs (BP trained until (b) fires; DFA) are in tests/test_protocol_results.py (slow).
"""
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from fa_nb_utils.diagnostics import COLLAPSED, LITTLE_ERROR, default_stop_keys
from fa_nb_utils.measures import PAPER_GRAD_BATCH, layer_stats, unit_output_errors
from fa_nb_utils.model import ResidualMLP
from fa_nb_utils.monitor import Monitor, replay_trace
from fa_nb_utils.protocol import diagnose
from fa_nb_utils.report import DiagnosticReport, DiagnosticThresholds
from fa_nb_utils.separation import threshold_separation


def _batches(n=48, dim=20, classes=5, seed=0, sizes=(16, 16, 16)):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, dim, generator=g), torch.randint(0, classes, (n,), generator=g)
    out, start = [], 0
    for s in sizes:
        out.append((x[start:start + s], y[start:start + s]))
        start += s
    return out


def _model(**kw):
    return ResidualMLP(20, 16, 5, 3, seed=1, **kw)


def test_gain_equals_a_plain_per_sample_float64_loop():
    model = _model()
    with torch.no_grad():  # a trained-looking network: larger weights, sharper logits
        for p in model.parameters():
            p.mul_(3.0)
    x = torch.cat([b[0] for b in _batches()])
    y = torch.cat([b[1] for b in _batches()])
    stats = layer_stats(model, x, y)
    ref = ResidualMLP(20, 16, 5, 3, seed=1).double()
    ref.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    ref.eval()
    per = [[] for _ in stats.backward_gains]
    errs = []
    for i in range(x.shape[0]):
        logits, hs = ref(x[i:i + 1].double(), return_hidden=True)
        p = logits.softmax(-1)[0].detach()
        e = p - F.one_hot(y[i], 5).double()
        errs.append(float(e.norm()))
        u = e / e.norm()
        for l, h in enumerate(hs):
            (g,) = torch.autograd.grad(logits[0] @ u, h, retain_graph=True)
            per[l].append(float(g.norm()))
    for l in range(len(per)):
        assert stats.backward_gains[l] == pytest.approx(float(np.median(per[l])), rel=1e-5)
        np.testing.assert_allclose(stats.per_sample_gain[l], per[l], rtol=1e-5)
    assert stats.error_norm == pytest.approx(float(np.median(errs)), rel=1e-6)
    # the BP gradient per sample is ||e|| x the gain, on the paper's scale. Only to 1e-3: the
    # float32 CE backward forms p_y - 1, which cancels for confident samples (measured: 1.3e-4
    # relative error on one sample here, while the gain above agrees with float64 to 1e-5)
    for l in range(len(per)):
        np.testing.assert_allclose(stats.per_sample_g[l],
                                   np.array(errs) * np.array(per[l]) / PAPER_GRAD_BATCH, rtol=1e-3)


@pytest.mark.parametrize("big", [60.0, 800.0])
def test_unit_error_is_exact_where_softmax_rounds_to_one_hot(big):
    """Logits (big, 0, 0), label 0: e is proportional to (-2, 1, 1) exactly; naive softmax -
    onehot gives e_y = 0 in float64 (and 0 everywhere at 800)."""
    z = torch.tensor([[big, 0.0, 0.0]])
    y = torch.tensor([0])
    u, norm = unit_output_errors(z, y)
    np.testing.assert_allclose(u[0].numpy(), np.array([-2.0, 1.0, 1.0]) / math.sqrt(6), rtol=1e-15)
    p = math.exp(-big) / (1 + 2 * math.exp(-big))   # each wrong class's probability
    assert float(norm[0]) == pytest.approx(p * math.sqrt(6), rel=1e-12, abs=1e-320)
    naive = z.double().softmax(-1) - F.one_hot(y, 3).double()
    assert float(naive[0, 0]) == 0.0                  # the direction the naive form loses


def test_unit_error_matches_softmax_minus_onehot_on_ordinary_logits():
    g = torch.Generator().manual_seed(3)
    z, y = torch.randn(64, 10, generator=g) * 3, torch.randint(0, 10, (64,), generator=g)
    u, norm = unit_output_errors(z, y)
    e = z.double().softmax(-1) - F.one_hot(y, 10).double()
    np.testing.assert_allclose(norm.numpy(), e.norm(dim=1).numpy(), rtol=1e-12)
    np.testing.assert_allclose(u.numpy(), (e / e.norm(dim=1, keepdim=True)).numpy(), atol=1e-14)
    with pytest.raises(ValueError, match="C >= 2"):
        unit_output_errors(torch.zeros(4, 1), torch.zeros(4, dtype=torch.long))


def test_scaling_the_stream_divides_the_gain_through_the_terminal_layernorm():
    """No blocks: h_0 = embed(x) feeds the terminal LayerNorm. Scaling embed by c scales h_0 by c
    and LayerNorm's output not at all, so the logits stay and the gain falls by c (up to eps)."""
    model = ResidualMLP(20, 16, 5, 0, seed=2)
    x = torch.cat([b[0] for b in _batches()])
    y = torch.cat([b[1] for b in _batches()])
    before = layer_stats(model, x, y)
    c = 1e3
    with torch.no_grad():
        model.embed.weight.mul_(c)
        model.embed.bias.mul_(c)
    after = layer_stats(model, x, y)
    torch.testing.assert_close(after.logits, before.logits, rtol=1e-4, atol=1e-4)
    assert after.backward_gains[0] == pytest.approx(before.backward_gains[0] / c, rel=1e-3)
    assert after.error_norm == pytest.approx(before.error_norm, rel=1e-4)


def test_the_report_shows_the_gain_both_verdicts_and_why_b_fired():
    model = _model()
    report = diagnose(model, _batches())
    assert len(report.backward_gains) == 4 and report.output_error_norm > 0
    assert report.verdicts == {"paper": report.verdict, "robust": report.verdict_for("robust")}
    text = str(report)
    assert "(e) Backward gain" in text and "gain_3:" in text and "robust mode would say" in text
    d = report.to_dict()
    assert d["mode"] == "paper" and set(d["verdicts"]) == {"paper", "robust"}
    assert len(d["backward_gains"]) == 4 and d["b_cause"] is None
    # a floor above any gradient fires (b); a tiny gain floor says there was little error left
    t = DiagnosticThresholds(g_norm_floor=1.0, backward_gain_floor=1e-12)
    little = diagnose(model, _batches(), thresholds=t)
    assert little.fired["b"] and not little.fired["e"] and little.b_cause == LITTLE_ERROR
    assert little.verdict_for("paper").startswith("needs walk-back")
    assert little.verdict_for("robust") == "trustworthy"
    assert "little error left to propagate (backward gain" in little.messages["b"]
    # a gain floor above the gain: the backward pass collapsed, both verdicts walk it back
    t = DiagnosticThresholds(g_norm_floor=1.0, backward_gain_floor=1e3)
    collapsed = diagnose(model, _batches(), thresholds=t, mode="robust")
    assert collapsed.b_cause == COLLAPSED and collapsed.fired["e"]
    assert collapsed.verdict == collapsed.verdict_for("robust") != "trustworthy"
    assert "[not counted in the robust verdict]" in str(collapsed)   # (b)'s FLAG line
    back = DiagnosticReport.from_json(collapsed.to_json())
    assert back.mode == "robust" and back.verdicts == collapsed.verdicts


def test_bad_modes_and_thresholds_are_refused():
    with pytest.raises(ValueError, match="mode must be 'paper'"):
        diagnose(_model(), _batches(), mode="strict")
    with pytest.raises(ValueError, match="mode must be 'paper'"):
        Monitor(mode="Robust")
    with pytest.raises(ValueError, match="backward_gain_floor must be a positive gain"):
        DiagnosticThresholds(backward_gain_floor=0.0)
    with pytest.raises(ValueError, match="backward_gain_floor"):
        DiagnosticThresholds(backward_gain_floor=float("nan"))


def test_a_version_1_report_reads_with_no_robust_verdict():
    d = diagnose(_model(), _batches()).to_dict()
    old = {k: v for k, v in d.items() if k not in ("backward_gains", "output_error_norm", "mode",
                                                     "verdicts", "b_cause")}
    old["schema_version"] = 1
    old["thresholds"] = {k: v for k, v in d["thresholds"].items() if k != "backward_gain_floor"}
    back = DiagnosticReport.from_dict(old)
    assert back.verdict == d["verdict"] and back.fired["e"] is None
    assert back.verdict_for("robust") is None
    back.mode = "robust"
    with pytest.raises(ValueError, match="no backward gains"):
        back.verdict


def test_monitor_and_replay_in_robust_mode():
    assert default_stop_keys("paper") == ("a", "b", "nonfinite")
    assert default_stop_keys("robust") == ("a", "e", "nonfinite")
    monitor = Monitor(mode="robust", thresholds=DiagnosticThresholds(backward_gain_floor=1e3))
    assert monitor.stop_on == ("a", "e", "nonfinite") and monitor.settings()["mode"] == "robust"
    stop = monitor.check(_model(), _batches(), epoch=0, acc_eval=0.3)
    assert stop is not None and stop.diagnostic == "e" and stop.name == COLLAPSED
    assert monitor.records[0]["report"]["mode"] == "robust"
    # replay: (e) from the trace's backward_gains; traces without them say so
    trace = [{"epoch": e, "acc_eval": 0.5, "residual_norms": [10.0, 12.0],
              "bp_grad_norms": [1e-4, 1e-4],
              "backward_gains": [0.3, 0.3 / 10 ** e]} for e in range(5)]
    rep = replay_trace(trace, mode="robust")
    assert rep["e"].status == "fired" and rep["e"].first_epoch == 3   # 3e-4 < 1e-3
    assert rep["a|e"].first_epoch == 3 and rep["b"].status == "never fired"
    assert replay_trace(trace)["a|b"].status == "never fired"
    old = [{k: v for k, v in e.items() if k != "backward_gains"} for e in trace]
    row = replay_trace(old)["e"]
    assert row.status == "not available" and "backward_gains" in row.detail


def test_cli_diagnose_takes_a_mode(tmp_path):
    from fa_nb_utils.config import TrainConfig
    from fa_nb_utils.trainer import train
    cfg = TrainConfig(rule="bp", epochs=1, data="synthetic", synthetic_n_train=200,
                      synthetic_n_test=1280, d_hidden=16, num_blocks=2, progress=False,
                      data_root=str(tmp_path / "data"), device="cpu")
    train(cfg, runs_root=tmp_path / "runs")
    ckpt = next((tmp_path / "runs").glob("*/checkpoint.pt"))
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-m", "fa_nb_utils.diagnose", "--checkpoint",
                           str(ckpt), "--mode", "robust", "--out", str(out), "--no-gamma"],
                          capture_output=True, text=True, env={**__import__("os").environ,
                                                               "FA_EVAL_DATA": str(tmp_path / "data")})
    assert proc.returncode == 0, proc.stderr
    assert "Mode: robust" in proc.stdout and "paper mode would say" in proc.stdout
    saved = DiagnosticReport.from_json(out.read_text())
    assert saved.mode == "robust" and saved.backward_gains
    bad = subprocess.run([sys.executable, "-m", "fa_nb_utils.diagnose", "--checkpoint",
                          str(ckpt), "--mode", "lenient"], capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


# ---------------------------------------------------------------------------------------------
# Threshold separation
# ---------------------------------------------------------------------------------------------
def _report(growth, g, stab, margin, gain):
    return DiagnosticReport(method_name="m", notes="", residual_norms=[1.0, float(growth)],
                            bp_grad_norms=[float(g)], stability_layer=0,
                            cross_batch_stability=float(stab), headline_acc=0.5,
                            frozen_baseline_acc=0.5 - margin / 100, backward_gains=[float(gain)])


def test_the_papers_own_a_interval():
    """Healthy max growth 11x, failing min 694x: every threshold in [11, 694) keeps the verdicts,
    2.8 decades wide, the default 50 inside."""
    healthy = [_report(g, 1e-4, 0.0, 5.0, 0.3) for g in (1.2, 11.0)]
    failing = [_report(g, 4.2e-9, 0.0, 5.0, 1e-5) for g in (694.0, 5e3)]
    sep = threshold_separation(healthy, failing)
    a = sep["a"]
    assert a.interval == (11.0, 694.0) and a.closed == "[)"
    assert a.width_decades == pytest.approx(math.log10(694 / 11))
    assert a.default_inside and a.margins == pytest.approx((math.log10(50 / 11), math.log10(694 / 50)))
    b = sep["b"]
    assert b.interval == (4.2e-9, 1e-4) and b.default_inside
    # (c) and (d) do not separate these runs: their statistics are the same for both
    assert sep["c"].interval is None and "healthy run" in sep["c"].note
    assert sep["d"].interval is None
    assert "separating thresholds" in sep.table()[0] and "[11" in str(sep)
    assert sep.to_dict()["rows"]["a"]["interval"] == [11.0, 694.0]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.floats(1.01, 1e4), st.floats(1e-10, 1e-2), st.floats(-0.9, 0.9),
                          st.floats(-50, 50), st.floats(1e-7, 1.0)), min_size=1, max_size=5),
       st.lists(st.tuples(st.floats(1.01, 1e4), st.floats(1e-10, 1e-2), st.floats(-0.9, 0.9),
                          st.floats(-50, 50), st.floats(1e-7, 1.0)), min_size=1, max_size=5))
def test_separation_equals_a_brute_force_sweep(h, f):
    """For every candidate threshold (each statistic, a hair either side, midpoints), the
    verdicts the reports give at it (report.fired, independently of separation.py) are the
    intended ones exactly when the interval contains it."""
    healthy, failing = [_report(*v) for v in h], [_report(*v) for v in f]
    sep = threshold_separation(healthy, failing)
    fields = {"a": "h_norm_explosion_ratio", "b": "g_norm_floor", "c": "stability_drift_ceiling",
              "d": "frozen_acc_margin_pp", "e": "backward_gain_floor"}
    valid = {"a": lambda t: t > 1, "b": lambda t: t > 0, "c": lambda t: -1 <= t < 1,
             "d": lambda t: -100 <= t <= 100, "e": lambda t: t > 0}
    for key, field in fields.items():
        values = [r.statistics[key] for r in healthy + failing]
        cands = set(values)
        for v in values:
            cands |= {math.nextafter(v, math.inf), math.nextafter(v, -math.inf)}
        for u in values:
            for v in values:
                cands.add((u + v) / 2)
        for t in cands:
            if not valid[key](t):
                continue
            th = DiagnosticThresholds(**{field: t})
            ok = all(not _with(r, th).fired[key] for r in healthy) and \
                all(_with(r, th).fired[key] for r in failing)
            assert ok == sep[key].contains(t), (key, t, sep[key])


def _with(report, thresholds):
    import dataclasses
    return dataclasses.replace(report, thresholds=thresholds)


def test_separation_refuses_what_is_not_a_list_of_reports():
    r = _report(2.0, 1e-4, 0.0, 5.0, 0.3)
    with pytest.raises(TypeError, match="wrap it in a list"):
        threshold_separation(r, [r])
    with pytest.raises(TypeError, match=r"failing\[1\] is a dict"):
        threshold_separation([r], [r, {"verdict": "x"}])
    with pytest.raises(ValueError, match="unknown diagnostic key"):
        threshold_separation([r], {"q": [r]})
    with pytest.raises(ValueError, match="at least one"):
        threshold_separation([], [])
    # a skipped or non-finite statistic is left out and counted
    nan = _report(2.0, float("nan"), 0.0, 5.0, 0.3)
    sep = threshold_separation([r, nan], [_report(900.0, 1e-9, 0.5, 0.0, 1e-5)])
    assert sep["b"].excluded == 1 and sep["b"].n_healthy == 1


def test_bad_input_of_b_never_passes_the_robust_verdict_and_has_no_cause():
    """(b)'s bad input (a non-finite gradient, or non-finite logits) fires (e) too: the robust
    verdict, which does not count (b), must not read it as trustworthy; b_cause says nothing."""
    for kw in ({"bp_grad_norms": [float("nan"), 1e-3, 1e-3]},
               {"bp_grad_norms": [1e-3] * 3, "input_reasons": {"b": "non-finite logits"}}):
        r = DiagnosticReport(method_name="m", notes="", residual_norms=[1.0, 1.1, 1.2],
                             stability_layer=0, cross_batch_stability=0.0, headline_acc=0.5,
                             frozen_baseline_acc=None, backward_gains=[0.3, 0.3, 0.3],
                             **{"input_reasons": {}, **kw})
        assert r.fired["b"] and r.fired["e"], r.reasons
        assert r.verdict_for("robust") != "trustworthy" and r.b_cause is None
    nan_gain = DiagnosticReport(method_name="m", notes="", residual_norms=[1.0, 1.1],
                                bp_grad_norms=[1e-9, 1e-9], stability_layer=0,
                                cross_batch_stability=0.0, headline_acc=0.5,
                                frozen_baseline_acc=None, backward_gains=[float("nan"), 1.0])
    assert nan_gain.fired["e"] and nan_gain.b_cause is None
    assert "little error" not in nan_gain.messages["b"]


def test_replay_in_robust_mode_says_when_the_gain_was_never_measured():
    trace = [{"epoch": e, "acc_eval": 0.5, "residual_norms": [10.0, 12.0],
              "bp_grad_norms": [1e-4, 1e-4]} for e in range(3)]
    row = replay_trace(trace, mode="robust")["a|e"]
    assert row.status == "never fired" and "(e) not available" in row.detail
    with pytest.raises(ValueError, match="output_error_norm must be a number"):
        replay_trace([{**trace[0], "output_error_norm": "big"}])


def test_a_saved_stop_this_monitor_would_not_make_is_trained_on(tmp_path):
    """A run a paper-mode monitor stopped on (b) is not finished work for a robust-mode monitor,
    which does not stop on (b): it trains on to its budget."""
    from fa_nb_utils.config import TrainConfig
    from fa_nb_utils.trainer import train
    cfg = TrainConfig(rule="bp", epochs=2, data="synthetic", synthetic_n_train=200,
                      synthetic_n_test=1280, d_hidden=16, num_blocks=2, progress=False,
                      data_root=str(tmp_path / "data"), device="cpu")
    floor_everything = DiagnosticThresholds(g_norm_floor=1.0)
    first = train(cfg, runs_root=tmp_path / "runs", monitor=Monitor(thresholds=floor_everything))
    assert first.stop_reason is not None and first.stop_reason.diagnostic == "b"
    again = train(cfg, runs_root=tmp_path / "runs", accept_stopped=True,
                  monitor=Monitor(thresholds=floor_everything, mode="robust"))
    assert again.stop_reason is None and again.trace[-1]["epoch"] == 2
