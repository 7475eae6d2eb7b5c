"""Equilibrium propagation (EP) on the residual MLP: credit from a nudged relaxation of the states
(docs/rules.md, "EP").

The forward pass is the minimum (E = 0) of a per-sample energy over the hidden states,

    E(h_0..h_L) = 1/2 ||h_0 - embed(x)||^2 + 1/2 sum_{l<L} ||h_{l+1} - h_l - f_l(h_l)||^2

(without the residual add the prediction is f_l(h_l)). The nudged phase takes T steps of size eta
on the states, descending E + beta * CE(y | h_L). At its minimum the prediction errors eps_k
satisfy the backward pass, so a_k = -eps_k / beta -> dCE/dh_k as beta -> 0 and T -> infinity.
`nudge="symmetric"` relaxes at +beta and -beta (Laborieux et al. 2021), cancelling the O(beta)
bias at twice the cost. The weights train with `rules.local_loss`. No saved state.
Not here: the other rules and the registry (rules.py), the optimizer loop (trainer.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .measures import eval_mode
from .rules import (Rule, StackedBlocks, StepOutput, check_choice, check_count, check_number,
                    local_forward, local_loss, register_rule)

EP_CREDITS = ("error", "state_diff")
EP_NUDGES = ("one_sided", "symmetric")


@dataclass(frozen=True)
class EPOptions:
    """EP's hyper-parameters (the paper publishes none; `docs/rules.md` says how these were chosen).

    beta: nudging strength (> 0); the credit's bias is O(beta) one-sided, O(beta^2) symmetric.
    steps: T, gradient steps of the nudged relaxation (>= 1).
    step_size: eta, the step on the states (> 0); stable for eta < 2 (1 + mu) / lambda_max, with
        lambda_max the energy's curvature, which grows as the blocks train (docs/rules.md).
    momentum: mu in [0, 1), heavy ball on the states (0: gradient descent).
    credit: "error" (-eps_k / beta, the default) or "state_diff" (-(h^nudged - h^free) / beta).
    nudge: "one_sided" (+beta) or "symmetric" (+beta and -beta).
    """

    beta: float = 0.01
    steps: int = 5
    step_size: float = 0.2
    momentum: float = 0.0
    credit: str = "error"
    nudge: str = "one_sided"

    def __post_init__(self):
        check_number("EP", "beta", self.beta)
        check_number("EP", "step_size", self.step_size)
        check_count("EP", "steps", self.steps)
        check_number("EP", "momentum", self.momentum, positive=False)
        if self.momentum >= 1:
            raise ValueError(f"EP option momentum must be < 1 (the relaxation diverges at 1 and "
                             f"above), got {self.momentum!r}")
        check_choice("EP", "credit", self.credit, EP_CREDITS)
        check_choice("EP", "nudge", self.nudge, EP_NUDGES)


def branches_of(model):
    """The L branches as one map over stacked states (L, B, d): `StackedBlocks` when it fits."""
    if StackedBlocks.fits(model):
        return StackedBlocks(model)
    return lambda h: torch.stack([b(hl) for b, hl in zip(model.blocks, h)]) if len(h) else h


def displacement_errors(model, branches, hf: torch.Tensor, f_free: torch.Tensor,
                        d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(eps_0, eps_1..eps_L stacked) at the states hf + d, from the free states hf and their
    branches f_free: eps_0 = d_0, eps_{l+1} = d_{l+1} - d_l - (f_l(hf_l + d_l) - f_l(hf_l))."""
    df = branches(hf[:-1] + d[:-1]) - f_free
    return d[0], (d[1:] - d[:-1] - df if model.residual else d[1:] - df)


def relax(model, free: list[torch.Tensor], y: torch.Tensor, beta: float, steps: int,
          step_size: float, momentum: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The nudged phase: T steps on the states of E + beta * sum_i CE_i, from the free states.

    The states move as their displacements d_k = h_k - h_k^free, so that in float32 an O(beta)
    displacement is not rounded away against states of norm ~100. Each step is heavy ball,
    v <- momentum * v - step_size * grad, d <- d + v. Returns (d, eps), each (L+1, B, d), detached.
    """
    hf = torch.stack([h.detach() for h in free])
    branches = branches_of(model)
    with torch.no_grad():
        f_free = branches(hf[:-1])
    d, v = torch.zeros_like(hf), torch.zeros_like(hf)
    with torch.enable_grad():
        for t in range(steps):
            d = d.detach().requires_grad_(True)
            objective = beta * F.cross_entropy(model.readout(hf[-1] + d[-1]), y, reduction="sum")
            if t:
                e0, rest = displacement_errors(model, branches, hf, f_free, d)
                objective = objective + 0.5 * (e0.pow(2).sum() + rest.pow(2).sum())
            (grad,) = torch.autograd.grad(objective, d)
            v = momentum * v - step_size * grad
            d = d.detach() + v
    with torch.no_grad():
        e0, rest = displacement_errors(model, branches, hf, f_free, d)
    return d, torch.cat([e0[None], rest])


@register_rule
class EP(Rule):
    """Equilibrium propagation (see the module docstring): a_k = -eps_k / beta at the nudged state."""

    name = "ep"
    Options = EPOptions
    description = "equilibrium propagation, prediction errors of a nudged relaxation"
    state_note = "none: the credit comes from the model's own energy (no saved feedback)"
    architecture_note = (
        "EP relaxes the states under the ResidualMLP's energy, 1/2 sum |h_{l+1} - h_l - "
        "f_l(h_l)|^2, with its d x d MLP blocks stacked for speed; an energy for attention over "
        "tokens or for batch-normalised feature maps is a method of its own, not built here")

    @classmethod
    def cost_hint(cls, options: EPOptions) -> float:
        # measured (benchmarks/ep_study.py, docs/measurements.md): T = 5 one-sided, 2.7 DFA steps
        phases = 2 if options.nudge == "symmetric" else 1
        return 1.0 + 0.34 * options.steps * phases

    def metadata(self):
        meta = super().metadata()
        o = self.options
        form = ("a_k = -eps_k / beta at the nudged state" if o.credit == "error"
                else "a_k = -(h_k^nudged - h_k^free) / beta")
        if o.nudge == "symmetric":
            form += " (symmetric: half the difference of the +beta and -beta relaxations)"
        meta["credit_form"] = form
        meta["relaxation"] = {"beta": o.beta, "steps": o.steps, "step_size": o.step_size,
                              "momentum": o.momentum, "nudge": o.nudge,
                              "energy": "1/2|h_0 - embed(x)|^2 + "
                              "1/2 sum_l |h_{l+1} - h_l - f_l(h_l)|^2 + beta * CE"}
        return meta

    def credits_from_states(self, model, free: list[torch.Tensor], y: torch.Tensor
                            ) -> list[torch.Tensor]:
        """[a_0..a_L] (detached) from the free states of a forward."""
        o = self.options
        betas = (o.beta, -o.beta) if o.nudge == "symmetric" else (o.beta,)
        pick = 1 if o.credit == "error" else 0   # relax gives (displacements, errors)
        t = [relax(model, free, y, b, o.steps, o.step_size, o.momentum)[pick] for b in betas]
        a = -t[0] / o.beta if len(t) == 1 else -(t[0] - t[1]) / (2 * o.beta)
        return list(a.unbind(0))

    def credits(self, model, x, y):
        with eval_mode(model), torch.no_grad():
            _, hiddens = model(x, return_hidden=True)
        return self.credits_from_states(model, hiddens, y)

    def step_loss(self, model, x, y, *, penalty_lambda=0.0, frozen_blocks=False):
        fwd = local_forward(model, x)
        credits = self.credits_from_states(model, fwd.hiddens, y)
        loss = local_loss(fwd, y, credits, penalty_lambda=penalty_lambda,
                          frozen_blocks=frozen_blocks)
        return StepOutput(loss, fwd.logits.detach())
