"""Equilibrium propagation (EP) on the residual MLP: credit from a nudged relaxation of the states
(docs/rules.md, "EP").

The forward pass is the minimum (E = 0) of a per-sample energy over the hidden states,

    E(h_0..h_L) = 1/2 ||h_0 - embed(x)||^2 + 1/2 sum_{l<L} ||h_{l+1} - h_l - f_l(h_l)||^2

(without the residual add the prediction is f_l(h_l)). The nudged phase takes T gradient steps of
size eta on the states, from the free states, descending E + beta * CE(y | h_L). At its minimum
the prediction errors eps_k satisfy the backward pass of the network, so the default credit
a_k = -eps_k / beta -> dCE/dh_k as beta -> 0 and T -> infinity. `credit="state_diff"` is
-(h_k^nudged - h_k^free) / beta (only its direction compares with the gradient);
`nudge="symmetric"` relaxes at +beta and -beta (Laborieux et al. 2021), cancelling the O(beta)
bias at twice the cost. The whole batch and all layers relax at once, only the states get
gradients in the loop, and the weights train with `rules.local_loss`. No saved state.
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
    step_size: eta, the step on the states (> 0); stable for eta < 2 / lambda_max, the energy's
        curvature, which grows as the blocks train (docs/rules.md).
    credit: "error" (-eps_k / beta, the default) or "state_diff" (-(h^nudged - h^free) / beta).
    nudge: "one_sided" (+beta) or "symmetric" (+beta and -beta).
    """

    beta: float = 0.01
    steps: int = 20
    step_size: float = 0.2
    credit: str = "error"
    nudge: str = "one_sided"

    def __post_init__(self):
        check_number("EP", "beta", self.beta)
        check_number("EP", "step_size", self.step_size)
        check_count("EP", "steps", self.steps)
        check_choice("EP", "credit", self.credit, EP_CREDITS)
        check_choice("EP", "nudge", self.nudge, EP_NUDGES)


def prediction_errors(model, target0: torch.Tensor, states: list[torch.Tensor]
                      ) -> list[torch.Tensor]:
    """[eps_0, ..., eps_L]: eps_0 = h_0 - embed(x), eps_{l+1} = h_{l+1} - h_l - f_l(h_l)."""
    eps = [states[0] - target0]
    for l, block in enumerate(model.blocks):
        f = block(states[l])
        pred = states[l] + f if model.residual else f
        eps.append(states[l + 1] - pred)
    return eps


def stacked_errors(model, branches: StackedBlocks, target0: torch.Tensor,
                    s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(eps_0, eps_1..eps_L stacked) for stacked states s = (L+1, B, d)."""
    f = branches(s[:-1])
    pred = s[:-1] + f if model.residual else f
    return s[0] - target0, s[1:] - pred


def relax(model, target0: torch.Tensor, free: list[torch.Tensor], y: torch.Tensor, beta: float,
          steps: int, step_size: float) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The nudged phase: T gradient steps on the states of E + beta * sum_i CE_i.

    Starts from the (detached) free states; returns (states, prediction errors at them), both
    detached. The CE is summed over samples, so each sample's nudge is its own. Gradients are
    taken with respect to the states only (autograd.grad), never the parameters. The states of
    all layers are one (L+1, B, d) tensor and the blocks one batched map (`StackedBlocks`) when
    every hidden state has one shape; otherwise the layers are looped over.
    """
    shapes = {tuple(h.shape) for h in free}
    if StackedBlocks.fits(model) and len(shapes) == 1:
        branches = StackedBlocks(model)
        s = torch.stack([h.detach() for h in free])
        with torch.enable_grad():
            for _ in range(steps):
                s = s.detach().requires_grad_(True)
                e0, rest = stacked_errors(model, branches, target0, s)
                energy = 0.5 * (e0.pow(2).sum() + rest.pow(2).sum())
                cost = F.cross_entropy(model.readout(s[-1]), y, reduction="sum")
                (grad,) = torch.autograd.grad(energy + beta * cost, s)
                s = s - step_size * grad
        with torch.no_grad():
            s = s.detach()
            e0, rest = stacked_errors(model, branches, target0, s)
        return list(s.unbind(0)), [e0, *rest.unbind(0)]
    states = [h.detach().clone() for h in free]
    with torch.enable_grad():
        for _ in range(steps):
            for h in states:
                h.requires_grad_(True)
            eps = prediction_errors(model, target0, states)
            energy = 0.5 * sum(e.pow(2).sum() for e in eps)
            cost = F.cross_entropy(model.readout(states[-1]), y, reduction="sum")
            grads = torch.autograd.grad(energy + beta * cost, states)
            states = [(h - step_size * g).detach() for h, g in zip(states, grads)]
    with torch.no_grad():
        eps = prediction_errors(model, target0, states)
    return states, [e.detach() for e in eps]


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
        # measured on the smoke grid: T = 10 one-sided costs about 4.3 DFA steps
        phases = 2 if options.nudge == "symmetric" else 1
        return 1.0 + 0.33 * options.steps * phases

    def metadata(self):
        meta = super().metadata()
        o = self.options
        form = ("a_k = -eps_k / beta at the nudged state" if o.credit == "error"
                else "a_k = -(h_k^nudged - h_k^free) / beta")
        if o.nudge == "symmetric":
            form += " (symmetric: half the difference of the +beta and -beta relaxations)"
        meta["credit_form"] = form
        meta["relaxation"] = {"beta": o.beta, "steps": o.steps, "step_size": o.step_size,
                              "nudge": o.nudge, "energy": "1/2|h_0 - embed(x)|^2 + "
                              "1/2 sum_l |h_{l+1} - h_l - f_l(h_l)|^2 + beta * CE"}
        return meta

    def credits_from_states(self, model, target0: torch.Tensor, free: list[torch.Tensor],
                            y: torch.Tensor) -> list[torch.Tensor]:
        """[a_0..a_L] (detached) from the free states of a forward and embed(x) (= h_0 free)."""
        o = self.options
        free = [h.detach() for h in free]
        target0 = target0.detach()
        betas = (o.beta, -o.beta) if o.nudge == "symmetric" else (o.beta,)
        phases = [relax(model, target0, free, y, b, o.steps, o.step_size) for b in betas]
        if o.credit == "error":
            per_phase = [eps for _, eps in phases]
        else:
            per_phase = [[h - hf for h, hf in zip(states, free)] for states, _ in phases]
        if len(per_phase) == 1:
            return [-t / o.beta for t in per_phase[0]]
        return [-(p - m) / (2 * o.beta) for p, m in zip(*per_phase)]

    def credits(self, model, x, y):
        with eval_mode(model), torch.no_grad():
            _, hiddens = model(x, return_hidden=True)
        return self.credits_from_states(model, hiddens[0], hiddens, y)

    def step_loss(self, model, x, y, *, penalty_lambda=0.0, frozen_blocks=False):
        fwd = local_forward(model, x)
        credits = self.credits_from_states(model, fwd.hiddens[0], fwd.hiddens, y)
        loss = local_loss(fwd, y, credits, penalty_lambda=penalty_lambda,
                          frozen_blocks=frozen_blocks)
        return StepOutput(loss, fwd.logits.detach())
