"""Γ (alignment.py) against independent computations written out here.

- BP's credit is the exact gradient: Γ_k = 1 at every layer.
- DFA and FA: Γ_k equals a plain per-sample loop (float64 copy of the model, one autograd
  gradient per sample, credits rebuilt by hand from the rule's saved feedback), to 1e-6.
- An exploded stream puts the true gradient under the floor: every Γ_k is null with the reason,
  the headline is null, and the field's standard verdict is not "trustworthy".
- Pitfall 2: at ||g|| ~ 1e-10 the library cosine is ~100x smaller than the true one.
- Pitfall 4: Γ needs the rule's saved state; a missing one is N/A, fresh matrices read differently.
- A user's credit_fn: scaled exact gradients give 1; wrong count/shape is refused; zero credits
  are excluded and counted. Strict JSON; the report carries Γ.
"""
import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from fa_nb_utils.alignment import (GammaUnavailable, gamma, per_sample_cosine,
                                   standard_verdict)
from fa_nb_utils.protocol import diagnose
from fa_nb_utils.model import ResidualMLP
from fa_nb_utils.rules import bp_credits, build_rule

D, L, C, IN = 32, 3, 10, 48


def make_model(seed=0):
    return ResidualMLP(IN, D, C, L, seed=seed)


def make_batches(n_batches=2, n=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, IN, generator=g), torch.randint(0, C, (n,), generator=g))
            for _ in range(n_batches)]


def plain_per_sample_grads(model, batches):
    """dCE_i/dh_k for each sample alone, through a float64 copy: list over samples of [g_0..g_L]."""
    ref = copy.deepcopy(model).double().eval()
    out = []
    for x, y in batches:
        for i in range(len(y)):
            logits, hiddens = ref(x[i:i + 1].double(), return_hidden=True)
            grads = torch.autograd.grad(F.cross_entropy(logits, y[i:i + 1]), hiddens)
            out.append((logits.detach()[0], [g[0] for g in grads]))
    return out


def plain_cos(u, v):
    u, v = u.double().flatten(), v.double().flatten()
    return float(u @ v / (u.norm() * v.norm()))


def test_bp_gamma_is_one_at_every_layer():
    model = make_model()
    res = gamma(model, make_batches(), rule=build_rule("bp", model, {}, torch.Generator()))
    assert len(res.per_layer) == L + 1
    for k, v in enumerate(res.per_layer):
        assert v == pytest.approx(1.0, abs=1e-12), f"layer {k}"
    assert res.headline == pytest.approx(1.0, abs=1e-12)
    assert res.aggregation == "mean over layers"
    assert res.field_style == pytest.approx(1.0, abs=1e-9)  # healthy scale: the clamp is inert
    assert res.excluded_per_layer == [0] * (L + 1) and res.n_samples == 32
    assert res.per_layer_reasons == {}


@pytest.mark.parametrize("name", ["dfa", "fa"])
def test_gamma_equals_a_plain_per_sample_loop(name):
    model = make_model(seed=3)
    batches = make_batches()
    rule = build_rule(name, model, {}, torch.Generator().manual_seed(7))
    res = gamma(model, batches, rule=rule)

    B = rule.feedback.double()
    sums = [0.0] * (L + 1)
    samples = plain_per_sample_grads(model, batches)
    labels = torch.cat([y for _, y in batches])
    for (logits, g), y in zip(samples, labels):
        if name == "dfa":
            e = logits.softmax(-1) - F.one_hot(y, C).double()
            a = [e @ B[0].T] + [e @ B[l].T for l in range(L)]  # a_0 = a_1 = e B_0^T
        else:
            a = [None] * L + [g[L]]  # FA (paper form): a_L exact, a_k = B_k a_{k+1}
            for k in reversed(range(L)):
                a[k] = B[k] @ a[k + 1]
        for k in range(L + 1):
            sums[k] += plain_cos(a[k], g[k])
    expected = [s / len(samples) for s in sums]
    for k in range(L + 1):
        assert res.per_layer[k] == pytest.approx(expected[k], abs=1e-6), f"layer {k}"
    assert res.headline == pytest.approx(sum(expected) / (L + 1), abs=1e-6)
    assert res.source == f"rule '{name}' with its saved feedback"
    if name == "fa":
        assert res.per_layer[L] == pytest.approx(1.0, abs=1e-9)  # FA's top credit is exact


def test_gamma_is_null_when_the_true_gradient_is_at_the_floor():
    model = make_model()
    with torch.no_grad():  # explode the stream: the terminal LN's gradient shrinks as 1/||h||
        model.embed.weight.mul_(1e9)
        model.embed.bias.mul_(1e9)
    rule = build_rule("dfa", model, {}, torch.Generator().manual_seed(7))
    res = gamma(model, make_batches(), rule=rule)
    assert max(res.bp_grad_norms) < 1e-7
    assert res.per_layer == [None] * (L + 1)
    for k in range(L + 1):
        assert "the true gradient is at the numerical floor, Γ is a cosine against noise" \
            in res.per_layer_reasons[str(k)]
    assert res.headline is None and "numerical floor" in res.headline_reason
    assert all(v is not None for v in res.per_layer_raw)  # what would have been printed
    verdict = standard_verdict(0.9, res.headline, C)
    assert verdict.startswith("not trustworthy: ") and "Γ undefined" in verdict
    assert standard_verdict(0.9, res, C).startswith("not trustworthy: Γ undefined (")
    d = res.to_dict()
    assert json.loads(json.dumps(d, allow_nan=False))["per_layer"] == [None] * (L + 1)


def test_library_cosine_shrinks_at_the_floor_the_hand_written_one_does_not():
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(8, 64, generator=gen, dtype=torch.float64)
    u = u / u.norm(dim=1, keepdim=True)
    noise = torch.randn(8, 64, generator=gen, dtype=torch.float64)
    noise = noise - (noise * u).sum(1, keepdim=True) * u           # orthogonal to u
    noise = noise / noise.norm(dim=1, keepdim=True)
    a = u + 0.4843 * noise                                         # true cosine 1/sqrt(1+0.4843^2)
    g = 1e-10 * u
    true_cos = 1 / math.sqrt(1 + 0.4843 ** 2)
    assert true_cos == pytest.approx(0.9, abs=1e-3)
    hand, excluded = per_sample_cosine(a, g)
    assert not excluded.any()
    torch.testing.assert_close(hand, torch.full((8,), true_cos, dtype=torch.float64))
    lib = F.cosine_similarity(a, g, dim=-1)
    ratio = hand / lib
    assert ((ratio > 50) & (ratio < 200)).all(), ratio  # ~100x: the eps=1e-8 clamp on ||g||


def test_user_credit_fn_scaled_gradients_wrong_shapes_and_zero_samples():
    model = make_model()
    batches = make_batches()
    scales = [0.5, 3.0, 1e-3, 7.0]
    res = gamma(model, batches,
                credit_fn=lambda x, y: [s * a for s, a in zip(scales, bp_credits(model, x, y))])
    assert res.source == "credit_fn"
    assert res.per_layer == pytest.approx([1.0] * (L + 1), abs=1e-12)

    with pytest.raises(ValueError, match=r"returned 3 credits; expected a list of 4 tensors"):
        gamma(model, batches, credit_fn=lambda x, y: bp_credits(model, x, y)[:3])
    with pytest.raises(ValueError, match=r"a_2 has shape \(32, 5\) but h_2 has \(32, 32\)"):
        gamma(model, batches, credit_fn=lambda x, y: [
            a if k != 2 else a[:, :5] for k, a in enumerate(bp_credits(model, x, y))])
    with pytest.raises(TypeError, match="one tensor of shape"):
        gamma(model, batches, credit_fn=lambda x, y: torch.stack(bp_credits(model, x, y)))

    def zero_some(x, y):
        credits = bp_credits(model, x, y)
        credits[1][:5] = 0      # 5 samples without a direction at layer 1
        credits[3][-2:] = 0     # 2 at layer 3
        return credits
    res = gamma(model, batches, credit_fn=zero_some)
    assert res.excluded_per_layer == [0, 5, 0, 2]
    assert res.per_layer == pytest.approx([1.0] * (L + 1), abs=1e-12)  # not dragged to 0

    res = gamma(model, batches, credit_fn=lambda x, y: [torch.zeros_like(a)
                                                         for a in bp_credits(model, x, y)])
    assert res.per_layer == [None] * (L + 1) and res.excluded_per_layer == [32] * (L + 1)
    assert "every sample excluded" in res.per_layer_reasons["0"]
    assert res.field_style == 0.0  # the library calls a zero vector's cosine 0 and averages it in


def test_saved_state_is_required_and_fresh_matrices_read_differently():
    torch.manual_seed(0)
    model = make_model(seed=4)
    rule = build_rule("dfa", model, {}, torch.Generator().manual_seed(11))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x, y = torch.cat([b[0] for b in make_batches(4, 32, seed=9)]), \
        torch.cat([b[1] for b in make_batches(4, 32, seed=9)])
    for _ in range(40):
        opt.zero_grad()
        rule.step_loss(model, x, y).loss.backward()
        opt.step()
    batches = make_batches()
    saved = gamma(model, batches, rule=rule)
    fresh = gamma(model, batches,
                  rule=build_rule("dfa", model, {}, torch.Generator().manual_seed(12345)))
    assert saved.per_layer[0] > fresh.per_layer[0] + 0.1  # alignment with the matrices it used

    with pytest.raises(ValueError, match="exactly one credit source.*got neither"):
        gamma(model, batches)
    with pytest.raises(ValueError, match="got both"):
        gamma(model, batches, rule=rule, credit_fn=lambda x, y: None)
    with pytest.raises(TypeError, match="pitfall 4"):
        gamma(model, batches, rule="dfa")
    broken = copy.deepcopy(rule)
    broken.feedback = None
    with pytest.raises(GammaUnavailable, match="Γ N/A: rule 'dfa': state 'feedback' is missing"):
        gamma(model, batches, rule=broken)
    broken = copy.deepcopy(rule)
    broken.feedback.zero_()
    with pytest.raises(GammaUnavailable, match="all zeros"):
        gamma(model, batches, rule=broken)
    other = build_rule("dfa", ResidualMLP(IN, 2 * D, C, L, seed=0), {}, torch.Generator())
    with pytest.raises(GammaUnavailable, match="another run or architecture"):
        gamma(model, batches, rule=other)


def test_model_mode_params_and_grads_are_left_alone():
    model = make_model().train()
    model.blocks[1].eval()  # a deliberately eval-mode part keeps its own mode
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.25)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def noisy_credit_fn(x, y):  # a user's method that calls backward on the model
        assert not model.training  # credits are taken in eval mode
        logits = model(x)
        F.cross_entropy(logits, y).backward()
        return bp_credits(model, x, y)
    for kwargs in ({"credit_fn": noisy_credit_fn},
                   {"rule": build_rule("fa", model, {}, torch.Generator())}):
        gamma(model, make_batches(), **kwargs)
        assert model.training and not model.blocks[1].training and model.blocks[0].training
        for n, p in model.named_parameters():
            assert torch.equal(p, before[n]) and torch.equal(p.grad, torch.full_like(p, 0.25)), n


def test_to_dict_is_strict_json_and_has_the_report_keys():
    model = make_model()
    res = gamma(model, make_batches(), rule=build_rule("dfa", model, {}, torch.Generator()))
    d = json.loads(json.dumps(res.to_dict(), allow_nan=False))
    for key in ("per_layer", "per_layer_reasons", "headline", "headline_reason", "aggregation",
                "field_style", "excluded_per_layer", "n_samples", "grad_floor", "source"):
        assert key in d
    assert d["headline"] == pytest.approx(sum(d["per_layer"]) / (L + 1))
    assert d["grad_floor"] == 1e-7 and d["n_samples"] == 32
    assert d["alternatives"]["layer 0 alone"] == d["per_layer"][0]


def test_standard_verdict():
    assert standard_verdict(0.31, 0.05, 10) == "trustworthy"
    assert standard_verdict(0.10, 0.05, 10) == \
        "not trustworthy: accuracy at or below chance (0.1000 <= 0.1000)"
    v = standard_verdict(0.05, -0.01, 10)
    assert v.startswith("not trustworthy: accuracy at or below chance") and "Γ <= 0" in v
    assert standard_verdict(0.9, None, 10).startswith("not trustworthy: Γ undefined (")


def test_diagnose_attaches_gamma_to_the_report():
    model = make_model()
    rule = build_rule("dfa", model, {}, torch.Generator().manual_seed(7))
    batches = make_batches()
    report = diagnose(model, batches, rule=rule, method_name="DFA")
    assert report.alignment["per_layer"] == pytest.approx(gamma(model, batches,
                                                                rule=rule).per_layer)
    text = str(report)
    assert "Γ_0:" in text and "headline Γ (mean over layers)" in text
    alignment = json.loads(report.to_json())["alignment"]
    assert alignment["source"] == "rule 'dfa' with its saved feedback"
