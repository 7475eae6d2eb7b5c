"""The verdict logic as properties (hypothesis), for arbitrary finite and non-finite inputs.

The expected firing of each diagnostic is written out here from docs/protocol.md, independently of
report.py: (a) max per-block growth of the residual norms > ratio; (b) the deepest BP gradient
norm < floor; (c) stability > ceiling; (d) 100 * (headline - frozen), rounded to 1e-9, < margin,
and skipped (None, never "passed") without a baseline. Every test is strict, and a NaN, inf, zero
or missing input fires its diagnostic (it never passes). The verdict is "trustworthy" or
"needs walk-back: " + the fired names (the original report's strings) joined by "; ", a name that
bad input fired followed by " (could not be computed: <reason>)"; a finite ratio that overflows
to inf is a real explosion (the name alone).
(e), the backward gain: the deepest gain < its floor, skipped when no gains were measured; a
non-finite gain, and (b)'s bad input, fire it; it counts in the robust verdict only, where (b)
does not count.
"""
import json
import math

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fa_nb_utils.report import DiagnosticReport, DiagnosticThresholds

# the original report's names, in its order (a), (b), (c), (d)
NAMES = {"a": "residual stream exploded",
         "b": "BP grad at numerical floor",
         "c": "BP grad direction is drift-dominated",
         "d": "deep blocks fail to beat frozen-random baseline",
         "e": "backward pass collapsed"}

NONFINITE = st.sampled_from([math.nan, math.inf, -math.inf])
norm = st.one_of(st.floats(min_value=0.0, allow_nan=False, allow_infinity=False), NONFINITE,
                 st.just(0.0), st.floats(min_value=1e-3, max_value=1e6))
norms = st.lists(norm, min_size=0, max_size=6)
stability = st.one_of(st.floats(min_value=-1.0, max_value=1.0), NONFINITE)
acc = st.one_of(st.floats(min_value=0.0, max_value=1.0), NONFINITE)
frozen = st.one_of(st.none(), acc)
thresholds = st.builds(
    DiagnosticThresholds,
    g_norm_floor=st.floats(min_value=1e-30, max_value=1e3),
    h_norm_explosion_ratio=st.floats(min_value=1.0, max_value=1e6, exclude_min=True),
    stability_drift_ceiling=st.floats(min_value=-1.0, max_value=1.0, exclude_max=True),
    frozen_acc_margin_pp=st.floats(min_value=-100.0, max_value=100.0),
    backward_gain_floor=st.floats(min_value=1e-30, max_value=1e3),
)


def finite(v):
    return math.isfinite(v)


def expected_fired(h, g, s, head, froz, t):
    """The verdict rules of docs/protocol.md, written out independently."""
    if len(h) < 2 or not all(finite(v) for v in h) or any(v <= 0 for v in h):
        a = True
    else:
        a = max(b / x for x, b in zip(h, h[1:])) > t.h_norm_explosion_ratio
    b = (not g) or not all(finite(v) for v in g) or g[-1] < t.g_norm_floor
    c = (not finite(s)) or s > t.stability_drift_ceiling
    if froz is None:
        d = None if finite(head) else True  # no baseline: skipped, unless the headline is NaN/inf
    elif not (finite(head) and finite(froz)):
        d = True
    else:
        d = round(100 * (head - froz), 9) < t.frozen_acc_margin_pp
    return {"a": a, "b": b, "c": c, "d": d}


def expected_uncomputed(h, g, s, head, froz, gains=()):
    """Which diagnostics fire on bad input (their verdict entry says it could not be computed)."""
    b = (not g) or not all(finite(v) for v in g)
    return {"a": len(h) < 2 or not all(finite(v) for v in h) or any(v <= 0 for v in h),
            "b": b, "c": not finite(s),
            "d": not finite(head) or (froz is not None and not finite(froz)),
            "e": bool(gains) and (b or not all(finite(v) for v in gains))}


def expected_verdict(report, keys, fired, uncomputed):
    names = [NAMES[k] + (f" (could not be computed: {report.reasons[k]})" if uncomputed[k] else "")
             for k in keys if fired[k]]
    return "trustworthy" if not names else "needs walk-back: " + "; ".join(names)


def expected_e(gains, g, t):
    if not gains:
        return None  # not measured: skipped
    b_bad_input = (not g) or not all(finite(v) for v in g)  # (b)'s bad input fires (e) too
    return b_bad_input or not all(finite(v) for v in gains) or gains[-1] < t.backward_gain_floor


def make(h, g, s, head, froz, t, gains=(), mode="paper"):
    return DiagnosticReport(method_name="m", notes="", residual_norms=list(h),
                            bp_grad_norms=list(g), stability_layer=0, cross_batch_stability=s,
                            headline_acc=head, frozen_baseline_acc=froz, thresholds=t,
                            backward_gains=list(gains), mode=mode)


@settings(max_examples=400, deadline=None)
@given(norms, norms, stability, acc, frozen, thresholds)
def test_verdict_lists_exactly_the_fired_names(h, g, s, head, froz, t):
    report = make(h, g, s, head, froz, t)
    want = {**expected_fired(h, g, s, head, froz, t), "e": None}
    assert report.fired == want
    bad = expected_uncomputed(h, g, s, head, froz)
    names = [NAMES[k] for k in "abcd" if want[k]]
    if names:
        assert report.verdict.startswith("needs walk-back: ")
        assert report.verdict == expected_verdict(report, "abcd", want, bad)
        if not any(bad[k] for k in "abcd" if want[k]):  # real firings: the paper's strings
            assert report.verdict == "needs walk-back: " + "; ".join(names)
        assert not report.trustworthy
    else:
        assert report.verdict == "trustworthy" and report.trustworthy
    assert f"VERDICT: {report.verdict}" in str(report)


@settings(max_examples=300, deadline=None)
@given(norms, norms, stability, acc, frozen, thresholds)
def test_non_finite_inputs_never_pass_and_say_why(h, g, s, head, froz, t):
    report = make(h, g, s, head, froz, t)
    if any(not finite(v) for v in h) or len(h) < 2 or any(v == 0 for v in h):
        assert report.fired["a"] and "a" in report.reasons
    if any(not finite(v) for v in g) or not g:
        assert report.fired["b"] and "b" in report.reasons
    if not finite(s):
        assert report.fired["c"] and "c" in report.reasons
    if froz is not None and not (finite(head) and finite(froz)):
        assert report.fired["d"] is True and "d" in report.reasons
    status = report.to_dict()["diagnostics"]
    for k, why in report.reasons.items():
        assert status[k] == "fired", (k, why)


@settings(max_examples=200, deadline=None)
@given(norms, norms, stability, acc, thresholds)
def test_absent_baseline_is_skipped_never_passed(h, g, s, head, t):
    assume(finite(head))  # a NaN or inf headline accuracy fires (d) with its reason instead
    report = make(h, g, s, head, None, t)
    assert report.frozen_baseline_undercut is None
    d = report.to_dict()
    assert d["diagnostics"]["d"] == "skipped" and d["fired"]["d"] is None
    assert NAMES["d"] not in report.verdict and "d" not in report.reasons


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(min_value=1e-3, max_value=1e3), min_size=2, max_size=6),
       st.lists(st.floats(min_value=1e-12, max_value=1.0), min_size=1, max_size=6),
       st.floats(min_value=-1.0, max_value=0.999), st.floats(min_value=0.0, max_value=1.0),
       st.floats(min_value=0.0, max_value=1.0))
def test_a_value_exactly_at_its_threshold_does_not_fire(h, g, s, head, froz):
    """Thresholds set to the statistic itself: strict tests, so nothing fires."""
    growth = max(b / a for a, b in zip(h, h[1:]))
    assume(growth > 1.0)
    t = DiagnosticThresholds(g_norm_floor=g[-1], h_norm_explosion_ratio=growth,
                             stability_drift_ceiling=s,
                             frozen_acc_margin_pp=round(100 * (head - froz), 9))
    report = make(h, g, s, head, froz, t)
    assert report.fired == {"a": False, "b": False, "c": False, "d": False, "e": None}
    assert report.verdict == "trustworthy"
    # and a hair past each one fires it (where the hair still gives valid thresholds)
    up = lambda v: math.nextafter(v, math.inf)
    down = lambda v: math.nextafter(v, -math.inf)
    fired = make(h, g, s, head, froz, DiagnosticThresholds(g_norm_floor=up(g[-1]))).fired
    assert fired["b"]
    if down(growth) > 1:
        assert make(h, g, s, head, froz,
                    DiagnosticThresholds(h_norm_explosion_ratio=down(growth))).fired["a"]
    if s > -1:
        assert make(h, g, s, head, froz,
                    DiagnosticThresholds(stability_drift_ceiling=down(s))).fired["c"]
    if t.frozen_acc_margin_pp < 100:
        assert make(h, g, s, head, froz, DiagnosticThresholds(
            frozen_acc_margin_pp=up(t.frozen_acc_margin_pp))).fired["d"]


@settings(max_examples=300, deadline=None)
@given(norms, norms, stability, acc, frozen, thresholds)
def test_strict_json_round_trip_keeps_the_verdict(h, g, s, head, froz, t):
    report = make(h, g, s, head, froz, t)
    text = json.dumps(report.to_dict(), allow_nan=False)      # never NaN/Infinity in the text
    back = DiagnosticReport.from_dict(json.loads(text))
    assert back.verdict == report.verdict
    assert back.fired == report.fired
    for x, y in zip(back.residual_norms + back.bp_grad_norms, report.residual_norms
                    + report.bp_grad_norms):
        assert x == y or (not finite(x) and not finite(y))


@given(st.floats(min_value=0.0, max_value=1.0), st.integers(min_value=-300, max_value=300))
def test_margin_is_rounded_to_1e9_pp(froz, k):
    """0.359 vs 0.339 is exactly 2.0 pp: float noise below 1e-9 pp never decides (d)."""
    head = froz + 0.02 + k * 1e-17
    assume(0.0 <= head <= 1.0)
    report = make([1.0, 1.0], [1e-3], 0.0, head, froz, DiagnosticThresholds())
    assert report.frozen_margin_pp == round(100 * (head - froz), 9)
    if abs(100 * (head - froz) - 2.0) < 1e-10:
        assert report.frozen_baseline_undercut is False


def test_seed_001_example_values():
    t = DiagnosticThresholds()
    assert make([1.0, 50.0], [1e-7], 0.30, 0.359, 0.339, t).verdict == "trustworthy"
    assert make([1.0, 50.000001], [9.99e-8], 0.3001, 0.358, 0.339, t).verdict == (
        "needs walk-back: residual stream exploded; BP grad at numerical floor; "
        "BP grad direction is drift-dominated; deep blocks fail to beat frozen-random baseline")
    # per-block growth, not max/h_0: 60x over two blocks (sqrt(60) each) does not fire
    assert not make([1.0, 60 ** 0.5, 60.0], [1e-3], 0.0, 0.5, None, t).fired["a"]
    # a huge finite ratio that overflows to inf is a real explosion: it fires, says why, and the
    # verdict is the paper's string (no "could not be computed")
    r = make([1e-300, 1e300], [1e-3], 0.0, 0.5, None, t)
    assert r.fired["a"] and "a" not in r.reasons and "overflow" in r.messages["a"]
    assert r.verdict == "needs walk-back: residual stream exploded"
    # NaN at a non-deepest layer's gradient: (b) fires with the layer named
    r = make([1.0, 1.0], [math.nan, 1e-3], 0.0, 0.5, None, t)
    assert r.fired["b"] and "[0]" in r.reasons["b"]


@settings(max_examples=400, deadline=None)
@given(norms, norms, stability, acc, frozen, thresholds, norms)
def test_both_verdicts_follow_their_modes(h, g, s, head, froz, t, gains):
    """Paper: (a)-(d), (e) shown but not counted. Robust: (a), (c), (d), (e); (b) not counted;
    no robust verdict without measured gains."""
    want = {**expected_fired(h, g, s, head, froz, t), "e": expected_e(gains, g, t)}
    bad = expected_uncomputed(h, g, s, head, froz, gains)
    for mode, keys in (("paper", "abcd"), ("robust", "acde")):
        report = make(h, g, s, head, froz, t, gains, mode)
        assert report.fired == want
        expect = expected_verdict(report, keys, want, bad)
        if mode == "robust" and not gains:
            assert report.verdict_for("robust") is None
            continue
        assert report.verdict == expect == report.verdicts[mode]
        back = DiagnosticReport.from_dict(json.loads(report.to_json()))
        assert back.mode == mode and back.fired == report.fired and back.verdict == expect
