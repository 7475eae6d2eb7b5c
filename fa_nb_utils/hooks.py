r"""Any model, no rewrite: read the residual stream from named modules with forward hooks.

    report = diagnose(vit, eval_batches, hidden_modules=["embed", "blocks.0", "blocks.1"])
    report = diagnose(vit, eval_batches, hidden_modules=r"embed|blocks\.\d+")   # a regex

The protocol needs the hidden states h_0..h_L of the forward graph. A model written for the
protocol returns them (`forward(x, return_hidden=True)`); any other model can name the modules
whose *outputs* are those states, and `HookedModel` collects them with forward hooks:

- `hidden_modules` is a list of module names (as in `model.named_modules()`), in the order
  h_0, h_1, ... the forward computes them (a list in another order is refused, with the order
  they ran in), or one regular expression matched in full against every name, the states then
  taken in the order the forward computes them (`r"blocks\.\d+"` picks "blocks.0", "blocks.1",
  ... but not "blocks.0.ln");
- each named module must run exactly once per forward and return a tensor, (N, d) or (N, T, d),
  which is kept as it is: the live tensor of the graph, so gradients flow to it;
- the model's own output must be the logits, (N, C): a tuple or list is read at index 0 and an
  object with a `.logits` attribute (a Hugging Face output) at `.logits`; `logits_fn` maps
  anything else. A module called through `.forward()` directly skips its hooks: name the
  modules the model calls;
- the hooks exist only during each forward and are removed afterwards, on error too.

A name that does not exist, a module that runs twice in one forward (a shared block, or a module
also used outside the stream) or never, and an output that is not a tensor each raise a
`ModelContractError` that names the module and the fix.
Not here: the measurement (measures.py), the report (report.py).
"""
from __future__ import annotations

import difflib
import re
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn as nn

HiddenModules = Union[Sequence[str], str, "re.Pattern[str]"]


def _contract_error(message: str) -> Exception:
    from .measures import ModelContractError  # measures imports this module
    return ModelContractError(message)


def resolve_hidden_modules(model: nn.Module, hidden_modules: HiddenModules) -> list[str]:
    """The module names `hidden_modules` selects, in order (checked: they exist, >= 1)."""
    names = [n for n, _ in model.named_modules() if n]
    if isinstance(hidden_modules, (str, re.Pattern)):
        try:
            pattern = re.compile(hidden_modules) if isinstance(hidden_modules, str) \
                else hidden_modules
        except re.error as exc:
            raise ValueError(f"hidden_modules {hidden_modules!r} is not a valid regular "
                             f"expression ({exc}); pass a list of module names instead") from exc
        chosen = [n for n in names if pattern.fullmatch(n)]
        if not chosen:
            raise _contract_error(
                f"hidden_modules pattern {pattern.pattern!r} matches none of the model's "
                f"{len(names)} module names (matched in full; e.g. {', '.join(names[:6])}). "
                "List them in model.named_modules() and name the ones whose outputs are the "
                "residual stream")
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
    known = set(names)
    for n in chosen:
        if n not in known:
            close = difflib.get_close_matches(n, names, n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise _contract_error(f"hidden_modules names {n!r}, which is not a module of this "
                                  f"model (model.named_modules()){hint}")
    return chosen


class HookedModel(nn.Module):
    """`model` with the protocol's contract: `forward(x, return_hidden=True)` returns
    `(logits, [outputs of the named modules])`, collected by forward hooks during that forward,
    in the order the forward computes them.

    `logits_fn`: maps the model's output to the (N, C) logits (default: the output itself, its
    first element when it is a tuple or list, or its `.logits`).
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
        modules = dict(self.model.named_modules())
        seen: dict[str, torch.Tensor] = {}
        handles = []

        def hook_for(name: str):
            def hook(module, inputs, output):
                if name in seen:
                    raise _contract_error(
                        f"module {name!r} ran more than once in one forward: its output is not one "
                        "hidden state (a block shared across depth, or a module reused outside "
                        "the stream). Name a module that runs once per forward, or wrap the "
                        "model to return its hidden states (forward(x, return_hidden=True))")
                if not torch.is_tensor(output):
                    raise _contract_error(
                        f"module {name!r} returned a {type(output).__name__}, not a tensor: name "
                        "the module whose output is the residual stream itself (for a block that "
                        "returns a tuple, a submodule or a wrapper that returns the tensor)")
                seen[name] = output
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
            raise _contract_error(f"module(s) {missing} did not run in the forward: they cannot "
                                  "give hidden states. Name modules on the forward path (a "
                                  "module called through .forward() directly skips hooks)")
        ran = list(seen)  # dicts keep insertion order: the order the outputs were computed
        if not self.by_pattern and ran != self.names:
            raise _contract_error(f"hidden_modules {self.names} are not in the order the forward "
                                  f"computes them ({ran}): list h_0, h_1, ... in that order")
        return logits, [seen[n] for n in ran]

    def extra_repr(self) -> str:
        return f"hidden_modules={self.names}"


def with_hidden_modules(model: nn.Module, hidden_modules: Optional[HiddenModules],
                        logits_fn: Optional[Callable] = None) -> nn.Module:
    """`model` itself when `hidden_modules` is None, else a `HookedModel` around it."""
    if hidden_modules is None:
        if logits_fn is not None:
            raise ValueError("logits_fn is used with hidden_modules only; a model that returns "
                             "its hidden states returns its logits too")
        return model
    return HookedModel(model, hidden_modules, logits_fn)
