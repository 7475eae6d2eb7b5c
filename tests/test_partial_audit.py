"""Partial audit from incomplete logs (docs/protocol.md): (a) only bounded, (b)/(c) not measured, (d) exact."""
import json
import math

import numpy as np
import pytest

from fa_nb_utils.partial_audit import geometric_mean, partial_audit
from fa_nb_utils.report import NAME_A, NAME_D

H0 = 9.0
KW = dict(h0_source="each run's own final median ||h_0|| (test)", num_blocks=4,
          grad_layer=2, grad_scale="gradient of the batch-mean CE over 128 samples")


def row(seed, acc, growths, g_k=1e-6, h_0=H0):
    """A seed whose L blocks grew by `growths` (so h_L = h_0 * prod(growths)); the row carries its
    own ||h_0|| (same model, same epoch as h_L)."""
    return {"seed": seed, "acc": acc, "h_0": h_0, "h_L": h_0 * float(np.prod(growths)),
            "g_k": g_k}


def test_geometric_mean_is_only_a_lower_bound_so_a_is_undetermined_not_passed():
    growths = (60.0, 60.0, 0.5, 0.5)       # two blocks explode, two shrink
    assert geometric_mean(growths) == pytest.approx(900 ** 0.25) and max(growths) > 50
    res = partial_audit([row(42, 0.60, growths)], 0.349, **KW)
    (s,) = res.seeds
    assert s.growth_bound == pytest.approx(900 ** 0.25, rel=1e-12)   # ~5.48, far under 50
    assert s.a_status == "undetermined" and res.status["a"] == "undetermined"
    assert s.d_status == "passes"                   # margin 25.1 pp
    assert res.verdict == "incomplete: (a) undetermined; (b), (c) not measured"
    text = str(res)
    assert "UNDETERMINED" in text and "pass" not in text.split("(b)")[0].split("(a)")[1].lower()
    assert KW["h0_source"] in text and "trustworthy" not in text
    assert res.to_dict()["a"]["h0_source"] == KW["h0_source"]


def test_a_bound_above_threshold_fires():
    res = partial_audit([row(1, 0.60, (51.0,) * 4), row(2, 0.60, (2.0,) * 4)], 0.349, **KW)
    assert [s.a_status for s in res.seeds] == ["fires", "undetermined"]
    assert res.seeds[0].growth_bound == pytest.approx(51.0)
    assert res.status["a"] == "fires" and res.to_dict()["a"]["fires_on"] == "1/2 seeds"
    assert res.verdict == f"needs walk-back: {NAME_A}"
    assert "(b), (c) not measured" in str(res)     # still said after a walk-back


def test_d_is_exact_per_seed_with_sample_std():
    accs, frozen = [0.362, 0.366, 0.361], 0.349
    res = partial_audit([row(s, a, (2.0,) * 4) for s, a in zip((42, 123, 456), accs)], frozen, **KW)
    margins = [round(100 * (a - frozen), 9) for a in accs]
    assert [s.margin_pp for s in res.seeds] == margins
    assert all(s.d_status == "fires" for s in res.seeds)          # all under 2 pp
    m, sd = res.margin_mean_std
    assert m == pytest.approx(np.mean(margins)) and sd == pytest.approx(np.std(margins, ddof=1))
    am, asd = res.acc_mean_std
    assert am == pytest.approx(np.mean(accs)) and asd == pytest.approx(np.std(accs, ddof=1))
    d = res.to_dict()
    assert d["std_ddof"] == 1 and d["d"]["fires_on"] == "3/3 seeds"
    assert res.verdict == f"needs walk-back: {NAME_D}"
    passing = partial_audit([row(1, 0.40, (2.0,) * 4)], frozen, **KW)
    assert passing.seeds[0].d_status == "passes" and passing.acc_mean_std[1] is None


def test_b_and_c_are_not_measured_and_the_proxy_is_declared():
    res = partial_audit([row(1, 0.6, (2.0,) * 4, g_k=1e-12)], 0.349, **KW)
    assert res.status["b"] == res.status["c"] == "not measured"
    d = res.to_dict()
    assert d["b"]["grad_layer"] == 2 and d["b"]["grad_scale"] == KW["grad_scale"]
    assert KW["grad_scale"] in str(res) and "||g_2||" in str(res)


@pytest.mark.parametrize("rows, frozen", [
    ([row(1, 0.9, (1.1,) * 4)], 0.349),            # (d) passes, (a) undetermined
    ([row(1, 0.9, (1.1,) * 4)], None),             # (d) skipped
    ([row(1, 0.3, (1.1,) * 4)], 0.349),            # (d) fires
    ([row(1, 0.9, (1e3,) * 4)], 0.349),            # (a) fires
])
def test_the_verdict_is_never_trustworthy(rows, frozen):
    res = partial_audit(rows, frozen, **KW)
    assert "trustworthy" not in res.verdict
    assert res.verdict.startswith(("needs walk-back: ", "incomplete: "))
    json.dumps(res.to_dict(), allow_nan=False)
    if frozen is None:
        assert res.status["d"] == "skipped" and "(d) skipped" in res.verdict


def test_non_finite_inputs_fire_with_a_reason_and_bad_arguments_are_refused():
    res = partial_audit([{"seed": 1, "acc": float("nan"), "h_L": float("inf"), "g_k": None}],
                        0.349, **KW)
    (s,) = res.seeds
    assert s.a_status == "fires" and "inf" in s.a_reason
    assert s.d_status == "fires" and "nan" in s.d_reason and s.margin_pp is None
    d = json.loads(res.to_json())
    assert d["seeds"][0]["acc"] is None and d["seeds"][0]["h_L"] is None
    with pytest.raises(ValueError, match="percentage"):
        partial_audit([row(1, 36.2, (2.0,) * 4)], 0.349, **KW)
    with pytest.raises(ValueError, match="h0_source must say"):
        partial_audit([row(1, 0.5, (2.0,) * 4)], 0.349, **{**KW, "h0_source": ""})
    with pytest.raises(ValueError, match="grad_layer must be an int in 0..4"):
        partial_audit([row(1, 0.5, (2.0,) * 4)], 0.349, **{**KW, "grad_layer": 5})
    with pytest.raises(ValueError, match="h0_norm must be a finite norm > 0"):
        partial_audit([row(1, 0.5, (2.0,) * 4)], 0.349, **{**KW, "h0_norm": 0.0})
    with pytest.raises(ValueError, match="h0_norm must be a finite norm > 0"):
        partial_audit([row(1, 0.5, (2.0,) * 4)], 0.349, **{**KW, "h0_norm": float("nan")})
    with pytest.raises(ValueError, match="lacks h_L"):
        partial_audit([{"seed": 1, "acc": 0.5}], 0.349, **KW)
    assert math.isfinite(partial_audit([row(1, 0.5, (2.0,) * 4)], 0.349, **KW).seeds[0].growth_bound)


# ---------------------------------------------------------------------------------------------
# ||h_0||: the same model at the same epoch as ||h_L||, per seed
# ---------------------------------------------------------------------------------------------
SEED_003_STYLE = dict(h0_norm=9.0, h0_source="observed at epoch 0", num_blocks=4, grad_layer=2,
                      grad_scale="per-batch mean CE, batch 128")


def test_each_seed_bound_uses_its_own_h0():
    # the same ||h_L|| = 1e8 over two runs whose embeddings ended at ||h_0|| = 1 and 100
    rows = [{"seed": 1, "acc": 0.6, "h_0": 1.0, "h_L": 1e8, "g_k": 1e-6},
            {"seed": 2, "acc": 0.6, "h_0": 100.0, "h_L": 1e8, "g_k": 1e-6}]
    res = partial_audit(rows, 0.349, **KW)
    s1, s2 = res.seeds
    assert s1.growth_bound == pytest.approx(100.0, rel=1e-12)      # (1e8 / 1)^(1/4)
    assert s2.growth_bound == pytest.approx(1e6 ** 0.25, rel=1e-12)  # (1e8 / 100)^(1/4) ~ 31.6
    assert (s1.a_status, s2.a_status) == ("fires", "undetermined")
    assert (s1.h_0, s2.h_0) == (1.0, 100.0)
    # an h_0 averaged over the seeds (50.5) would have given ~37.5 to both, firing on neither
    assert growth_lower_bound_of(1e8, 50.5) < 50
    d = res.to_dict()
    assert [s["h_0"] for s in d["seeds"]] == [1.0, 100.0]
    assert d["a"]["fires_on"] == "1/2 seeds" and d["a"]["h0_norm"] is None
    text = str(res)
    assert "s1: fires" in text and "s2: undetermined" in text and "own" in text


def growth_lower_bound_of(h_L, h_0, L=4):
    return (h_L / h_0) ** (1 / L)


def test_an_init_h0_with_a_final_h_L_never_fires_even_for_a_huge_ratio():
    rows = [{"seed": 42, "acc": 0.60, "h_L": 9e12, "g_k": 1e-6},     # h_L / h_0 = 1e12
            {"seed": 43, "acc": 0.60, "h_L": 20.0, "g_k": 1e-6}]
    res = partial_audit(rows, 0.349, **SEED_003_STYLE)
    assert [s.a_status for s in res.seeds] == ["undetermined", "undetermined"]
    assert all(s.growth_bound is None for s in res.seeds)
    assert res.status["a"] == "undetermined"
    assert res.verdict == "incomplete: (a) undetermined; (b), (c) not measured"
    reason = res.seeds[0].a_reason
    assert "observed at epoch 0" in reason and "not" in reason and "same epoch" in reason
    assert "h_0" in reason                        # the fix: give each row its own h_0
    text = str(res)
    assert reason in text and "FIRES" not in text and "PASSES" not in text.split("(b)")[0]
    d = res.to_dict()
    assert d["a"]["h0_same_epoch"] is False and d["a"]["h0_norm"] == 9.0
    assert "same epoch" in d["a"]["reason"]
    # declared the same model and epoch, the same number bounds the growth and fires
    same = partial_audit(rows, 0.349, **{**SEED_003_STYLE, "h0_same_epoch": True,
                                         "h0_source": "median ||h_0|| of the final model"})
    assert [s.a_status for s in same.seeds] == ["fires", "undetermined"]
    assert same.seeds[0].growth_bound == pytest.approx(1e3)


def test_a_row_h0_takes_precedence_and_a_missing_one_leaves_a_undetermined():
    rows = [{"seed": 1, "acc": 0.6, "h_0": 1.0, "h_L": 1e8},
            {"seed": 2, "acc": 0.6, "h_L": 1e8}]
    res = partial_audit(rows, 0.349, **SEED_003_STYLE)
    assert res.seeds[0].a_status == "fires" and res.seeds[0].growth_bound == pytest.approx(100.0)
    assert res.seeds[1].a_status == "undetermined" and res.seeds[1].growth_bound is None
    none = partial_audit([{"seed": 1, "acc": 0.6, "h_L": 1e8}], 0.349, **KW)
    (s,) = none.seeds
    assert s.a_status == "undetermined" and "no ||h_0||" in s.a_reason


def test_the_counterexample_stays_undetermined_with_its_own_h0():
    growths = (60.0, 60.0, 0.5, 0.5)
    res = partial_audit([row(7, 0.6, growths, h_0=123.0)], 0.349, **KW)
    (s,) = res.seeds
    assert s.growth_bound == pytest.approx(900 ** 0.25, rel=1e-12) and s.growth_bound < 50
    assert s.a_status == "undetermined" and max(growths) > 50
    assert "60, 60, 0.5, 0.5" in str(res)


def test_non_finite_or_zero_own_h0_fires_with_a_reason():
    for bad, word in ((float("nan"), "nan"), (float("inf"), "inf"), (0.0, "zero")):
        res = partial_audit([{"seed": 5, "acc": 0.6, "h_0": bad, "h_L": 10.0}], 0.349, **KW)
        (s,) = res.seeds
        assert s.a_status == "fires" and word in s.a_reason and "h_0" in s.a_reason
        json.dumps(res.to_dict(), allow_nan=False)


@pytest.mark.parametrize("field", ["g_k", "h_L", "h_0"])
def test_negative_norms_are_refused_with_the_seed_and_the_field(field):
    r = {"seed": 7, "acc": 0.6, "h_0": 9.0, "h_L": 90.0, "g_k": 1e-6, field: -1e-6}
    with pytest.raises(ValueError, match=rf"seed 7: {field} is -1e-06, a norm cannot be negative"):
        partial_audit([r], 0.349, **KW)


def test_bad_h0_arguments_are_refused():
    with pytest.raises(TypeError, match="seed 1: h_0 must be a number"):
        partial_audit([{"seed": 1, "acc": 0.6, "h_0": "9", "h_L": 90.0}], 0.349, **KW)
    with pytest.raises(ValueError, match="h0_same_epoch=True needs h0_norm"):
        partial_audit([row(1, 0.6, (2.0,) * 4)], 0.349, **{**KW, "h0_same_epoch": True})
    with pytest.raises(TypeError, match="h0_same_epoch must be True or False"):
        partial_audit([row(1, 0.6, (2.0,) * 4)], 0.349,
                      **{**SEED_003_STYLE, "h0_same_epoch": "yes"})
    with pytest.raises(ValueError, match="h0_norm must be a finite norm > 0"):
        partial_audit([row(1, 0.6, (2.0,) * 4)], 0.349, **{**KW, "h0_norm": -9.0})
    ok = partial_audit([row(1, 0.6, (2.0,) * 4, g_k=np.float32(1e-6))], 0.349,
                       **{**KW, "h0_norm": np.float32(9.0)})
    assert ok.seeds[0].g_k == pytest.approx(1e-6)


# ---------------------------------------------------------------------------------------------
# The traces of notebook 04 (penalty.partial_rows): each run's own final ||h_0||
# ---------------------------------------------------------------------------------------------
def fake_run(seed, h_init, h_final, acc=0.6, rule="dfa", lam=1e-2):
    from types import SimpleNamespace
    trace = [{"epoch": 0, "acc_eval": 0.1, "residual_norms": h_init,
              "bp_grad_norms": [1e-3] * len(h_init)},
             {"epoch": 5, "acc_eval": acc, "residual_norms": h_final,
              "bp_grad_norms": [1e-3, 2e-3, 3e-3, 4e-3, 5e-3]}]
    return SimpleNamespace(rule=rule, seed=seed, frozen=False, penalty_lambda=lam,
                           config=SimpleNamespace(num_blocks=len(h_init) - 1),
                           result=SimpleNamespace(trace=trace))


def test_partial_rows_take_each_runs_final_h0_from_its_trace():
    from fa_nb_utils.paper import penalty as pen
    # DFA: the embedding grows 100x during training; h_L / h_0(init) = 1e8 would "fire"
    runs = [fake_run(42, [1.0, 2.0, 3.0, 4.0, 5.0], [100.0, 1e3, 1e5, 1e7, 1e8]),
            fake_run(43, [1.0, 2.0, 3.0, 4.0, 5.0], [50.0, 60.0, 70.0, 80.0, 90.0])]
    p = pen.partial_rows(runs, 1e-2)
    assert [r["h_0"] for r in p["rows"]] == [100.0, 50.0]
    assert [r["h_L"] for r in p["rows"]] == [1e8, 90.0]
    assert [r["g_k"] for r in p["rows"]] == [3e-3, 3e-3]               # layer L // 2 = 2
    assert p["h0_norm"] is None and "final" in p["h0_source"] and "epoch 0" not in p["h0_source"]
    res = pen.partial_audit_from_traces(runs, 1e-2, 0.349)
    s42, s43 = res.seeds
    assert s42.h_0 == 100.0 and s42.growth_bound == pytest.approx(1e6 ** 0.25)  # not 100
    assert s42.a_status == "undetermined"
    assert s43.growth_bound == pytest.approx((90 / 50) ** 0.25)
    assert res.h0_norm is None and res.status["a"] == "undetermined"
    comparison = pen.compare_partial_full(res, [], 1e-2)
    assert comparison[0]["partial"] == "undetermined"
    assert "cannot decide" in comparison[0]["comparison"]
