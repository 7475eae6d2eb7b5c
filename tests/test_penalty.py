"""The residual penalty (mean form: lambda times the mean over batch and features of f_l(h_l)^2)
and the frozen-random-blocks baseline, for every registered rule (float64, so that a rule whose
credits are large, EP's -eps/beta, is compared to rounding, not to fp32 noise)."""

import pytest
import torch

from fa_nb_utils.model import ResidualMLP
from fa_nb_utils.rules import RULES, build_rule

D, L, C, IN = 16, 3, 5, 20


def setup(rule_name, seed=0):
    model = ResidualMLP(IN, D, C, L, seed=seed).double()
    with torch.no_grad():
        for b in model.blocks:
            b.fc2.weight.normal_(0, 0.2)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(12, IN, generator=g).double(), torch.randint(0, C, (12,), generator=g)
    return model, build_rule(rule_name, model, {}, torch.Generator().manual_seed(2)).double(), x, y


def grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
            for n, p in model.named_parameters()}


def hand_penalty(model, x, detach_inputs):
    """lam-free penalty written out: sum over blocks of mean over batch AND features of f_l^2."""
    _, hs = model(x, return_hidden=True)
    total = 0.0
    for blk, h in zip(model.blocks, hs):
        f = blk(h.detach() if detach_inputs else h)
        total = total + (f ** 2).sum() / f.numel()
    return total


@pytest.mark.parametrize("rule_name", sorted(RULES))
def test_penalty_adds_exactly_lambda_times_mean_square_branch(rule_name):
    lam = 0.37
    model, rule, x, y = setup(rule_name)
    base = grads(model, rule.step_loss(model, x, y).loss)
    with_pen = grads(model, rule.step_loss(model, x, y, penalty_lambda=lam).loss)
    # BP differentiates the penalty through the whole graph; local rules only into each block
    pen = grads(model, lam * hand_penalty(model, x, detach_inputs=rule_name != "bp"))
    for n in base:
        torch.testing.assert_close(with_pen[n] - base[n], pen[n], rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("rule_name", sorted(RULES))
def test_frozen_baseline_trains_embed_and_head_only(rule_name):
    model, rule, x, y = setup(rule_name)
    model.blocks.requires_grad_(False)
    rule.step_loss(model, x, y, penalty_lambda=0.1, frozen_blocks=True).loss.backward()
    assert all(p.grad is None for p in model.blocks.parameters())
    for module in (model.embed, model.out_ln, model.out_head):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_the_penalty_plan_covers_the_profiles_penalty_rules():
    """The smoke profile's penalty audit trains the paper's penalty rules (BP, DFA, State Bridge);
    the paper profile, every registered rule; an explicit list overrides either."""
    from fa_nb_utils.paper.penalty import penalty_plan
    from fa_nb_utils.paper.profiles import get_profile

    smoke, paper = get_profile("smoke"), get_profile("paper")
    assert [r for r, _ in penalty_plan(smoke)] == ["bp", "dfa", "state_bridge"]
    assert sorted(r for r, _ in penalty_plan(paper)) == sorted(RULES)
    assert dict(penalty_plan(smoke))["dfa"] == smoke.lambdas
    assert [r for r, _ in penalty_plan(smoke, ["ep", "bp"])] == ["bp", "ep"]
