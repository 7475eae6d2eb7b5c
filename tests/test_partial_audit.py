"""Partial audit from incomplete logs (SPEC §6): (a) only bounded, (b)/(c) not measured, (d) exact."""
import json
import math

import numpy as np
import pytest

from fa_nb_utils.partial_audit import geometric_mean, partial_audit
from fa_nb_utils.report import NAME_A, NAME_D

H0 = 9.0
KW = dict(h0_norm=H0, h0_source="median ||h_0|| of the same model (test)", num_blocks=4,
          grad_layer=2, grad_scale="gradient of the batch-mean CE over 128 samples")


def row(seed, acc, growths, g_k=1e-6):
    """A seed whose L blocks grew by `growths` (so h_L = h_0 * prod(growths))."""
    return {"seed": seed, "acc": acc, "h_L": H0 * float(np.prod(growths)), "g_k": g_k}


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
    with pytest.raises(ValueError, match="lacks h_L"):
        partial_audit([{"seed": 1, "acc": 0.5}], 0.349, **KW)
    assert math.isfinite(partial_audit([row(1, 0.5, (2.0,) * 4)], 0.349, **KW).seeds[0].growth_bound)
