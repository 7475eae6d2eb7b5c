r"""Any model, no rewrite: read the residual stream from named modules with forward hooks.

    report = diagnose(vit, eval_batches, hidden_modules=r"embed|blocks\.\d+")   # or a list

`HookedModel` gives a model without `return_hidden` the protocol's contract: the outputs of the
named modules (a list in forward order, or one regular expression matched in full against
`named_modules()` names, aliases included) are h_0..h_L, kept as the live graph tensors; the
model's output is the logits (a tuple's first element or `.logits` by default, else `logits_fn`).
The hooks exist only during each forward. A module missing, run twice or never, a non-tensor
output or one edited in place raises an error that names the module and the fix.
Not here: the measurement (measures.py), the report (report.py).
"""
from __future__ import annotations

import difflib
import re
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn as nn

from .measures import ModelContractError, overlaps

HiddenModules = Union[Sequence[str], str, "re.Pattern[str]"]


def _named_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every name a submodule is registered under, aliases included (`m.first = m.adds[0]`
    registers one module as "adds.0" and "first"; `named_modules()` lists it once)."""
    return {n: m for n, m in model.named_modules(remove_duplicate=False) if n}


def _too_few(chosen: list[str], what: str) -> str:
    found = ", ".join(map(repr, chosen)) or "none"
    return (f"hidden_modules {what} selects {len(chosen)} module(s) ({found}): the protocol "
            "needs the hidden states h_0..h_L, at least two (h_0 and one block's output). Name "
            "the module whose output is h_0 (the embedding) and each block's")


def resolve_hidden_modules(model: nn.Module, hidden_modules: HiddenModules) -> list[str]:
    """The module names `hidden_modules` selects, in order (checked: they exist, each module
    once, at least 2). A module registered under several names may be named by any of them."""
    named = _named_modules(model)
    names = list(named)
    if isinstance(hidden_modules, (str, re.Pattern)):
        try:
            pattern = re.compile(hidden_modules) if isinstance(hidden_modules, str) \
                else hidden_modules
        except re.error as exc:
            raise ValueError(f"hidden_modules {hidden_modules!r} is not a valid regular "
                             f"expression ({exc}); pass a list of module names instead") from exc
        chosen, modules = [], set()
        for n in names:  # a module matched under two of its names counts once
            if pattern.fullmatch(n) and id(named[n]) not in modules:
                chosen.append(n)
                modules.add(id(named[n]))
        if not chosen:
            raise ModelContractError(
                f"hidden_modules pattern {pattern.pattern!r} matches none of the model's "
                f"{len(names)} module names (matched in full; e.g. {', '.join(names[:6])}). "
                "List them in model.named_modules() and name the ones whose outputs are the "
                "residual stream")
        if len(chosen) < 2:
            raise ModelContractError(_too_few(chosen, f"pattern {pattern.pattern!r} (matched in "
                                                   "full against model.named_modules() names)"))
        return chosen
    try:
        chosen = list(hidden_modules)
    except TypeError:
        raise TypeError(f"hidden_modules must be a list of module names or a regular expression, "
                        f"got {type(hidden_modules).__name__}") from None
    if not chosen:
        raise ValueError("hidden_modules is empty: name the modules whose outputs are h_0..h_L")
    bad = [n for n in chosen if not isinstance(n, str)]
    if bad:
        raise TypeError(f"hidden_modules must hold module names (str), got {bad[0]!r}")
    dup = sorted({n for n in chosen if chosen.count(n) > 1})
    if dup:
        raise ValueError(f"hidden_modules names {dup} more than once: each hidden state is one "
                         "module's output")
    for n in chosen:
        if n not in named:
            close = difflib.get_close_matches(n, names, n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ModelContractError(f"hidden_modules names {n!r}, which is not a module of this "
                                  f"model (model.named_modules()){hint}")
    for i, n in enumerate(chosen):
        same = [m for m in chosen[i + 1:] if named[m] is named[n]]
        if same:
            raise ValueError(f"hidden_modules names {n!r} and {same[0]!r}, which are the same "
                             "module (registered under both names): each hidden state is one "
                             "module's output; name it once")
    if len(chosen) < 2:
        raise ValueError(_too_few(chosen, f"{chosen!r}"))
    return chosen


class HookedModel(nn.Module):
    """`model` with the protocol's contract: `forward(x, return_hidden=True)` returns
    `(logits, [outputs of the named modules])`, collected by forward hooks in forward order.
    `logits_fn`: the model's output -> (N, C) logits (default: the output, its first element, or
    its `.logits`).
    """

    def __init__(self, model: nn.Module, hidden_modules: HiddenModules,
                 logits_fn: Optional[Callable] = None):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.names = resolve_hidden_modules(model, hidden_modules)
        self.by_pattern = isinstance(hidden_modules, (str, re.Pattern))
        self.logits_fn = logits_fn

    def _logits(self, out):
        if self.logits_fn is not None:
            return self.logits_fn(out)
        if isinstance(out, (tuple, list)) and out:
            return out[0]
        if hasattr(out, "logits"):
            return out.logits
        return out

    def forward(self, x, return_hidden: bool = False):
        if not return_hidden:
            return self._logits(self.model(x))
        modules = _named_modules(self.model)
        seen: dict[str, torch.Tensor] = {}
        versions: dict[str, Optional[int]] = {}  # autograd version counter when each module ran
        handles = []

        def hook_for(name: str):
            def hook(module, inputs, output):
                if name in seen:
                    raise ModelContractError(
                        f"module {name!r} ran more than once in one forward: its output is not one "
                        "hidden state (a block shared across depth, or a module reused outside "
                        "the stream). Name a module that runs once per forward, or wrap the "
                        "model to return its hidden states (forward(x, return_hidden=True))")
                if not torch.is_tensor(output):
                    raise ModelContractError(
                        f"module {name!r} returned a {type(output).__name__}, not a tensor: name "
                        "the module whose output is the residual stream itself (for a block that "
                        "returns a tuple, a submodule or a wrapper that returns the tensor)")
                seen[name] = output
                versions[name] = None if output.is_inference() else output._version
            return hook

        try:
            for name in self.names:
                handles.append(modules[name].register_forward_hook(hook_for(name)))
            logits = self._logits(self.model(x))
        finally:
            for h in handles:
                h.remove()
        missing = [n for n in self.names if n not in seen]
        if missing:
            raise ModelContractError(f"module(s) {missing} did not run in the forward: they cannot "
                                  "give hidden states. Name modules on the forward path (a "
                                  "module called through .forward() directly skips hooks)")
        ran = list(seen)  # dicts keep insertion order: the order the outputs were computed
        if not self.by_pattern and ran != self.names:
            raise ModelContractError(f"hidden_modules {self.names} are not in the order the forward "
                                  f"computes them ({ran}): list h_0, h_1, ... in that order")
        _check_states(ran, seen, versions)
        return logits, [seen[n] for n in ran]

    # `_check_states` refuses edits made after a module returned its output; edits a module
    # makes to its own output before returning it are its output (measures.layer_stats)
    checks_in_place_edits = True

    def extra_repr(self) -> str:
        return f"hidden_modules={self.names}"


def _check_states(ran: list[str], seen: dict, versions: dict) -> None:
    """Refuse states that are not one module's own output, naming the modules: two modules
    returning the same tensor (a pass-through, or an in-place update of the earlier output), or
    an output edited in place after its module returned it (autograd's version counters)."""
    for i, a in enumerate(ran):
        for b in ran[i + 1:]:
            if not overlaps(seen[a], seen[b]):
                continue
            what = "the same tensor object" if seen[a] is seen[b] else "views of the same memory"
            if versions[a] == versions[b]:
                raise ModelContractError(
                    f"modules {a!r} and {b!r} returned {what}: an identity-like module passes "
                    f"its input through (nn.Identity, a dropout in eval mode, a reshape), so "
                    f"they are one hidden state. Name one of them (e.g. {a!r}), not both")
            raise ModelContractError(
                f"module {b!r} edited the output of {a!r} in place and returned it (e.g. `h += "
                f"f(h)` or nn.ReLU(inplace=True) inside {b!r}), so {a!r} would be reported with "
                f"{b!r}'s values. Make that op out of place in the model (`h = h + f(h)`), or "
                f"name only one of them")
    edited = [n for n in ran if versions[n] is not None and seen[n]._version != versions[n]]
    if edited:
        raise ModelContractError(
            f"the output of module(s) {edited} was edited in place after the module ran (a later "
            "in-place op on it in the model's forward, e.g. `h.relu_()`, `h += v`, `h[...] = v`), "
            "so the report would show the edited values, not the module's output. Name a module "
            "whose output is not edited afterwards (e.g. the next one), or make the model's op "
            "out of place (`h = F.relu(h)`, `h = h + v`)")


def with_hidden_modules(model: nn.Module, hidden_modules: Optional[HiddenModules],
                        logits_fn: Optional[Callable] = None) -> nn.Module:
    """`model` itself when `hidden_modules` is None, else a `HookedModel` around it."""
    if hidden_modules is None:
        if logits_fn is not None:
            raise ValueError("logits_fn is used with hidden_modules only; a model that returns "
                             "its hidden states returns its logits too")
        return model
    return HookedModel(model, hidden_modules, logits_fn)
