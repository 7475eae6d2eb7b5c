"""State Bridge and Credit Bridge: credit through a learned auxiliary net, the "bridge"
(docs/rules.md, "The bridges").

Both send h_k a credit computed from a small net, trained in the same step by the same optimizer,
that reads z = LN(h_k) (parameter-free), a learned embedding of the layer k and the output error
s = e = softmax(logits) - onehot(y):
- State Bridge: G(h_k, k, s) = z + net(...) predicts out_ln(h_L) (regression, detached targets);
  a_k = grad_{h_k} CE(out_head(G), y).
- Credit Bridge: a value V(h_k, k, s) = <s, P(z, k, s)> trained by bridge consistency on
  sigma-perturbed states plus a match of grad V to the true dCE/dh_L; a_k = grad_{h_k} V.
The net is the rule's declared state (`state_spec`), saved with every checkpoint and used for Γ.
Not here: the registry and the local losses (rules.py), the optimizer loop (trainer.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .measures import eval_mode
from .model import LN_EPS, default_init
from .rules import (Rule, StackedBlocks, StateSpec, StepOutput, check_count, check_number,
                    local_forward, local_loss, output_error, register_rule)

MAX_HIDDEN = 1 << 16


def plain_ln(h: torch.Tensor) -> torch.Tensor:
    """Parameter-free LayerNorm over the feature dim (the scale-free view of a state)."""
    return F.layer_norm(h, h.shape[-1:], eps=LN_EPS)


class BridgeNet(nn.Module):
    """The bridges' trunk: out(GELU(W_z z + W_s s + E[k] + b)), one hidden layer of width
    `hidden`; `out_dim` = d for SB's prediction, C for CB's value directions."""

    def __init__(self, d: int, num_classes: int, num_layers: int, hidden: int, out_dim: int):
        super().__init__()
        self.inp = nn.Linear(d, hidden)
        self.cond = nn.Linear(num_classes, hidden, bias=False)
        self.layer = nn.Embedding(num_layers, hidden)
        self.out = nn.Linear(hidden, out_dim)

    def reset_parameters(self, generator: torch.Generator, zero_out: bool) -> None:
        for lin in (self.inp, self.cond, self.out):
            default_init(lin, generator)
        with torch.no_grad():
            self.layer.weight.normal_(0.0, 1.0 / math.sqrt(self.layer.embedding_dim),
                                      generator=generator)
            if zero_out:
                self.out.weight.zero_()
                self.out.bias.zero_()

    def forward(self, z: torch.Tensor, k: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return self.out(F.gelu(self.inp(z) + self.cond(s) + self.layer(k), approximate="none"))


def _stack(hiddens: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([h.detach() for h in hiddens])


class _BridgeRule(Rule):
    """What both bridges share: the net, its declared state, its learning-rate scale."""

    out_dim_is_d: bool = True
    architecture_note = (
        "a bridge maps every state h_k, one d-vector per sample, into the terminal state "
        "out_ln(h_L) (State Bridge) or the value of the head on it (Credit Bridge); ViT-Mini's "
        "readout reads the cls token alone and the CNN's states have sizes of their own, so "
        "neither has one space of states to bridge")

    def __init__(self, model, options, generator):
        super().__init__(model, options, generator)
        d, c = model.d_hidden, model.num_classes
        self.bridge = BridgeNet(d, c, model.num_blocks + 1, options.hidden,
                                d if self.out_dim_is_d else c)
        self.bridge.reset_parameters(generator, zero_out=self.out_dim_is_d)

    def state_spec(self, model):
        d, c, L = model.d_hidden, model.num_classes, model.num_blocks
        with torch.device("meta"):
            template = BridgeNet(d, c, L + 1, self.options.hidden,
                                 d if self.out_dim_is_d else c)
        return [StateSpec.module("bridge", template)]

    def aux_lr_scale(self) -> float:
        return float(self.options.lr_scale)

    def _inputs(self, H: torch.Tensor, s: torch.Tensor, layers: torch.Tensor | None = None):
        """Flattened KB rows of states H (K, B, d): z = LN(h), the layer index (`layers`, default
        0..K-1), the conditioning repeated per layer."""
        n, batch = H.shape[0], H.shape[1]
        layers = torch.arange(n, device=H.device) if layers is None else layers
        return (plain_ln(H.reshape(n * batch, *H.shape[2:])), layers.repeat_interleave(batch),
                s.repeat(n, 1))


# --- State Bridge ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class StateBridgeOptions:
    """hidden: width of the predictor's hidden layer; lr_scale: its learning rate relative to the
    model's (one AdamW, its own parameter group)."""

    hidden: int = 256
    lr_scale: float = 1.0

    def __post_init__(self):
        check_count("state_bridge", "hidden", self.hidden, MAX_HIDDEN)
        check_number("state_bridge", "lr_scale", self.lr_scale, positive=True)


@register_rule
class StateBridge(_BridgeRule):
    """State Bridge (see the module docstring): a_k = grad CE(out_head(G(h_k, k, s)), y)."""

    name = "state_bridge"
    label = "State Bridge"
    Options = StateBridgeOptions
    description = "state bridge: gradient through a learned predictor G(h_k, k, e) of out_ln(h_L)"

    @classmethod
    def cost_hint(cls, options) -> float:
        return 1.75  # measured on the smoke grid (d = 256, hidden 256)

    def metadata(self):
        meta = super().metadata()
        meta["credit_form"] = "a_k = grad_{h_k} CE(out_head(G(h_k, k, e)), y)"
        meta["bridge"] = {"net": "G = LN(h) + out(GELU(W_z LN(h) + W_s e + E[k] + b)), out = 0 "
                                 "at init", "hidden": self.options.hidden,
                          "lr_scale": self.options.lr_scale,
                          "trained_by": "MSE to out_ln(h_L) of the same forward, detached"}
        return meta

    def predict(self, model, H: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """G for stacked states H (L+1, B, d): the predicted out_ln(h_L), (L+1, B, d)."""
        z, k, s_rep = self._inputs(H, s)
        return (z + self.bridge(z, k, s_rep)).reshape(H.shape)

    def _credits(self, model, H: torch.Tensor, s: torch.Tensor, y: torch.Tensor):
        """(credits (L+1, B, d) detached, predictions with their graph to the bridge)."""
        with torch.enable_grad():
            H = H.detach().requires_grad_(True)
            pred = self.predict(model, H, s)
            logits = model.out_head(pred)
            ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.repeat(H.shape[0]),
                                 reduction="sum")
            (a,) = torch.autograd.grad(ce, H, retain_graph=True)
        return a.detach(), pred

    def credits(self, model, x, y):
        with eval_mode(model), torch.no_grad():
            logits, hiddens = model(x, return_hidden=True)
        a, _ = self._credits(model, _stack(hiddens), output_error(logits, y), y)
        return list(a.unbind(0))

    def step_loss(self, model, x, y, *, penalty_lambda=0.0, frozen_blocks=False):
        fwd = local_forward(model, x)
        H = _stack(fwd.hiddens)
        a, pred = self._credits(model, H, output_error(fwd.logits, y), y)
        with torch.no_grad():
            target = model.out_ln(H[-1])
        bridge_loss = (pred - target).pow(2).mean() * H.shape[0]
        loss = local_loss(fwd, y, a, penalty_lambda=penalty_lambda, frozen_blocks=frozen_blocks)
        return StepOutput(loss + bridge_loss, fwd.logits.detach())


# --- Credit Bridge --------------------------------------------------------------------------------
@dataclass(frozen=True)
class CreditBridgeOptions:
    """hidden: width of the value net's hidden layer; sigma: the consistency loss's perturbation,
    relative to each state's RMS; grad_weight: weight of the last-layer gradient match against
    the consistency loss (at lower weights V drifts from the true gradient as the model trains:
    docs/rules.md); lr_scale: the value net's learning rate relative to the model's."""

    hidden: int = 256
    sigma: float = 0.1
    grad_weight: float = 1000.0
    lr_scale: float = 1.0

    def __post_init__(self):
        check_count("credit_bridge", "hidden", self.hidden, MAX_HIDDEN)
        check_number("credit_bridge", "sigma", self.sigma, positive=False)
        check_number("credit_bridge", "grad_weight", self.grad_weight, positive=False)
        check_number("credit_bridge", "lr_scale", self.lr_scale, positive=True)


@register_rule
class CreditBridge(_BridgeRule):
    """Credit Bridge (see the module docstring): a_k = grad_{h_k} V(h_k, k, s)."""

    name = "credit_bridge"
    label = "Credit Bridge"
    Options = CreditBridgeOptions
    description = "credit bridge: gradient of a learned value net V(h_k, k, e)"
    out_dim_is_d = False

    @classmethod
    def cost_hint(cls, options) -> float:
        return 1.9  # measured on the smoke grid (d = 256, hidden 256)

    def __init__(self, model, options, generator):
        super().__init__(model, options, generator)
        # the consistency loss's noise: its own stream, saved with the rule (bit-identical resume)
        self.noise = torch.Generator()
        self.noise.manual_seed(int(torch.randint(0, 2 ** 62, (1,), generator=generator)))

    def get_extra_state(self):
        return {"noise_generator": self.noise.get_state()}

    def set_extra_state(self, state):
        self.noise.set_state(state["noise_generator"].cpu())

    def metadata(self):
        meta = super().metadata()
        o = self.options
        meta["credit_form"] = "a_k = grad_{h_k} V(h_k, k, e), V = <e, P(LN(h_k), k, e)>"
        meta["bridge"] = {"net": "P = out(GELU(W_z LN(h) + W_s e + E[k] + b)), V = <e, P>",
                          "hidden": o.hidden, "sigma": o.sigma, "grad_weight": o.grad_weight,
                          "lr_scale": o.lr_scale,
                          "trained_by": "consistency V(h~_k, k) ~ V(h~_k + f_k(h~_k), k+1) on "
                                        "sigma-perturbed states (right side detached) + MSE of "
                                        "grad V(h_L, L) to dCE/dh_L"}
        return meta

    def value(self, model, H: torch.Tensor, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """V for stacked states H (L+1, B, d), layer k at H[k]: (L+1, B)."""
        return self._value_at(model, H, s, y, torch.arange(H.shape[0], device=H.device))

    def _value_at(self, model, H, s, y, layers: torch.Tensor) -> torch.Tensor:
        """V of states H (K, B, d) at the given layer indices (K,)."""
        z, k, s_rep = self._inputs(H, s, layers)
        return (s_rep * self.bridge(z, k, s_rep)).sum(-1).reshape(H.shape[0], H.shape[1])

    def _grad_value(self, model, H, s, y, create_graph: bool) -> torch.Tensor:
        with torch.enable_grad():
            H = H.detach().requires_grad_(True)
            (a,) = torch.autograd.grad(self.value(model, H, s, y).sum(), H,
                                       create_graph=create_graph)
        return a

    def credits(self, model, x, y):
        with eval_mode(model), torch.no_grad():
            logits, hiddens = model(x, return_hidden=True)
        a = self._grad_value(model, _stack(hiddens), output_error(logits, y), y, False)
        return list(a.detach().unbind(0))

    def _next_states(self, model, H: torch.Tensor) -> torch.Tensor:
        """h + f_l(h) for each layer's state (the model's own blocks, no gradient)."""
        with torch.no_grad():
            if StackedBlocks.fits(model):
                f = StackedBlocks(model)(H)
            else:
                f = torch.stack([b(h) for b, h in zip(model.blocks, H)])
            return H + f if model.residual else f

    def step_loss(self, model, x, y, *, penalty_lambda=0.0, frozen_blocks=False):
        o = self.options
        fwd = local_forward(model, x, terminal_leaf=True)
        H = _stack(fwd.hiddens)
        s = output_error(fwd.logits, y)
        L = H.shape[0] - 1
        a = self._grad_value(model, H, s, y, False).detach()
        # the true per-sample gradient at h_L, from this forward (for the last-layer match)
        with torch.enable_grad():
            (g_L,) = torch.autograd.grad(F.cross_entropy(fwd.logits, y, reduction="sum"),
                                         fwd.h_last, retain_graph=True)
        if L == 0:  # no block: only the last-layer match
            consistency = H.new_zeros(())
        else:
            consistency = self._consistency(model, H, s, y)
        # the value's gradient at h_L matches the true gradient there
        with torch.enable_grad():
            hL = H[-1:].detach().requires_grad_(True)
            last = torch.full((1,), L, device=H.device, dtype=torch.long)
            (gv,) = torch.autograd.grad(self._value_at(model, hL, s, y, last).sum(), hL,
                                        create_graph=True)
        match = (gv[0] - g_L.detach()).pow(2).sum(-1).mean()
        loss = local_loss(fwd, y, a, penalty_lambda=penalty_lambda, frozen_blocks=frozen_blocks)
        return StepOutput(loss + consistency + o.grad_weight * match, fwd.logits.detach())

    def _consistency(self, model, H, s, y) -> torch.Tensor:
        """mean (V(h~_k, k) - V(h~_k + f_k(h~_k), k+1))^2 over layers 0..L-1 and samples, the
        right side detached; h~_k = h_k + sigma * rms(h_k) * noise."""
        L = H.shape[0] - 1
        lower = H[:-1]
        rms = lower.pow(2).mean(-1, keepdim=True).sqrt()
        noise = torch.randn(lower.shape, generator=self.noise).to(lower.device, lower.dtype)
        perturbed = lower + self.options.sigma * rms * noise
        layers = torch.arange(L, device=H.device)
        with torch.no_grad():
            target = self._value_at(model, self._next_states(model, perturbed), s, y, layers + 1)
        return (self._value_at(model, perturbed, s, y, layers) - target).pow(2).mean()
