"""Learning rules: what each rule sends to each block (its *credit*) and the loss that trains with it.

Credits are indexed by hidden state: a_k ~ dCE_i/dh_k for k = 0..L, per sample. Every rule but BP
trains with the *local* losses of `local_loss` (docs/rules.md, "The local losses"): CE for the
terminal stack, <h_0, a_0> for the embed and <f_l(h_l.detach()), a_{l+1}> for block l, so one
backward of their sum and one AdamW step train every parameter (AdamW is elementwise: the same
as one AdamW per block, tested).

A rule is an `nn.Module`, so its feedback matrices (buffers) and auxiliary nets are saved with the
run and reused for Γ; it declares them in `state_spec` (a list of `StateSpec`), which Γ's check
and the run metadata read. A new rule subclasses `Rule`, declares its options as a dataclass and
registers itself with `@register_rule`; everything else finds it in `RULES`. A rule is named by
its registered name or its import path, `module:Class` (`resolve_rule`), which imports its
module (how a worker that never imported it gets it); its runs are kept under its name.
Not here: the optimizer loop (trainer.py), the other rules (ep.py, bridges.py).
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import math
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .architectures import ARCHITECTURES, architecture_of
from .measures import eval_mode
from .model import ResidualMLP

RULES: dict[str, type["Rule"]] = {}

RMS_EPS = 1e-6  # credit_norm="rms": a / (sqrt(mean(a^2)) + 1e-6), per sample


RULE_NAME = re.compile(r"[A-Za-z0-9_.-]+")  # it names run folders: no ':' (an import path's)


def register_rule(cls: type["Rule"]) -> type["Rule"]:
    """Class decorator: make a rule available by its `name` everywhere (trainer, CLI, notebooks)."""
    if not (isinstance(cls, type) and issubclass(cls, Rule)):
        raise TypeError(f"register_rule takes a subclass of fa_nb_utils.rules.Rule, got {cls!r}")
    name = cls.name
    if not isinstance(name, str) or not RULE_NAME.fullmatch(name):
        raise ValueError(f"rule {cls.import_path()} needs a `name` of letters, digits, '_', '.' "
                         f"or '-' (it names the run folders), got {name!r}")
    if name in RULES:
        raise ValueError(f"rule name {name!r} is already registered (by "
                         f"{RULES[name].import_path()}); give {cls.import_path()} another name")
    RULES[name] = cls
    return cls


def _unknown_rule(rule: str) -> str:
    close = difflib.get_close_matches(rule, list(RULES), n=3)
    did = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
    return (f"unknown rule {rule!r}{did}; registered rules: {', '.join(sorted(RULES))}. A rule "
            "of your own is named by its import path, module:Class (e.g. my_rules:SignDFA for "
            "class SignDFA in my_rules.py on the Python path), or by its name once its module "
            "is imported")


def resolve_rule(rule: str) -> type["Rule"]:
    """The Rule class that `rule` names: a registered name ("dfa") or an import path
    ("my_rules:SignDFA", "package.module:Class"). A path's module is imported, and its class
    registered if the import did not register it. A ValueError names what is wrong and the fix."""
    if not isinstance(rule, str) or not rule:
        raise ValueError(f"a rule is named by a registered name or an import path module:Class, "
                         f"got {rule!r}")
    if ":" not in rule:
        if rule in RULES:
            return RULES[rule]
        raise ValueError(_unknown_rule(rule))
    module_name, _, attr = rule.partition(":")
    if not module_name or not attr:
        raise ValueError(f"rule {rule!r}: an import path is module:Class, e.g. my_rules:SignDFA")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name + ".").startswith(exc.name + "."):
            raise ValueError(f"rule {rule!r}: no module {module_name!r} on the Python path; put "
                             "its folder on PYTHONPATH (or run from that folder), or correct the "
                             "name") from exc
        raise ValueError(f"rule {rule!r}: importing module {module_name!r} failed "
                         f"({type(exc).__name__}: {exc})") from exc
    except Exception as exc:  # the module's own code raised
        raise ValueError(f"rule {rule!r}: importing module {module_name!r} failed "
                         f"({type(exc).__name__}: {exc})") from exc
    cls: Any = module
    for part in attr.split("."):
        if not hasattr(cls, part):
            mine = [n for n, v in vars(module).items()
                    if isinstance(v, type) and issubclass(v, Rule) and v is not Rule]
            close = difflib.get_close_matches(attr, mine, n=3)
            did = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
            raise ValueError(f"rule {rule!r}: module {module_name!r} has no attribute {attr!r}"
                             f"{did}; its rule classes: {', '.join(mine) or 'none'}")
        cls = getattr(cls, part)
    if not (isinstance(cls, type) and issubclass(cls, Rule)):
        raise ValueError(f"rule {rule!r}: {cls!r} is not a subclass of fa_nb_utils.rules.Rule")
    if not cls.name:
        raise ValueError(f"rule {rule!r}: the class has no `name` (the name its runs are kept "
                         "under); set one, e.g. name = \"sign_dfa\"")
    if RULES.get(cls.name) is cls:
        return cls
    if cls.name in RULES:
        raise ValueError(f"rule {rule!r} is named {cls.name!r}, a name already registered by "
                         f"{RULES[cls.name].import_path()}; give one of them another name")
    return register_rule(cls)


def rule_label(name: str) -> str:
    """What tables and figures print for rule `name`: its class's `label`, or the name in capitals
    for a rule not registered in this process (reading runs never imports a rule's module)."""
    return getattr(RULES.get(name), "label", "") or name.upper()


def path_for_workers(name: str, in_process: bool = False) -> str:
    """The import path by which a grid worker gets rule `name` (`import_rule`). Other processes
    cannot import a class defined in __main__ (a notebook's or a script's own cells) or inside a
    function: such a rule is refused unless the runs train in this process (`in_process`)."""
    cls = resolve_rule(name)
    where = ("in __main__ (this notebook or script)" if cls.__module__ == "__main__"
             else "inside a function" if "<locals>" in cls.__qualname__ else None)
    if where is not None and not in_process:
        raise ValueError(
            f"rule {cls.name!r} is defined {where}, which the grid's worker processes cannot "
            f"import. Move the class into a module on the Python path (e.g. my_rules.py) and "
            f"import it from there (or name it by its path, my_rules:{cls.__name__}), or train "
            "in this process: executor='inprocess'")
    return cls.import_path()


def import_rule(name: str, path: str | None) -> type["Rule"]:
    """Rule `name` in this process: the registered one, else the one imported from `path`
    (module:Class). How a grid worker gets a rule its own process never imported."""
    if name in RULES or not path:
        return resolve_rule(name)
    cls = resolve_rule(path)
    if cls.name != name:
        raise ValueError(f"rule path {path!r} gives rule {cls.name!r}, but the run is of rule "
                         f"{name!r}")
    return cls


def rule_for_diagnose(name: str, run_metadata: Any, given: str | None) -> type["Rule"]:
    """The class of a saved run's rule `name`, for the diagnose command line's Γ: the one the
    user names with --rule (`given`: a name, or an import path whose module is imported), else
    the registered one. The import path recorded with the run is shown, never imported: importing
    a module runs its code, and a checkpoint is a data file."""
    if given is not None:
        cls = resolve_rule(given)
        if cls.name != name:
            raise ValueError(f"--rule {given} is rule {cls.name!r}, but the run was trained with "
                             f"rule {name!r}")
        return cls
    if name in RULES:
        return RULES[name]
    meta = run_metadata.get("rule") if isinstance(run_metadata, dict) else None
    path = meta.get("import_path") if isinstance(meta, dict) else None
    if not isinstance(path, str) or ":" not in path:
        fix = "pass --rule module:Class, the rule's import path"
    elif path.startswith("__main__:"):
        fix = (f"it was defined in the training script or notebook itself ({path}), which cannot "
               f"be imported: move the class into a module and pass --rule "
               f"<module>:{path.partition(':')[2]}")
    else:
        fix = (f"if you trust its code, pass --rule {path} (recorded with the run; its module "
               "must be on the Python path)")
    raise ValueError(f"the run was trained with rule {name!r}, which is not registered here, "
                     f"and a rule's module is imported only when you name it: {fix}; or pass "
                     "--no-gamma to diagnose without Γ, which alone needs the rule")


class StepOutput(NamedTuple):
    """What one training step needs: the loss to backpropagate once and the forward's logits."""

    loss: torch.Tensor
    logits: torch.Tensor  # detached; for the train loss and accuracy


@dataclass(frozen=True)
class NoOptions:
    """A rule without options."""


STATE_KINDS = ("buffer", "module")


def _shape(value, what: str) -> tuple[int, ...]:
    shape = tuple(value)
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise ValueError(f"{what} must be a tuple of ints >= 0, got {value!r}")
    return shape


@dataclass(frozen=True)
class StateSpec:
    """One piece of saved state a rule's credit depends on, beyond the model's own weights:
    kind "buffer" (a tensor attribute, `shape`) or "module" (an auxiliary net, `shapes` of its
    state_dict); a shape of None is not checked. Γ is N/A when a declared piece is missing,
    empty, non-finite, all zeros or of another shape (`alignment.check_rule_state`).
    """

    name: str
    kind: str = "buffer"
    shape: tuple[int, ...] | None = None
    shapes: Mapping[str, tuple[int, ...]] | None = field(default=None, hash=False)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ValueError(f"StateSpec name must be an attribute name of the rule, "
                             f"got {self.name!r}")
        if self.kind not in STATE_KINDS:
            raise ValueError(f"StateSpec kind must be one of {STATE_KINDS}, got {self.kind!r}")
        if self.kind == "buffer" and self.shapes is not None:
            raise ValueError(f"StateSpec {self.name!r}: a buffer has one `shape`, not `shapes`")
        if self.kind == "module" and self.shape is not None:
            raise ValueError(f"StateSpec {self.name!r}: a module has `shapes` (its state_dict's "
                             "{key: shape}), not one `shape`")
        if self.shape is not None:
            object.__setattr__(self, "shape", _shape(self.shape, f"StateSpec {self.name!r} shape"))
        if self.shapes is not None:
            object.__setattr__(self, "shapes", {
                str(k): _shape(v, f"StateSpec {self.name!r} shape of {k!r}")
                for k, v in dict(self.shapes).items()})

    @classmethod
    def buffer(cls, name: str, shape: tuple[int, ...] | None) -> "StateSpec":
        """A tensor attribute (feedback matrices) that must have `shape` for the model measured."""
        return cls(name, "buffer", shape=shape)

    @classmethod
    def module(cls, name: str, shapes: Mapping[str, tuple[int, ...]] | nn.Module | None
               ) -> "StateSpec":
        """An `nn.Module` attribute (an auxiliary net) whose state_dict must have `shapes`:
        {key: shape}, or a template module whose state_dict shapes are read."""
        if isinstance(shapes, nn.Module):
            shapes = {k: tuple(v.shape) for k, v in shapes.state_dict().items()}
        return cls(name, "module", shapes=shapes)

    def to_dict(self) -> dict:
        """Plain JSON: what a run's metadata records under rule.state."""
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.kind == "buffer":
            out["shape"] = None if self.shape is None else list(self.shape)
        else:
            out["shapes"] = (None if self.shapes is None
                             else {k: list(v) for k, v in self.shapes.items()})
        return out


@dataclass(frozen=True)
class ModelShape:
    """The architecture numbers of the model a rule was built for: what its state's shapes
    depend on. `Rule.state_spec` takes the model itself or this record of it."""

    input_dim: int
    d_hidden: int
    num_classes: int
    num_blocks: int
    residual: bool = True
    terminal_ln: bool = True
    architecture: str = "resmlp"
    state_sizes: tuple[int, ...] | None = None  # per-sample sizes of h_0..h_L when not all d

    @classmethod
    def of(cls, model: ResidualMLP) -> "ModelShape":
        sizes = getattr(model, "state_sizes", None)
        return cls(model.input_dim, model.d_hidden, model.num_classes, model.num_blocks,
                   bool(getattr(model, "residual", True)),
                   bool(getattr(model, "terminal_ln", True)),
                   architecture_of(model), None if sizes is None else tuple(sizes))


class Rule(nn.Module):
    """Base class. Subclasses set `name`, `Options` and implement `credits` and `step_loss`; a
    rule with saved state (feedback buffers, auxiliary nets) declares it in `state_spec`."""

    name: ClassVar[str] = ""
    # what tables and figures print for the rule; a class that sets none gets its name in
    # capitals (a subclass never inherits its parent's label: it would print as the parent)
    label: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    description: ClassVar[str] = ""
    state_note: ClassVar[str] = ""  # the saved state in words; a rule declaring none says why
    # the architectures (architectures.ARCHITECTURES) whose credit this rule defines, and why not
    # the others: the trainer refuses the others with this note before building anything
    architectures: ClassVar[tuple[str, ...]] = ("resmlp",)
    architecture_note: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "label" not in vars(cls):
            cls.label = cls.name.upper() if isinstance(cls.name, str) else ""

    def __init__(self, model: ResidualMLP, options: Any, generator: torch.Generator):
        super().__init__()
        problem = self.unsupported(architecture_of(model), options)
        if problem:
            raise ValueError(problem)
        self.options = options
        self.num_blocks = model.num_blocks
        self.model_shape = ModelShape.of(model)  # for metadata(): the state declared for it

    @classmethod
    def import_path(cls) -> str:
        """Where the class is imported from, module:Class (e.g. fa_nb_utils.rules:DFA): the name
        that finds the rule in a process that never imported it (`resolve_rule`)."""
        return f"{cls.__module__}:{cls.__qualname__}"

    @classmethod
    def unsupported(cls, architecture: str, options: Any) -> str | None:
        """Why this rule (with `options`) cannot train `architecture`, or None when it can."""
        if architecture in cls.architectures:
            return None
        why = f": {cls.architecture_note}" if cls.architecture_note else ""
        return (f"rule {cls.name!r} does not train architecture {architecture!r} (it trains "
                f"{', '.join(cls.architectures)}){why}")

    @classmethod
    def cost_hint(cls, options: Any) -> float:
        """A training step's cost relative to a DFA step (about 1 for BP, FA and DFA), for the
        grid's scheduling only: it submits the costliest runs first so that no long run starts
        last on an otherwise idle pool. Never used for any number a run reports."""
        return 1.0

    # -- saved state -------------------------------------------------------------------------
    def aux_lr_scale(self) -> float:
        """The learning rate of the rule's auxiliary nets relative to the model's (1 unless a
        rule says otherwise): the trainer gives them their own AdamW parameter group."""
        return 1.0

    def state_spec(self, model: ResidualMLP | ModelShape) -> list[StateSpec]:
        """The saved state the credit depends on beyond the model's weights, shaped for `model`,
        from its architecture numbers and the rule's options only (never from the rule's own
        tensors: those are what Γ checks against it). Default: nothing (BP, EP).
        """
        return []

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
        """What a run records about its rule: name, import path, options, description, and the
        saved state Γ needs (`state`: each declared piece's name, kind and shapes for the model
        it was built for; `state_note` says why when there is none)."""
        meta = {"rule": self.name, "import_path": self.import_path(),
                "options": dataclasses.asdict(self.options), "description": self.description,
                "state": [s.to_dict() for s in self.state_spec(self.model_shape)]}
        if self.state_note or not meta["state"]:
            meta["state_note"] = self.state_note or "none declared"
        return meta

    # -- the rule's job ----------------------------------------------------------------------
    def credits(self, model: ResidualMLP, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        """Per-sample credits [a_0, ..., a_L] at the current weights (detached)."""
        raise NotImplementedError

    def step_loss(self, model: ResidualMLP, x: torch.Tensor, y: torch.Tensor, *,
                  penalty_lambda: float = 0.0, frozen_blocks: bool = False) -> StepOutput:
        """The loss whose single backward gives every trainable parameter this rule's update
        (the trainer's backward reaches the optimizer's parameters only, no other leaf)."""
        raise NotImplementedError


# --- Shared pieces --------------------------------------------------------------------------------
class LocalForward(NamedTuple):
    """A forward pass with every block's input detached (values equal the ordinary forward's)."""

    logits: torch.Tensor        # out_head(out_ln(h_L.detach())): trains the terminal stack only
    hiddens: list[torch.Tensor]  # h_0 (with grad to embed), h_1..h_L
    branches: list[torch.Tensor]  # f_l(h_l.detach()) (with grad to block l only)
    h_last: torch.Tensor | None = None  # the leaf fed to readout, when terminal_leaf=True


def local_forward(model: ResidualMLP, x: torch.Tensor, *,
                  terminal_leaf: bool = False) -> LocalForward:
    """One forward with detached block inputs; terminal_leaf=True returns the h_L fed to the
    readout as a leaf `h_last`, so that a rule can take dCE/dh_L from this same forward (FA)."""
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


class StackedBlocks:
    """The L branches f_l as one batched map over stacked states (L, B, d): every block's weights
    stacked once (detached: no parameter gradients), so all layers take two batched matmuls
    instead of 2 L small ones. Matches `model.ResidualBlock` to rounding (tested).
    """

    def __init__(self, model):
        blocks = list(model.blocks)
        with torch.no_grad():
            self.ln_w = torch.stack([b.ln.weight for b in blocks])[:, None]      # (L, 1, d)
            self.ln_b = torch.stack([b.ln.bias for b in blocks])[:, None]
            self.eps = blocks[0].ln.eps
            self.w1 = torch.stack([b.fc1.weight.t() for b in blocks])            # (L, d, d)
            self.b1 = torch.stack([b.fc1.bias for b in blocks])[:, None]
            self.w2 = torch.stack([b.fc2.weight.t() for b in blocks])
            self.b2 = torch.stack([b.fc2.bias for b in blocks])[:, None]

    @staticmethod
    def fits(model) -> bool:
        """Whether `model` has blocks and all are ResidualBlocks (ln, fc1, fc2) to stack."""
        return len(model.blocks) > 0 and all(
            hasattr(b, "ln") and hasattr(b, "fc1") and hasattr(b, "fc2") for b in model.blocks)

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        z = F.layer_norm(h, h.shape[-1:], eps=self.eps) * self.ln_w + self.ln_b
        u = torch.baddbmm(self.b1, z, self.w1)
        return torch.baddbmm(self.b2, F.gelu(u, approximate="none"), self.w2)


def over_positions(a: torch.Tensor, dim: int) -> torch.Tensor:
    """A credit (..., B, d) viewed with size-1 position axes before its feature axis until it has
    `dim` dims, so that it broadcasts over the tokens of a (..., B, T, d) state."""
    while a.dim() < dim:
        a = a.unsqueeze(-2)
    return a


def residual_penalty(branches: list[torch.Tensor]) -> torch.Tensor:
    """Sum over blocks of the mean over batch *and features* of f_l(h_l)^2.

    The mean form: the only reduction that fits the paper's DFA numbers (docs/rules.md, "The
    residual penalty")."""
    return sum(f.pow(2).mean() for f in branches)


def local_loss(fwd: LocalForward, y: torch.Tensor, credits, *,
               penalty_lambda: float = 0.0, frozen_blocks: bool = False) -> torch.Tensor:
    """CE for the terminal stack + <h_0, a_0> for the embed + <f_l, a_{l+1}> for block l.

    `credits` is [a_0, ..., a_L] or the same stacked as one (L+1, B, ...) tensor. A credit with
    fewer dims than its state, (B, d) for (B, T, d) tokens, is broadcast over the positions (the
    same credit at every token). States of one shape are taken in one reduction over the
    stacked terms (fewer small ops), states of different sizes (the CNN's) term by term.
    """
    loss = F.cross_entropy(fwd.logits, y)
    outs = [fwd.hiddens[0]] if frozen_blocks else [fwd.hiddens[0], *fwd.branches]
    credits = credits[:len(outs)]
    if len({tuple(o.shape) for o in outs}) == 1:
        stacked = torch.stack(outs)
        a = credits if torch.is_tensor(credits) else torch.stack(list(credits))
        inner = stacked.mul(over_positions(a, stacked.dim())).sum()
    else:
        inner = sum(o.mul(over_positions(a, o.dim())).sum() for o, a in zip(outs, credits))
    loss = loss + inner / y.shape[0]
    if penalty_lambda and not frozen_blocks:
        loss = loss + penalty_lambda * residual_penalty(fwd.branches)
    return loss


def output_error(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """e = softmax(logits) - onehot(y): the per-sample gradient of CE with respect to the logits."""
    e = logits.detach().softmax(-1)
    return e - F.one_hot(y, e.shape[-1]).to(e.dtype)


def rms_normalise(a: torch.Tensor) -> torch.Tensor:
    """Per-sample RMS normalisation over the feature dim, a / (sqrt(mean(a^2)) + 1e-6): the
    `credit_norm="rms"` option of DFA and FA (unit RMS, so |a| = sqrt(d) per sample)."""
    return a / (a.pow(2).mean(-1, keepdim=True).sqrt() + RMS_EPS)


def check_choice(rule: str, name: str, value: Any, choices: tuple) -> None:
    """An option's check, with the message every rule gives: one of `choices`."""
    if value not in choices:
        raise ValueError(f"{rule} option {name} must be {' or '.join(map(repr, choices))}, "
                         f"got {value!r}")


def check_count(rule: str, name: str, value: Any, high: int | None = None) -> None:
    """An option's check: an int >= 1 (and <= `high`)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= (high or value):
        span = ">= 1" if high is None else f"in 1..{high}"
        raise ValueError(f"{rule} option {name} must be an int {span}, got {value!r}")


def check_number(rule: str, name: str, value: Any, *, positive: bool = True) -> None:
    """An option's check: a finite number > 0 (`positive`) or >= 0."""
    bad = isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
    if bad or (value <= 0 if positive else value < 0):
        raise ValueError(f"{rule} option {name} must be a finite number "
                         f"{'> 0' if positive else '>= 0'}, got {value!r}")


def bp_credits(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """Exact per-sample dCE_i/dh_k from one autograd.grad of the summed cross-entropy (in eval
    mode samples do not interact); parameters' .grad are left untouched."""
    with eval_mode(model), torch.enable_grad():
        x = x.detach().requires_grad_(True)  # keeps hiddens in the graph if params are frozen
        logits, hiddens = model(x, return_hidden=True)
        loss = F.cross_entropy(logits, y, reduction="sum")
        grads = torch.autograd.grad(loss, hiddens)
    return [g.detach() for g in grads]


# --- The rules ------------------------------------------------------------------------------------
@register_rule
class BP(Rule):
    """Backpropagation: a_k = dCE/dh_k exactly; the ordinary backward trains every parameter."""

    name = "bp"
    description = "backpropagation (exact gradient)"
    architectures = tuple(ARCHITECTURES)
    state_note = "none: the credit is the model's own exact gradient"

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
    credit_norm: str = "none"  # "none" (the paper's audit runs) or "rms" (the original worked
                               # example's form, kept by notebook 00)

    def __post_init__(self):
        check_choice("DFA", "credit_norm", self.credit_norm, ("none", "rms"))


@register_rule
class DFA(Rule):
    """Direct Feedback Alignment (docs/rules.md, "DFA").

    e = softmax(logits) - onehot(y); feedback B_l in R^{d x C} drawn randn / sqrt(C);
    a_0 = a_1 = e B_0^T and a_{l+1} = e B_l^T: L matrices for L + 1 hidden states, the embed
    sharing block 0's. Unnormalised by default, as the paper's audit runs were.

    ViT-Mini's (N, T, d) states get the same credit e B_l^T at every token. The CNN's states
    each have a size of their own, so each gets its own matrix, stored as one buffer `feedback`
    of shape (sum_k D_k, C) whose row blocks are B_0..B_L.
    """

    name = "dfa"
    Options = DFAOptions
    description = "direct feedback alignment, e B_l^T"
    architectures = ("resmlp", "vit", "cnn")

    def __init__(self, model, options, generator):
        super().__init__(model, options, generator)
        self.state_sizes = self.model_shape.state_sizes
        shape = self.state_spec(self.model_shape)[0].shape
        self.register_buffer("feedback", torch.randn(*shape, generator=generator)
                             / model.num_classes ** 0.5)

    def state_spec(self, model):
        shape = model if isinstance(model, ModelShape) else ModelShape.of(model)
        if shape.state_sizes is not None:
            return [StateSpec.buffer("feedback", (sum(shape.state_sizes), shape.num_classes))]
        return [StateSpec.buffer("feedback",
                                 (max(shape.num_blocks, 1), shape.d_hidden, shape.num_classes))]

    def metadata(self):
        meta = super().metadata()
        meta["credit_form"] = ("e B^T / (rms + 1e-6)" if self.options.credit_norm == "rms"
                               else "e B^T (unnormalised)")
        meta["feedback_init"] = "randn(d, C) / sqrt(C)"
        if self.state_sizes is not None:
            meta["feedback_init"] = ("randn(D_k, C) / sqrt(C) per state, stacked along rows: "
                                     f"D_k = {list(self.state_sizes)}")
        return meta

    def credits_from_error(self, e: torch.Tensor):
        """Credits from the output error e (B, C): stacked (L+1, B, d) for states of width d,
        a_0 = e B_0^T, a_{l+1} = e B_l^T, in one einsum; a list [(B, D_k)] for the CNN's."""
        fb = self.feedback.to(e.dtype)
        if self.state_sizes is not None:
            parts = (e @ fb.T).split(list(self.state_sizes), dim=1)
            return [rms_normalise(a) if self.options.credit_norm == "rms" else a for a in parts]
        pairing = [0] + list(range(self.num_blocks))  # h_0 and h_1 both use B_0
        a = torch.einsum("bc,kdc->kbd", e, fb[pairing])
        return rms_normalise(a) if self.options.credit_norm == "rms" else a

    def credits(self, model, x, y):
        with eval_mode(model), torch.no_grad():
            logits, hiddens = model(x, return_hidden=True)
        credits = self.credits_from_error(output_error(logits, y))
        # (B, d) credits of (B, T, d) token states: the same credit at every token
        return [over_positions(a, h.dim()).expand_as(h).contiguous()
                for a, h in zip(credits, hiddens)]

    def step_loss(self, model, x, y, *, penalty_lambda=0.0, frozen_blocks=False):
        fwd = local_forward(model, x)
        credits = self.credits_from_error(output_error(fwd.logits, y))
        loss = local_loss(fwd, y, credits, penalty_lambda=penalty_lambda,
                          frozen_blocks=frozen_blocks)
        return StepOutput(loss, fwd.logits.detach())


FA_FORMS = ("paper", "backward")


@dataclass(frozen=True)
class FAOptions:
    form: str = "paper"        # "paper" (a_k = B_k a_{k+1}) or "backward" (Lillicrap)
    credit_norm: str = "none"  # "none" or "rms" (per-sample RMS, applied to every a_k)

    def __post_init__(self):
        check_choice("FA", "form", self.form, FA_FORMS)
        check_choice("FA", "credit_norm", self.credit_norm, ("none", "rms"))


def gelu_derivative(u: torch.Tensor) -> torch.Tensor:
    """d GELU(u)/du for the exact (erf) GELU: Phi(u) + u phi(u), as in torch's own backward."""
    cdf = 0.5 * (1.0 + torch.erf(u * 0.5 ** 0.5))
    pdf = torch.exp(-0.5 * u * u) / (2.0 * torch.pi) ** 0.5
    return cdf + u * pdf


@register_rule
class FA(Rule):
    """Feedback Alignment (docs/rules.md, "FA"): the exact per-sample dCE/dh_L carried down by
    fixed random d x d matrices, trained with DFA's local losses.

    - "paper": a_k = B_k a_{k+1} (buffer `feedback`, (L, d, d)): one matrix stands in for a
      block's whole backward, so in general no B_k reproduces BP.
    - "backward" (Lillicrap et al. 2016): through each block's own LayerNorm and GELU
      derivatives, only the weight transposes random:
          a_l = a_{l+1} + J_LN(h_l)^T R1_l (gelu'(u_l) * R2_l a_{l+1})
      (R1 for W1^T: `feedback_w1`, R2 for W2^T: `feedback_w2`; no `a_{l+1} +` without the
      residual add). With R2_l = W2_l^T and R1_l = W1_l^T this is BP exactly (tested).

    Feedback is randn(d, d) / sqrt(d), so the credit keeps its size in expectation.
    credit_norm="rms" divides every a_k by its per-sample RMS after propagation.
    """

    name = "fa"
    Options = FAOptions
    description = "feedback alignment: exact dCE/dh_L, fixed random d x d feedback below"
    architecture_note = (
        "FA's credit is a_k = B_k a_{k+1} with d x d matrices, or a backward through the "
        "ResidualMLP block's own LayerNorm and GELU. On ViT-Mini the exact top credit dCE/dh_L "
        "lives on the cls token alone (the readout reads nothing else), and a per-token B_k "
        "never moves it to the patch tokens, so the patch embedding would get no credit at all; "
        "on the CNN a dense B_k between whole feature maps (32768 x 16384 between the default "
        "CNN's first two states) "
        "would stand in for a convolution, and random convolution kernels are not implemented")

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

    def state_spec(self, model):
        shape = (model.num_blocks, model.d_hidden, model.d_hidden)
        names = ("feedback",) if self.options.form == "paper" else ("feedback_w1", "feedback_w2")
        return [StateSpec.buffer(n, shape) for n in names]

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
        """[a_0..a_L] (detached) from a forward's hidden states and its logits = readout(h_last);
        the graph is retained so that the step's single backward can still train the head."""
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
    """Instantiate a rule named by its name or import path (`resolve_rule`)."""
    cls = resolve_rule(name)
    return cls(model, cls.parse_options(options), generator)
