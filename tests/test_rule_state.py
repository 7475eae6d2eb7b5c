"""A rule declares the saved state its credit depends on (`Rule.state_spec`), and Γ reads only that.

- A toy rule registered here, with a feedback buffer and an auxiliary net (an `nn.Linear`, standing
  in for a bridge) whose credit uses both, gets a Γ with no edit to alignment.py; each way of
  losing either piece (missing, deleted, empty, wrong shape, all zeros, non-finite) makes Γ N/A
  with a reason naming the rule, the state and the fix; rebuilding the rule and loading the saved
  state gives the original Γ back.
- Every registered rule declares every buffer and submodule it holds, and a freshly built rule
  passes the check.
- The declaration is recorded in `rule.metadata()` (and so in every run's metadata), as plain JSON.
"""
import json
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn

import fa_nb_utils.ep  # noqa: F401  (registers EP, so the registry checks cover it)
from fa_nb_utils.alignment import GammaUnavailable, check_rule_state, gamma
from fa_nb_utils.measures import eval_mode
from fa_nb_utils.model import ResidualMLP
from fa_nb_utils.paper.pitfalls import pitfall_missing_state
from fa_nb_utils.rules import (RULES, Rule, StateSpec, StepOutput, build_rule, local_forward,
                               local_loss, output_error, register_rule)

D, L, C, IN = 32, 3, 10, 48
TOY = "toy_bridge"


@dataclass(frozen=True)
class ToyOptions:
    scale: float = 1.0


class ToyBridge(Rule):
    """a_k = bridge(e F^T) for every k: a (d, C) feedback buffer F and an auxiliary d -> d net."""

    name = TOY
    Options = ToyOptions
    description = "toy: a learned net on top of fixed feedback"

    def __init__(self, model, options, generator):
        super().__init__(model, options, generator)
        d, c = model.d_hidden, model.num_classes
        self.register_buffer("feedback", torch.randn(d, c, generator=generator) / c ** 0.5)
        self.bridge = nn.Linear(d, d)
        with torch.no_grad():
            self.bridge.weight.copy_(torch.eye(d) + 0.3 * torch.randn(d, d, generator=generator)
                                     / d ** 0.5)
            self.bridge.bias.normal_(0.0, 0.1, generator=generator)

    def state_spec(self, model):
        with torch.device("meta"):  # a template: its state_dict shapes, nothing allocated
            template = nn.Linear(model.d_hidden, model.d_hidden)
        return [StateSpec.buffer("feedback", (model.d_hidden, model.num_classes)),
                StateSpec.module("bridge", template)]

    def _credits(self, model, e):
        a = self.bridge(e @ self.feedback.T.to(e.dtype)) * self.options.scale
        return [a.detach()] * (model.num_blocks + 1)

    def credits(self, model, x, y):
        with eval_mode(model), torch.no_grad():
            return self._credits(model, output_error(model(x), y))

    def step_loss(self, model, x, y, *, penalty_lambda=0.0, frozen_blocks=False):
        fwd = local_forward(model, x)
        with torch.no_grad():
            credits = self._credits(model, output_error(fwd.logits, y))
        loss = local_loss(fwd, y, credits, penalty_lambda=penalty_lambda,
                          frozen_blocks=frozen_blocks)
        return StepOutput(loss, fwd.logits.detach())


@pytest.fixture
def toy():
    """The toy rule, registered for the test and unregistered afterwards."""
    register_rule(ToyBridge)
    try:
        yield ToyBridge
    finally:
        RULES.pop(TOY, None)


def make_model(d=D, seed=0):
    return ResidualMLP(IN, d, C, L, seed=seed)


def make_batches(n_batches=2, n=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, IN, generator=g), torch.randint(0, C, (n,), generator=g))
            for _ in range(n_batches)]


def toy_rule(model, seed=5):
    return build_rule(TOY, model, {}, torch.Generator().manual_seed(seed))


def test_the_toy_rule_gets_a_gamma_and_a_reloaded_state_gives_it_back(toy):
    model, batches = make_model(), make_batches()
    rule = toy_rule(model)
    res = gamma(model, batches, rule=rule)
    assert len(res.per_layer) == L + 1
    assert all(isinstance(v, float) for v in res.per_layer), res.per_layer_reasons
    assert isinstance(res.headline, float) and -1.0 <= res.headline <= 1.0
    assert res.source == f"rule {TOY!r} with its saved feedback and auxiliary nets"
    # the fix the N/A messages give: rebuild the rule and load the saved state into it
    rebuilt = toy_rule(model, seed=999)
    assert gamma(model, batches, rule=rebuilt).per_layer != res.per_layer  # another draw
    rebuilt.load_state_dict(rule.state_dict())
    assert gamma(model, batches, rule=rebuilt).per_layer == res.per_layer


def _lose(rule, name, how):
    value = getattr(rule, name)
    if how == "set to None":
        setattr(rule, name, None)
    elif how == "deleted":
        delattr(rule, name)
    elif how == "empty":
        setattr(rule, name, torch.empty(0, C) if name == "feedback" else nn.Sequential())
    elif how == "wrong shape":
        setattr(rule, name, torch.randn(2 * D, C) if name == "feedback" else nn.Linear(2 * D, D))
    elif how == "all zeros":
        with torch.no_grad():
            for t in [value] if torch.is_tensor(value) else value.parameters():
                t.zero_()
    elif how == "non-finite":
        with torch.no_grad():
            (value if torch.is_tensor(value) else value.weight)[0, 0] = float("nan")


REASONS = {"set to None": "is missing", "deleted": "is missing", "empty": "is empty",
           "wrong shape": "belongs to another run or architecture",
           "all zeros": "is all zeros (never filled from the run)",
           "non-finite": "holds non-finite values"}


@pytest.mark.parametrize("how", list(REASONS))
@pytest.mark.parametrize("name", ["feedback", "bridge"])
def test_lost_state_makes_gamma_unavailable_with_the_reason(toy, name, how):
    model, batches = make_model(), make_batches()
    rule = toy_rule(model)
    _lose(rule, name, how)
    with pytest.raises(GammaUnavailable) as exc:
        gamma(model, batches, rule=rule)
    msg = str(exc.value)
    assert msg.startswith(f"Γ N/A: rule {TOY!r}: state {name!r} ")  # the rule and the state
    assert REASONS[how] in msg
    assert "load_state_dict(checkpoint['rule'])" in msg and "result.rule" in msg  # the fix


def test_a_rule_built_for_another_width_is_refused(toy):
    model = make_model()
    other = toy_rule(make_model(d=2 * D))
    with pytest.raises(GammaUnavailable, match=r"'feedback' has shape \(64, 10\) but this model "
                                               r"needs \(32, 10\)"):
        gamma(model, make_batches(), rule=other)
    other.feedback = torch.randn(D, C)  # only the net left at the wrong width
    with pytest.raises(GammaUnavailable, match=r"'bridge' has 'weight' of shape \(64, 64\) but "
                                               r"this model needs \(32, 32\).*another run"):
        gamma(model, make_batches(), rule=other)


def test_the_missing_state_pitfall_covers_auxiliary_nets(toy):
    model, batches = make_model(), make_batches()
    res = pitfall_missing_state(model, toy_rule(model), batches)
    assert res.holds
    assert res.numbers["state"] == ["feedback", "bridge"]
    assert "'feedback' is missing" in res.numbers["messages"]["missing"]
    assert "is all zeros" in res.numbers["messages"]["zeros"]


def _variants():
    for name in sorted(RULES):
        yield name, {}
        if name == "fa":
            yield name, {"form": "backward"}


def test_every_registered_rule_declares_the_state_it_holds(toy):
    model = make_model()
    variants = list(_variants())
    assert {n for n, _ in variants} >= {"bp", "dfa", "fa", "ep", TOY}
    for name, options in variants:
        rule = build_rule(name, model, options, torch.Generator().manual_seed(0))
        declared = [s.name for s in rule.state_spec(model)]
        held = {n for n, b in rule.named_buffers(recurse=False) if b is not None}
        held |= {n for n, _ in rule.named_children()}
        assert held <= set(declared), f"{name} {options}: holds {held}, declares {declared}"
        assert check_rule_state(rule, model) == declared  # a fresh rule fits its declaration


def test_metadata_records_the_declared_state(toy):
    model = make_model()
    meta = toy_rule(model).metadata()
    assert meta["state"] == [
        {"name": "feedback", "kind": "buffer", "shape": [D, C]},
        {"name": "bridge", "kind": "module", "shapes": {"weight": [D, D], "bias": [D]}},
    ]
    json.dumps(meta, allow_nan=False)
    gen = torch.Generator().manual_seed(0)
    assert build_rule("dfa", model, {}, gen).metadata()["state"] == [
        {"name": "feedback", "kind": "buffer", "shape": [L, D, C]}]
    backward = build_rule("fa", model, {"form": "backward"}, gen).metadata()["state"]
    assert [(s["name"], s["shape"]) for s in backward] == [("feedback_w1", [L, D, D]),
                                                           ("feedback_w2", [L, D, D])]
    for name in ("bp", "ep"):  # nothing saved, and the metadata says why
        meta = build_rule(name, model, {}, gen).metadata()
        assert meta["state"] == [] and meta["state_note"].startswith("none: ")


def test_a_state_spec_is_checked_when_declared():
    assert StateSpec.module("net", {"w": [3, 4]}).shapes == {"w": (3, 4)}
    with pytest.raises(ValueError, match="kind must be one of"):
        StateSpec("feedback", "matrix", shape=(2, 2))
    with pytest.raises(ValueError, match="a module has `shapes`"):
        StateSpec("net", "module", shape=(2, 2))
    with pytest.raises(ValueError, match="tuple of ints"):
        StateSpec.buffer("feedback", (2, -1))
