"""Learning rules: what each rule sends to each block (its *credit*) and the loss that trains with it.

Credits are indexed by the hidden state they stand for: a_k ~ dCE/dh_k for k = 0..L, per sample
(the gradient of that sample's own cross-entropy, not of the batch mean). Every rule except BP trains
with *local* losses built by `local_loss` (SPEC §3):

    embed      <- <h_0, a_0>                      mean over the batch
    block l    <- <f_l(h_l.detach()), a_{l+1}>    mean over the batch
    out_ln/out_head <- CE(out_head(out_ln(h_L.detach())), y)

so one backward of their sum gives every parameter its update, and a single optimizer steps them
all: AdamW is elementwise, so this equals one AdamW per block at the same lr (tested against seed
004's per-block loop). A rule is an `nn.Module` so that its feedback matrices (buffers, never
optimised or decayed) and auxiliary nets are saved with the run and reused for Gamma.

A new rule subclasses `Rule`, declares its options as a dataclass, and registers itself with
`@register_rule`; the trainer, CLI and notebooks find it in `RULES` without edits.
Not here: the optimizer loop (`train.py`) and the diagnostics (`measures.py`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .measures import eval_mode
from .model import ResidualMLP

RULES: dict[str, type["Rule"]] = {}

RMS_EPS = 1e-6  # seed 004's per-sample RMS normalisation: a / (sqrt(mean(a^2)) + 1e-6)


def register_rule(cls: type["Rule"]) -> type["Rule"]:
    """Class decorator: make a rule available by its `name` everywhere (trainer, CLI, notebooks)."""
    if not cls.name or cls.name in RULES:
        raise ValueError(f"rule name {cls.name!r} is empty or already registered")
    RULES[cls.name] = cls
    return cls


class StepOutput(NamedTuple):
    """What one training step needs: the loss to backpropagate once and the forward's logits."""

    loss: torch.Tensor
    logits: torch.Tensor  # detached; for the train loss and accuracy


@dataclass(frozen=True)
class NoOptions:
    """A rule without options."""


class Rule(nn.Module):
    """Base class. Subclasses set `name`, `Options` and implement `credits` and `step_loss`."""

    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    description: ClassVar[str] = ""

    def __init__(self, model: ResidualMLP, options: Any, generator: torch.Generator):
        super().__init__()
        self.options = options
        self.num_blocks = model.num_blocks

    # -- options ---------------------------------------------------------------------------
    @classmethod
    def parse_options(cls, options: dict | None):
        """Validate a plain dict of options against the rule's `Options` dataclass."""
        options = dict(options or {})
        fields = {f.name: f for f in dataclasses.fields(cls.Options)}
        unknown = sorted(set(options) - set(fields))
        if unknown:
            valid = ", ".join(sorted(fields)) or "none"
            raise ValueError(
                f"rule {cls.name!r} has no option(s) {', '.join(map(repr, unknown))}; "
                f"valid options: {valid}"
            )
        return cls.Options(**options)

    def metadata(self) -> dict:
        """What a run records about its rule (name, options, credit form)."""
        return {"rule": self.name, "options": dataclasses.asdict(self.options),
                "description": self.description}

    # -- the rule's job ----------------------------------------------------------------------
    def credits(self, model: ResidualMLP, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        """Per-sample credits [a_0, ..., a_L] at the current weights (detached)."""
        raise NotImplementedError

    def step_loss(self, model: ResidualMLP, x: torch.Tensor, y: torch.Tensor, *,
                  penalty_lambda: float = 0.0, frozen_blocks: bool = False) -> StepOutput:
        """The loss whose single backward gives every trainable parameter this rule's update."""
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------------
class LocalForward(NamedTuple):
    """A forward pass with every block's input detached (values equal the ordinary forward's)."""

    logits: torch.Tensor        # out_head(out_ln(h_L.detach())): trains the terminal stack only
    hiddens: list[torch.Tensor]  # h_0 (with grad to embed), h_1..h_L
    branches: list[torch.Tensor]  # f_l(h_l.detach()) (with grad to block l only)
    h_last: torch.Tensor | None = None  # the leaf fed to readout, when terminal_leaf=True


def local_forward(model: ResidualMLP, x: torch.Tensor, *,
                  terminal_leaf: bool = False) -> LocalForward:
    """One forward with detached block inputs.

    terminal_leaf=True makes the detached h_L fed to `model.readout` a leaf that requires grad and
    returns it as `h_last`, so that a rule can take dCE/dh_L from this same forward (FA) while the
    terminal stack still gets its CE gradient from the step's single backward.
    """
    h = model.embed(model.flatten_input(x))
    hiddens, branches = [h], []
    for block in model.blocks:
        h_in = h.detach()
        f = block(h_in)
        h = h_in + f if model.residual else f
        hiddens.append(h)
        branches.append(f)
    h_last = h.detach()
    if terminal_leaf:
        h_last.requires_grad_(True)
    logits = model.readout(h_last)
    return LocalForward(logits, hiddens, branches, h_last if terminal_leaf else None)


def residual_penalty(branches: list[torch.Tensor]) -> torch.Tensor:
    """Sum over blocks of the mean over batch *and features* of f_l(h_l)^2 (SPEC §3, mean form)."""
    return sum(f.pow(2).mean() for f in branches)


def local_loss(fwd: LocalForward, y: torch.Tensor, credits, *,
               penalty_lambda: float = 0.0, frozen_blocks: bool = False) -> torch.Tensor:
    """CE for the terminal stack + <h_0, a_0> for the embed + <f_l, a_{l+1}> for block l.

    `credits` is [a_0, ..., a_L] or the same stacked as one (L+1, B, ...) tensor. The inner
    products are taken in one reduction over the stacked terms (a handful of ops instead of a
    few per block: on CPU at d=256 each small op costs about as much as its arithmetic).
    """
    loss = F.cross_entropy(fwd.logits, y)
    outs = [fwd.hiddens[0]] if frozen_blocks else [fwd.hiddens[0], *fwd.branches]
    a = credits[:len(outs)] if torch.is_tensor(credits) else torch.stack(list(credits[:len(outs)]))
    loss = loss + torch.stack(outs).mul(a).sum() / y.shape[0]
    if penalty_lambda and not frozen_blocks:
        loss = loss + penalty_lambda * residual_penalty(fwd.branches)
    return loss


def output_error(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """e = softmax(logits) - onehot(y): the per-sample gradient of CE with respect to the logits."""
    e = logits.detach().softmax(-1)
    return e - F.one_hot(y, e.shape[-1]).to(e.dtype)


def rms_normalise(a: torch.Tensor) -> torch.Tensor:
    """Seed 004's per-sample RMS normalisation over the feature dim."""
    return a / (a.pow(2).mean(-1, keepdim=True).sqrt() + RMS_EPS)


def bp_credits(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """Exact per-sample dCE_i/dh_k from one backward of the summed cross-entropy.

    Exact per sample because in eval mode samples do not interact (LayerNorm is per sample).
    Parameters' .grad fields are left untouched (autograd.grad, not backward).
    """
    with eval_mode(model), torch.enable_grad():
        x = x.detach().requires_grad_(True)  # keeps hiddens in the graph if params are frozen
        logits, hiddens = model(x, return_hidden=True)
        loss = F.cross_entropy(logits, y, reduction="sum")
        grads = torch.autograd.grad(loss, hiddens)
    return [g.detach() for g in grads]


# ---------------------------------------------------------------------------------------------
# The rules
# ---------------------------------------------------------------------------------------------
@register_rule
class BP(Rule):
    """Backpropagation: a_k = dCE/dh_k exactly; the ordinary backward trains every parameter."""

    name = "bp"
    description = "backpropagation (exact gradient)"

    def credits(self, model, x, y):
        return bp_credits(model, x, y)

    def step_loss(self, model, x, y, *, penalty_lambda=0.0, frozen_blocks=False):
        logits, hiddens = model(x, return_hidden=True)
        loss = F.cross_entropy(logits, y)
        if penalty_lambda and not frozen_blocks:
            # The penalty is differentiated through the whole graph, as BP does with any loss.
            branches = [h1 - h0 if model.residual else h1 for h0, h1 in zip(hiddens, hiddens[1:])]
            loss = loss + penalty_lambda * residual_penalty(branches)
        return StepOutput(loss, logits.detach())


@dataclass(frozen=True)
class DFAOptions:
    credit_norm: str = "none"  # "none" (the paper's audit runs) or "rms" (seed 004's worked example)

    def __post_init__(self):
        if self.credit_norm not in ("none", "rms"):
            raise ValueError(
                f"DFA option credit_norm must be 'none' or 'rms', got {self.credit_norm!r}")


@register_rule
class DFA(Rule):
    """Direct Feedback Alignment (SPEC §3).

    e = softmax(logits) - onehot(y); feedback B_l in R^{d x C} drawn randn / sqrt(C);
    a_0 = a_1 = e B_0^T and a_{l+1} = e B_l^T (seed 004's pairing). Unnormalised by default: the
    paper's audit runs measured |a| ~ 4.5 per sample, which fits randn/sqrt(10) and not the RMS
    form (which gives sqrt(d) = 16).
    """

    name = "dfa"
    Options = DFAOptions
    description = "direct feedback alignment, e B_l^T"

    def __init__(self, model, options, generator):
        super().__init__(model, options, generator)
        n, d, c = max(model.num_blocks, 1), model.d_hidden, model.num_classes
        feedback = torch.randn(n, d, c, generator=generator) / c ** 0.5
        self.register_buffer("feedback", feedback)

    def metadata(self):
        meta = super().metadata()
        meta["credit_form"] = ("e B^T / (rms + 1e-6)" if self.options.credit_norm == "rms"
                               else "e B^T (unnormalised)")
        meta["feedback_init"] = "randn(d, C) / sqrt(C)"
        return meta

    def credits_from_error(self, e: torch.Tensor) -> torch.Tensor:
        """Stacked credits (L+1, B, d): a_0 = e B_0^T, a_{l+1} = e B_l^T, in one einsum."""
        pairing = [0] + list(range(self.num_blocks))  # seed 004: h_0 and h_1 both use B_0
        a = torch.einsum("bc,kdc->kbd", e, self.feedback[pairing].to(e.dtype))
        return rms_normalise(a) if self.options.credit_norm == "rms" else a

    def credits(self, model, x, y):
        with eval_mode(model), torch.no_grad():
            logits = model(x)
        return list(self.credits_from_error(output_error(logits, y)).unbind(0))

    def step_loss(self, model, x, y, *, penalty_lambda=0.0, frozen_blocks=False):
        fwd = local_forward(model, x)
        credits = self.credits_from_error(output_error(fwd.logits, y))
        loss = local_loss(fwd, y, credits, penalty_lambda=penalty_lambda,
                          frozen_blocks=frozen_blocks)
        return StepOutput(loss, fwd.logits.detach())


FA_FORMS = ("paper", "backward")


@dataclass(frozen=True)
class FAOptions:
    form: str = "paper"        # "paper" (SPEC §3, a_k = B_k a_{k+1}) or "backward" (Lillicrap)
    credit_norm: str = "none"  # "none" or "rms" (seed 004's per-sample RMS, applied to every a_k)

    def __post_init__(self):
        if self.form not in FA_FORMS:
            raise ValueError(
                f"FA option form must be 'paper' or 'backward', got {self.form!r}")
        if self.credit_norm not in ("none", "rms"):
            raise ValueError(
                f"FA option credit_norm must be 'none' or 'rms', got {self.credit_norm!r}")


def gelu_derivative(u: torch.Tensor) -> torch.Tensor:
    """d GELU(u)/du for the exact (erf) GELU: Phi(u) + u phi(u), as in torch's own backward."""
    cdf = 0.5 * (1.0 + torch.erf(u * 0.5 ** 0.5))
    pdf = torch.exp(-0.5 * u * u) / (2.0 * torch.pi) ** 0.5
    return cdf + u * pdf


@register_rule
class FA(Rule):
    """Feedback Alignment: the exact gradient at h_L carried down by fixed random d x d matrices.

    Two forms, chosen by `FAOptions.form`; both start from the exact per-sample credit at the top,
    a_L = dCE_i/dh_L through the terminal stack out_head(out_ln(h_L)), and train with DFA's local
    losses (`local_loss`), so they differ from DFA only in the credits below h_L.

    - "paper" (SPEC §3, the form the paper's FA row 0.401 +- 0.009 was run with): a_k = B_k a_{k+1}
      for k = L-1..0, with B_k in R^{d x d} (buffer `feedback`, shape (L, d, d)). One matrix stands
      in for a block's whole backward, skip included: it ignores the sample's LayerNorm and GELU
      derivatives and the identity path, so no choice of B_k reproduces BP in general.
    - "backward" (Lillicrap et al. 2016, Nat. Commun. 7:13276): backpropagate through each block's
      own local derivatives, with only the weight transposes replaced by fixed random matrices.
      For h_{l+1} = h_l + W2 GELU(u_l) + b2 with u_l = W1 LN(h_l) + b1:
          a_l = a_{l+1} + J_LN(h_l)^T R1_l (gelu'(u_l) * R2_l a_{l+1})
      with R2_l standing for W2^T (buffer `feedback_w2`) and R1_l for W1^T (`feedback_w1`), both
      (L, d, d); J_LN is the exact per-sample LayerNorm Jacobian (its affine gain included: the gain
      is an elementwise factor, which FA keeps, like gelu'). Without the residual add the
      `a_{l+1} +` term is dropped. With R2_l = W2_l^T and R1_l = W1_l^T this is BP exactly (tested).

    Feedback init: randn(d, d) / sqrt(d), so that E|B a|^2 = |a|^2: the credit keeps its size from
    layer to layer in expectation (unlike W2 at init, N(0, 0.01^2), whose transpose shrinks it by
    ~0.01 sqrt(d), 0.16 at d = 256). Drawn once from the rule's generator, stored as buffers: saved
    with the run for Gamma, never optimised or decayed.

    credit_norm="rms" divides every a_k (a_L included) by its per-sample RMS after propagation;
    the recursion is linear in a, so the direction is the one a per-step normalisation would give.
    """

    name = "fa"
    Options = FAOptions
    description = "feedback alignment: exact dCE/dh_L, fixed random d x d feedback below"

    def __init__(self, model, options, generator):
        super().__init__(model, options, generator)
        n, d = model.num_blocks, model.d_hidden
        self.residual = model.residual  # for metadata only; the step reads the model's own flag
        if options.form == "paper":
            self.register_buffer("feedback", torch.randn(n, d, d, generator=generator) / d ** 0.5)
        else:
            self.register_buffer("feedback_w1",
                                 torch.randn(n, d, d, generator=generator) / d ** 0.5)
            self.register_buffer("feedback_w2",
                                 torch.randn(n, d, d, generator=generator) / d ** 0.5)

    def metadata(self):
        meta = super().metadata()
        if self.options.form == "paper":
            form = "a_L = dCE/dh_L; a_k = B_k a_{k+1}"
            init = "randn(d, d) / sqrt(d) per block: buffer feedback (L, d, d)"
        else:
            skip = "a_{l+1} + " if self.residual else ""
            form = (f"a_L = dCE/dh_L; a_l = {skip}J_LN(h_l)^T R1_l (gelu'(u_l) * R2_l a_{{l+1}}) "
                    "(Lillicrap 2016: R1_l for W1^T, R2_l for W2^T)")
            init = ("randn(d, d) / sqrt(d) per block and weight: buffers feedback_w1, "
                    "feedback_w2 (L, d, d)")
        if self.options.credit_norm == "rms":
            form += "; every a_k / (rms + 1e-6)"
        else:
            form += " (unnormalised)"
        meta["credit_form"] = form
        meta["feedback_init"] = init
        return meta

    # -- credits ---------------------------------------------------------------------------
    def credits_from_forward(self, model: ResidualMLP, hiddens: list[torch.Tensor],
                             logits: torch.Tensor, h_last: torch.Tensor,
                             y: torch.Tensor) -> list[torch.Tensor]:
        """[a_0..a_L] (detached) from a forward's hidden states and its logits = readout(h_last).

        a_L from one autograd.grad of the summed CE (exact per sample: samples do not interact);
        the graph is retained so that the step's single backward can still train the head.
        """
        with torch.enable_grad():
            ce = F.cross_entropy(logits, y, reduction="sum")
            (a,) = torch.autograd.grad(ce, h_last, retain_graph=True)
        a = a.detach()
        credits = [a]
        for l in reversed(range(self.num_blocks)):
            if self.options.form == "paper":
                a = a @ self.feedback[l].T.to(a.dtype)
            else:
                a = self._backward_through_block(model, l, hiddens[l], a)
            credits.append(a)
        credits.reverse()
        if self.options.credit_norm == "rms":
            credits = [rms_normalise(t) for t in credits]
        return credits

    def _backward_through_block(self, model, l, h, a):
        """Lillicrap's backward through block l, from the detached h_l (no forward of the block)."""
        block = model.blocks[l]
        with torch.enable_grad():
            h = h.detach().requires_grad_(True)
            z = block.ln(h)  # LN alone, for its exact per-sample vector-Jacobian product
        with torch.no_grad():
            gp = gelu_derivative(block.fc1(z.detach()))
            v = (gp * (a @ self.feedback_w2[l].T.to(a.dtype))) @ self.feedback_w1[l].T.to(a.dtype)
        (through_branch,) = torch.autograd.grad(z, h, grad_outputs=v)
        through_branch = through_branch.detach()
        return a + through_branch if model.residual else through_branch

    def credits(self, model, x, y):
        with eval_mode(model):
            with torch.no_grad():
                _, hiddens = model(x, return_hidden=True)
            with torch.enable_grad():
                h_last = hiddens[-1].detach().requires_grad_(True)
                logits = model.readout(h_last)
            return self.credits_from_forward(model, hiddens, logits, h_last, y)

    def step_loss(self, model, x, y, *, penalty_lambda=0.0, frozen_blocks=False):
        fwd = local_forward(model, x, terminal_leaf=True)
        credits = self.credits_from_forward(model, fwd.hiddens, fwd.logits, fwd.h_last, y)
        loss = local_loss(fwd, y, credits, penalty_lambda=penalty_lambda,
                          frozen_blocks=frozen_blocks)
        return StepOutput(loss, fwd.logits.detach())


def build_rule(name: str, model: ResidualMLP, options: dict | None,
               generator: torch.Generator) -> Rule:
    """Instantiate a registered rule by name, with a clear error for an unknown one."""
    if name not in RULES:
        raise ValueError(
            f"unknown rule {name!r}; registered rules: {', '.join(sorted(RULES))}. "
            "A new rule subclasses fa_nb_utils.rules.Rule and is decorated with @register_rule."
        )
    cls = RULES[name]
    return cls(model, cls.parse_options(options), generator)
