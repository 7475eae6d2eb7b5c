"""The rules' maths against independent computations.

- BP's credit equals autograd's per-sample gradient, computed here one sample at a time in float64.
- The fused DFA step (one forward, one backward, one AdamW) equals the literal loop the original
  worked example wrote DFA as (no-grad forward, then one AdamW and one backward per block, embed
  and head), with persistent per-block optimizers, from one identical state (weights, feedback,
  non-zero AdamW moments), for k = 4 steps.
"""
import copy

import pytest
import torch
import torch.nn.functional as F

from fa_nb_utils.model import ResidualMLP
from fa_nb_utils.rules import RULES, build_rule
from fa_nb_utils.config import TrainConfig

D, L, C, IN = 32, 3, 10, 48


def make_model(seed=0, **kw):
    return ResidualMLP(IN, D, C, L, seed=seed, **kw)


def batch(n=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, IN, generator=g), torch.randint(0, C, (n,), generator=g)


def test_registry_lists_the_foundation_rules():
    assert {"bp", "dfa"} <= set(RULES)


def test_bp_credit_is_the_per_sample_autograd_gradient():
    model = make_model()
    # Make the net non-trivial so that every layer's gradient matters.
    with torch.no_grad():
        for b in model.blocks:
            b.fc2.weight.normal_(0, 0.3)
    x, y = batch()
    rule = build_rule("bp", model, {}, torch.Generator().manual_seed(0))
    credits = rule.credits(model, x, y)

    ref = copy.deepcopy(model).double().eval()
    for i in range(len(y)):
        logits, hiddens = ref(x[i:i + 1].double(), return_hidden=True)
        grads = torch.autograd.grad(F.cross_entropy(logits, y[i:i + 1]), hiddens)
        for k, g in enumerate(grads):
            err = (credits[k][i].double() - g[0]).norm() / g[0].norm()
            assert err < 1e-5, f"sample {i}, layer {k}: relative error {err:.1e}"
    assert len(credits) == L + 1


def test_bp_credit_leaves_model_mode_and_grads_alone():
    model = make_model().train()
    x, y = batch()
    rule = build_rule("bp", model, {}, torch.Generator())
    rule.credits(model, x, y)
    assert model.training
    assert all(p.grad is None for p in model.parameters())


def test_dfa_credit_pairing_and_default_scale():
    model = make_model()
    x, y = batch()
    rule = build_rule("dfa", model, {}, torch.Generator().manual_seed(3))
    a = rule.credits(model, x, y)
    e = model(x).softmax(-1) - F.one_hot(y, C).float()
    B = rule.feedback
    assert B.shape == (L, D, C) and not B.requires_grad
    torch.testing.assert_close(a[0], e @ B[0].T)          # a_0 = a_1 = e B_0^T: shared matrix
    torch.testing.assert_close(a[1], e @ B[0].T)
    for l in range(L):
        torch.testing.assert_close(a[l + 1], e @ B[l].T)
    # randn/sqrt(C) feedback: E||e B^T||^2 = ||e||^2 * d / C; unnormalised by default
    assert torch.allclose(B.pow(2).mean(), torch.tensor(1.0 / C), rtol=0.15)
    rms = build_rule("dfa", model, {"credit_norm": "rms"}, torch.Generator().manual_seed(3))
    a_rms = rms.credits(model, x, y)
    torch.testing.assert_close(a_rms[2].pow(2).mean(-1).sqrt(), torch.ones(len(y)), rtol=1e-4, atol=0)


def _literal_per_module_step(model, B, opts, x, y, rms):
    """The original worked example's DFA step, written out: no-grad forward, then each module
    with its own AdamW."""
    embed_opt, head_opt, block_opts = opts
    norm = (lambda a: a / ((a ** 2).mean(-1, keepdim=True).sqrt() + 1e-6)) if rms else (lambda a: a)
    with torch.no_grad():
        logits, hiddens = model(x, return_hidden=True)
        e = logits.softmax(-1)
        e[torch.arange(len(y)), y] -= 1
    head_opt.zero_grad()
    F.cross_entropy(model.out_head(model.out_ln(hiddens[-1].detach())), y).backward()
    head_opt.step()
    for l in range(model.num_blocks):
        a = norm(e @ B[l].T)
        f = model.blocks[l](hiddens[l].detach())
        block_opts[l].zero_grad()
        (f * a).sum(-1).mean().backward()
        block_opts[l].step()
    a0 = norm(e @ B[0].T)
    embed_opt.zero_grad()
    (model.embed(x) * a0).sum(-1).mean().backward()
    embed_opt.step()


@pytest.mark.parametrize("credit_norm", ["none", "rms"])
def test_fused_dfa_equals_literal_per_block_dfa(credit_norm):
    torch.manual_seed(0)
    fused = make_model(seed=5)
    rule = build_rule("dfa", fused, {"credit_norm": credit_norm}, torch.Generator().manual_seed(9))
    opt = torch.optim.AdamW(fused.parameters(), lr=1e-3, weight_decay=0.01)
    batches = [batch(32, seed=s) for s in range(6)]

    def fused_step(x, y):
        out = rule.step_loss(fused, x, y)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    fused_step(*batches[0])  # warm-up: the shared start state has non-zero AdamW moments

    literal = copy.deepcopy(fused)
    start = {n: p.detach().clone() for n, p in fused.named_parameters()}
    make = lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    embed_opt = make(literal.embed.parameters())
    head_opt = make(list(literal.out_head.parameters()) + list(literal.out_ln.parameters()))
    block_opts = [make(b.parameters()) for b in literal.blocks]
    by_name = dict(fused.named_parameters())
    for o in (embed_opt, head_opt, *block_opts):
        for p in o.param_groups[0]["params"]:
            name = next(n for n, q in literal.named_parameters() if q is p)
            o.state[p] = copy.deepcopy(opt.state[by_name[name]])

    for x, y in batches[1:5]:
        fused_step(x, y)
        _literal_per_module_step(literal, rule.feedback, (embed_opt, head_opt, block_opts), x, y,
                              rms=credit_norm == "rms")
    changed = 0
    for (name, p), q in zip(fused.named_parameters(), literal.parameters()):
        rel = (p - q).norm() / q.norm().clamp_min(1e-12)
        assert rel <= 1e-6, f"{name}: relative difference {rel:.2e}"
        changed += int(not torch.equal(p, start[name]))
    assert changed == len(by_name)


def test_dfa_step_uses_one_forward_and_one_backward():
    """No recomputed forward: each block runs exactly once per fused step."""
    model = make_model()
    rule = build_rule("dfa", model, {}, torch.Generator())
    calls = []
    for b in model.blocks:
        b.register_forward_hook(lambda *a: calls.append(1))
    x, y = batch()
    out = rule.step_loss(model, x, y)
    out.loss.backward()
    assert len(calls) == L
    assert all(p.grad is not None for p in model.parameters())


def test_frozen_blocks_get_no_update_from_dfa():
    model = make_model()
    model.blocks.requires_grad_(False)
    rule = build_rule("dfa", model, {}, torch.Generator())
    x, y = batch()
    rule.step_loss(model, x, y, frozen_blocks=True).loss.backward()
    assert all(p.grad is None for p in model.blocks.parameters())
    assert model.embed.weight.grad is not None and model.out_head.weight.grad is not None


def test_unknown_rule_and_option_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="registered rules: .*bp.*dfa"):
        TrainConfig(rule="nope")
    with pytest.raises(ValueError, match="no option.*'bogus'.*valid options: credit_norm"):
        TrainConfig(rule="dfa", rule_options={"bogus": 1})
    with pytest.raises(ValueError, match="credit_norm must be 'none' or 'rms'"):
        TrainConfig(rule="dfa", rule_options={"credit_norm": "l2"})
    with pytest.raises(ValueError, match="rule 'bp' has no option"):
        TrainConfig(rule="bp", rule_options={"credit_norm": "rms"})
