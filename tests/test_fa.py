"""Feedback Alignment against independent computations written out here.

- Paper form: a_L is autograd's per-sample dCE/dh_L (one sample at a time, float64) and
  a_k = B_k a_{k+1} with the rule's *saved* feedback.
- Lillicrap's backward form with the feedback set to the forward weights' transposes is BP: the
  credits equal the exact per-sample gradients and one step's parameter gradients equal BP's.
- One forward per step, every parameter updated, frozen blocks untouched; options, buffers, seeds;
  and a short run through the real trainer learns a 3-class blob set.
"""
import copy

import pytest
import torch
import torch.nn.functional as F

from fa_nb_utils.data import DeviceData
from fa_nb_utils.model import ResidualMLP
from fa_nb_utils.rules import RULES, build_rule
from fa_nb_utils.config import TrainConfig
from fa_nb_utils.trainer import train

D, L, C, IN = 32, 3, 10, 48
FORMS = ["paper", "backward"]


def make_model(seed=0, num_blocks=L, **kw):
    model = ResidualMLP(IN, D, C, num_blocks, seed=seed, **kw)
    # Make the net non-trivial so that every block's backward matters (W2 starts at 0.01 scale).
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for b in model.blocks:
            b.fc2.weight.normal_(0, 0.3, generator=g)
            b.ln.weight.uniform_(0.5, 1.5, generator=g)  # a non-trivial LN gain is part of J_LN
    return model


def batch(n=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, IN, generator=g), torch.randint(0, C, (n,), generator=g)


def per_sample_bp(model, x, y):
    """dCE_i/dh_k for every sample i and layer k, one sample at a time in float64."""
    ref = copy.deepcopy(model).double().eval()
    out = []
    for i in range(len(y)):
        logits, hiddens = ref(x[i:i + 1].double(), return_hidden=True)
        grads = torch.autograd.grad(F.cross_entropy(logits, y[i:i + 1]), hiddens)
        out.append([g[0] for g in grads])
    return out


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def test_paper_form_top_credit_is_exact_and_feedback_carries_it_down():
    model = make_model()
    x, y = batch()
    rule = build_rule("fa", model, {}, torch.Generator().manual_seed(3))
    a = rule.credits(model, x, y)
    assert len(a) == L + 1
    B = rule.feedback
    assert B.shape == (L, D, D) and not B.requires_grad
    for i, grads in enumerate(per_sample_bp(model, x, y)):
        err = rel(a[L][i], grads[L])
        assert err < 1e-5, f"sample {i}: a_L relative error {err:.1e}"
    for k in range(L):
        torch.testing.assert_close(a[k], a[k + 1] @ B[k].T)  # a_k = B_k a_{k+1}, per sample
    # randn/sqrt(d): |B a| ~ |a| on average, so the credit neither grows nor shrinks with depth
    ratio = (a[0].norm(dim=-1) / a[L].norm(dim=-1)).mean().item()
    assert 0.4 < ratio < 2.5


def test_paper_form_without_blocks_is_the_exact_gradient_at_h0():
    model = make_model(num_blocks=0)
    x, y = batch()
    rule = build_rule("fa", model, {}, torch.Generator().manual_seed(3))
    a = rule.credits(model, x, y)
    assert len(a) == 1
    for i, grads in enumerate(per_sample_bp(model, x, y)):
        assert rel(a[0][i], grads[0]) < 1e-5
    rule.step_loss(model, x, y).loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def set_feedback_to_forward_weights(rule, model):
    with torch.no_grad():
        for l, b in enumerate(model.blocks):
            rule.feedback_w1[l].copy_(b.fc1.weight.T)  # R1_l stands for W1_l^T
            rule.feedback_w2[l].copy_(b.fc2.weight.T)  # R2_l stands for W2_l^T


@pytest.mark.parametrize("residual", [True, False])
def test_backward_form_with_forward_weights_is_bp(residual):
    model = make_model(residual=residual)
    x, y = batch()
    rule = build_rule("fa", model, {"form": "backward"}, torch.Generator().manual_seed(3))
    assert rule.feedback_w1.shape == rule.feedback_w2.shape == (L, D, D)
    set_feedback_to_forward_weights(rule, model)

    a = rule.credits(model, x, y)
    for i, grads in enumerate(per_sample_bp(model, x, y)):
        for k in range(L + 1):
            err = rel(a[k][i], grads[k])
            assert err < 1e-5, f"sample {i}, layer {k}: relative error {err:.1e}"

    # ... and so is one step's update: every parameter's gradient equals BP's.
    bp = copy.deepcopy(model)
    F.cross_entropy(bp(x), y).backward()
    rule.step_loss(model, x, y).loss.backward()
    for (name, p), q in zip(model.named_parameters(), bp.parameters()):
        err = rel(p.grad, q.grad)
        assert err < 1e-5, f"{name}: relative error {err:.1e}"


def test_backward_form_random_feedback_differs_from_bp_but_keeps_the_skip():
    """With random R the credits are not BP's, but a_l still contains a_{l+1} (the skip)."""
    model = make_model()
    x, y = batch()
    rule = build_rule("fa", model, {"form": "backward"}, torch.Generator().manual_seed(3))
    a = rule.credits(model, x, y)
    g = per_sample_bp(model, x, y)
    assert rel(a[L][0], g[0][L]) < 1e-5
    assert rel(a[0][0], g[0][0]) > 1e-2
    # Zero R2 kills the branch path: a_l = a_{l+1} exactly.
    rule.feedback_w2.zero_()
    a = rule.credits(model, x, y)
    for k in range(L):
        torch.testing.assert_close(a[k], a[L])


@pytest.mark.parametrize("form", FORMS)
def test_one_forward_per_step_every_parameter_updated_frozen_blocks_untouched(form):
    model = make_model()
    rule = build_rule("fa", model, {"form": form}, torch.Generator())
    calls = []
    for b in model.blocks:
        b.register_forward_hook(lambda *args: calls.append(1))
    x, y = batch()
    out = rule.step_loss(model, x, y, penalty_lambda=1e-2)
    out.loss.backward()
    assert len(calls) == L
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert torch.equal(out.logits, model(x).detach()) and not out.logits.requires_grad

    frozen = make_model()
    frozen.blocks.requires_grad_(False)
    rule = build_rule("fa", frozen, {"form": form}, torch.Generator())
    rule.step_loss(frozen, x, y, frozen_blocks=True).loss.backward()
    assert all(p.grad is None for p in frozen.blocks.parameters())
    assert frozen.embed.weight.grad is not None and frozen.out_head.weight.grad is not None
    assert frozen.out_ln.weight.grad is not None


@pytest.mark.parametrize("form", FORMS)
def test_credits_leave_model_mode_and_grads_alone(form):
    model = make_model().train()
    rule = build_rule("fa", model, {"form": form}, torch.Generator())
    x, y = batch()
    with torch.no_grad():  # callers (e.g. a Gamma evaluation) may hold grad off
        a = rule.credits(model, x, y)
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert all(not t.requires_grad for t in a)


def test_rms_option_normalises_every_credit():
    model = make_model()
    x, y = batch()
    for form in FORMS:
        rule = build_rule("fa", model, {"form": form, "credit_norm": "rms"},
                          torch.Generator().manual_seed(3))
        raw = build_rule("fa", model, {"form": form}, torch.Generator().manual_seed(3))
        for a, r in zip(rule.credits(model, x, y), raw.credits(model, x, y)):
            torch.testing.assert_close(a.pow(2).mean(-1).sqrt(), torch.ones(len(y)),
                                       rtol=1e-4, atol=0)
            cos = F.cosine_similarity(a, r, dim=-1)
            torch.testing.assert_close(cos, torch.ones(len(y)))
        assert "rms" in rule.metadata()["credit_form"]


def test_options_registry_buffers_and_seeds():
    assert "fa" in RULES
    with pytest.raises(ValueError, match="form must be 'paper' or 'backward'.*'lillicrap'"):
        TrainConfig(rule="fa", rule_options={"form": "lillicrap"})
    with pytest.raises(ValueError, match="credit_norm must be 'none' or 'rms'"):
        TrainConfig(rule="fa", rule_options={"credit_norm": "l2"})
    with pytest.raises(ValueError, match="no option.*'bogus'.*valid options: credit_norm, form"):
        TrainConfig(rule="fa", rule_options={"bogus": 1})

    model = make_model()
    for form, names in (("paper", ["feedback"]), ("backward", ["feedback_w1", "feedback_w2"])):
        rule = build_rule("fa", model, {"form": form}, torch.Generator().manual_seed(7))
        again = build_rule("fa", model, {"form": form}, torch.Generator().manual_seed(7))
        other = build_rule("fa", model, {"form": form}, torch.Generator().manual_seed(8))
        assert list(rule.parameters()) == []  # never optimised or decayed
        assert sorted(rule.state_dict()) == names
        for n in names:
            assert torch.equal(rule.state_dict()[n], again.state_dict()[n])
            assert not torch.equal(rule.state_dict()[n], other.state_dict()[n])
            assert abs(rule.state_dict()[n].pow(2).mean().item() * D - 1) < 0.15
        meta = rule.metadata()
        assert meta["options"] == {"form": form, "credit_norm": "none"}
        assert meta["credit_form"].startswith("a_L = dCE/dh_L")
        assert "sqrt(d)" in meta["feedback_init"]


@pytest.mark.parametrize("form", FORMS)
def test_fa_trains_gaussian_blobs_through_the_trainer(form):
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 20, generator=g) * 3
    y = torch.randint(0, 3, (600,), generator=g)
    x = centres[y] + torch.randn(600, 20, generator=g)
    data = DeviceData.from_tensors(x[:400], y[:400], x[400:], y[400:])
    cfg = TrainConfig(rule="fa", rule_options={"form": form}, epochs=3, seed=42, d_hidden=32,
                      num_blocks=2, eval_batches=2, eval_batch_size=100, progress=False,
                      device="cpu")
    res = train(cfg, data=data)
    acc_init, acc_end = res.trace[0]["acc_eval"], res.trace[-1]["acc_eval"]
    assert acc_end > 0.8 and acc_end > acc_init + 0.1  # learnt, not just a lucky init
    assert res.metadata["rule"]["options"]["form"] == form
