"""The per-layer numbers of the protocol, from one forward and one backward on the eval batches
(`layer_stats`), with the measurement conventions of docs/protocol.md: medians pooled over samples
(and positions); per-sample BP gradients from one backward of the summed CE, divided by 128 (the
paper's scale); backward gains ||J_l^T u|| for the unit output error u (so ||g_l|| = ||e|| x gain:
a small ||g_L|| is little error or a collapsed backward); at least fp32, norms in float64.

`layer_stats` checks the model's contract (`CONTRACT`) and leaves the model as it found it.
`MEASUREMENTS` names the numbers taken from that pass; `diagnose` and the trace both call
`measure`, so they never disagree.
Not here: the verdicts (diagnostics.py), the report (report.py), Γ (alignment.py).
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Any, Callable, Iterator, NamedTuple, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

PAPER_GRAD_BATCH = 128  # paper scale: gradient of the batch-mean CE over a batch of 128


class LayerStats(NamedTuple):
    residual_norms: list[float]     # median ||h_l||, l = 0..L
    bp_grad_norms: list[float]      # median per-sample ||g_l|| on the paper scale, l = 0..L
    per_sample_h: list[np.ndarray]  # float64 ||h_l|| per sample (and position)
    per_sample_g: list[np.ndarray]  # float64 ||g_l|| per sample, paper scale
    grads: list[torch.Tensor]       # per-sample g_l on the paper scale (float64, on CPU)
    logits: torch.Tensor            # detached, on the model's device
    hiddens: list[torch.Tensor]     # detached h_l, on the model's device
    backward_gains: list[float]     # median per-sample ||J_l^T u||, u the unit output error
    per_sample_gain: list[np.ndarray]  # float64 ||J_l^T u|| per sample
    error_norm: float               # median ||softmax - onehot|| (float64, exact when tiny)


class ModelContractError(TypeError):
    """The model does not follow `forward(x, return_hidden=True) -> (logits, [h_0..h_L])`."""


CONTRACT = ("forward(x, return_hidden=True) must return (logits, [h_0, ..., h_L]): logits of shape "
            "(N, C) and the live hidden-state tensors of the forward graph, (N, d) or (N, T, d), "
            "never modified in place")


def check_model_tensors(model: nn.Module) -> None:
    """Refuse parameters or buffers that autograd cannot use: on the meta device (shapes, no
    values) or inference tensors (made under torch.inference_mode(), never usable by autograd)."""
    named = list(model.named_parameters()) + list(model.named_buffers())
    meta = [n for n, t in named if t.is_meta]
    if meta:
        raise ValueError(
            f"model parameters are on the meta device (no data): {len(meta)} tensor(s), e.g. "
            f"{meta[0]!r}. Load the weights (model.load_state_dict(state, assign=True)) or call "
            "model.to_empty(device='cpu') and initialise or load them before diagnosing")
    inference = [n for n, t in named if t.is_inference()]
    if inference:
        raise ValueError(
            f"model parameters are inference tensors ({len(inference)} tensor(s), e.g. "
            f"{inference[0]!r}): the model was built or loaded under torch.inference_mode(), and "
            "autograd cannot use such tensors. Build or load it outside inference_mode, or pass "
            "a normal copy: model = copy.deepcopy(model) (outside inference_mode)")


@contextlib.contextmanager
def autograd_on() -> Iterator[None]:
    """Autograd enabled for the block, inside `torch.no_grad()` or `torch.inference_mode()` too."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def as_normal_tensor(t: torch.Tensor) -> torch.Tensor:
    """An inference tensor (made under torch.inference_mode) cloned so autograd can use it."""
    if t.is_inference():
        with torch.inference_mode(False):
            return t.clone()
    return t


@contextlib.contextmanager
def params_require_grad(model: nn.Module) -> Iterator[nn.Module]:
    """Every floating parameter with requires_grad=True for the block; the flags restored after
    (a frozen model on integer inputs would otherwise compute its states outside the graph).
    """
    frozen = [p for p in model.parameters() if p.is_floating_point() and not p.requires_grad]
    try:
        for p in frozen:
            p.requires_grad_(True)
        yield model
    finally:
        for p in frozen:
            p.requires_grad_(False)


def compute_dtype(model: nn.Module) -> torch.dtype:
    """The model's floating dtype promoted to at least fp32 (fp16 underflows hidden gradients)."""
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if torch.float64 in dtypes:
        return torch.float64
    return torch.float32


def per_sample_norms(t: torch.Tensor, over_all_non_batch: bool) -> np.ndarray:
    """float64 L2 norms: over the feature dim (per position) or over every non-batch dim."""
    t = t.detach().to(torch.float64)
    if over_all_non_batch:
        return t.reshape(t.shape[0], -1).norm(dim=1).cpu().numpy()
    return t.norm(dim=-1).reshape(-1).cpu().numpy()


def _storage_versions(tensors) -> dict[int, int]:
    """Autograd version counter of each tensor's storage, keyed by the storage's address."""
    out = {}
    for t in tensors:
        if torch.is_tensor(t) and not t.is_inference():
            ptr = t.untyped_storage().data_ptr()
            if ptr:
                out[ptr] = t._version
    return out


def _check_not_modified_in_place(hiddens: list[torch.Tensor], before: dict[int, int]) -> None:
    """Refuse hidden states that an in-place op touched during the forward (`h.mul_(2)` after
    the state was appended): their version counter moved. Views of the input or of a parameter
    are compared with that tensor's counter before the forward, so the caller's edits are not
    blamed."""
    edited = []
    for l, h in enumerate(hiddens):
        if h.is_inference():
            continue
        ptr = h.untyped_storage().data_ptr()
        if h._version != before.get(ptr, 0):
            edited.append(l)
    if edited:
        names = ", ".join(f"h_{l}" for l in edited)
        raise ModelContractError(
            f"hidden state(s) {names} were modified in place during the forward (their autograd "
            "version counter moved): a state appended to the returned list and then edited "
            "(e.g. `F.relu(h, inplace=True)`, `h.mul_(2)`, `h[...] = v`) would be reported with "
            "the edited values. Use out-of-place ops on the tensors the model returns (`h = "
            f"F.relu(h)`, `h = h * 2`); in-place ops on other tensors are fine; {CONTRACT}")


def _check_forward_output(out, n: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise ModelContractError(f"the model returned {type(out).__name__}; {CONTRACT}")
    logits, hiddens = out
    if not torch.is_tensor(logits) or logits.dim() != 2 or logits.shape[0] != n:
        shape = tuple(logits.shape) if torch.is_tensor(logits) else type(logits).__name__
        raise ModelContractError(f"logits must have shape ({n}, C), got {shape}; {CONTRACT}")
    if not isinstance(hiddens, (list, tuple)) or len(hiddens) == 0:
        raise ModelContractError(f"the model returned no hidden states; {CONTRACT}")
    for l, h in enumerate(hiddens):
        if not torch.is_tensor(h) or h.dim() not in (2, 3) or h.shape[0] != n:
            shape = tuple(h.shape) if torch.is_tensor(h) else type(h).__name__
            raise ModelContractError(f"hidden state h_{l} must be (N, d) or (N, T, d) with N={n}, "
                                     f"got {shape}; {CONTRACT}")
    _check_no_aliasing(hiddens)
    return logits, list(hiddens)


def overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors share memory (the same tensor, or views of one)."""
    if a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return False
    sa, sb = a.data_ptr(), b.data_ptr()
    return sa < sb + b.numel() * b.element_size() and sb < sa + a.numel() * a.element_size()


def _check_no_aliasing(hiddens: list[torch.Tensor]) -> None:
    """Refuse hidden states that share memory: the stream was updated in place (h += f(h))."""
    for i, a in enumerate(hiddens):
        for j in range(i + 1, len(hiddens)):
            if overlaps(a, hiddens[j]):
                raise ModelContractError(
                    f"hidden states h_{i} and h_{j} share memory: the model updates the residual "
                    "stream in place (e.g. `h += f(h)`) and returns the same tensor more than once, "
                    "so every layer would report the last layer's values. Write `h = h + f(h)` "
                    "and append the new tensor.")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """`model` in eval mode for the block; afterwards every submodule gets back its own mode.

    (`model.train(was_training)` would set a deliberately eval-mode part back to train mode.)
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def unit_output_errors(logits: torch.Tensor, y: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(u, ||e||) per sample, in float64: u = e / ||e|| for e = softmax(logits) - onehot(y).

    Computed without forming e, which underflows for a confident sample (softmax rounds to the
    one-hot vector, e to 0, and its direction is lost): with m the largest logit other than
    the label's, e is exp(z_m - logsumexp(z)) times e', where e'_j = exp(z_j - z_m) for j != y
    and e'_y = -sum_{j != y} e'_j (softmax sums to 1). e' has an entry equal to 1, so it never
    underflows and u = e' / ||e'||; ||e|| = exp(z_m - logsumexp(z)) ||e'|| (0 only when it is
    below float64's range). Needs at least 2 classes.
    """
    z = logits.detach().to(torch.float64)
    if z.dim() != 2 or z.shape[1] < 2:
        raise ValueError(f"unit output errors need (N, C) logits with C >= 2, got {tuple(z.shape)}")
    y = y.to(z.device).long()
    label = F.one_hot(y, z.shape[1]).bool()
    others = z.masked_fill(label, float("-inf"))
    z_m = others.max(dim=1, keepdim=True).values
    e = torch.exp(others - z_m)                     # 0 at the label, 1 at m
    e = e.masked_scatter(label, -e.sum(dim=1))      # e'_y = -sum of the others
    size = e.norm(dim=1)
    u = e / size[:, None]
    norm = torch.exp(z_m[:, 0] - torch.logsumexp(z, dim=1)) * size
    return u, norm


def layer_stats(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                min_states: int = 1) -> LayerStats:
    """Hidden-state and BP-gradient norms for every layer from one forward and one backward.

    Eval mode, at least fp32, autograd on whatever the caller's grad mode; the model's mode,
    parameters and .grad are left as they were found. `min_states`: fewer returned hidden states
    are refused before the backward.
    """
    check_model_tensors(model)
    dtype = compute_dtype(model)
    work = model
    if any(p.is_floating_point() and p.dtype not in (torch.float32, torch.float64)
           for p in model.parameters()):
        with torch.inference_mode(False):
            work = copy.deepcopy(model).to(dtype)  # fp16/bf16: compute in fp32, original untouched
    with eval_mode(work), autograd_on(), params_require_grad(work):
        x, y = as_normal_tensor(x), as_normal_tensor(y)
        xin = x.detach().to(dtype) if x.is_floating_point() else x.detach()
        if xin.is_floating_point():
            xin.requires_grad_(True)  # keeps the hidden states in the graph if params are frozen
        before = _storage_versions([xin] + list(work.parameters()) + list(work.buffers()))
        try:
            out = work(xin, return_hidden=True)
        except ModelContractError:
            raise  # already names the problem (e.g. a hidden_modules hook)
        except TypeError as exc:
            raise ModelContractError(f"calling model(x, return_hidden=True) failed ({exc}); "
                                     f"{CONTRACT}") from exc
        logits, hiddens = _check_forward_output(out, x.shape[0])
        if len(hiddens) < min_states:
            raise ModelContractError(
                f"the model returned {len(hiddens)} hidden state(s); the protocol needs h_0 and "
                f"at least one block's output (h_0..h_L, L >= 1, at least {min_states} states): "
                "a model without blocks has no residual stream to audit; " + CONTRACT)
        n_cls = logits.shape[1]
        if int(y.min()) < 0 or int(y.max()) >= n_cls:
            raise ValueError(f"labels must be in 0..{n_cls - 1} for a model with {n_cls} "
                             f"logits; got labels in {int(y.min())}..{int(y.max())}")
        missing = [l for l, h in enumerate(hiddens) if not h.requires_grad]
        if missing:
            raise ModelContractError(f"hidden state(s) {missing} are not part of the autograd "
                                     f"graph (detached or computed under no_grad); {CONTRACT}")
        if not getattr(work, "checks_in_place_edits", False):  # HookedModel checks per module
            _check_not_modified_in_place(hiddens, before)
        loss = F.cross_entropy(logits.to(dtype), y, reduction="sum")
        grads = torch.autograd.grad(loss, hiddens, allow_unused=True, retain_graph=True)
        unused = [l for l, g in enumerate(grads) if g is None]
        if unused:
            raise ModelContractError(f"hidden state(s) {unused} do not influence the logits (the "
                                     "model returned copies, not the tensors it computed with); "
                                     f"{CONTRACT}")
        u, err = unit_output_errors(logits, y)
        # the backward gain: the same graph's VJP of each sample's unit output error
        gains = torch.autograd.grad((logits.to(dtype) * u.to(logits.device, dtype)).sum(), hiddens)
    grads64 = [g.detach().to(torch.float64).cpu() / PAPER_GRAD_BATCH for g in grads]
    per_h = [per_sample_norms(h, over_all_non_batch=False) for h in hiddens]
    per_g = [per_sample_norms(g, over_all_non_batch=True) for g in grads64]
    per_gain = [per_sample_norms(g, over_all_non_batch=True) for g in gains]
    return LayerStats(
        residual_norms=[float(np.median(v)) for v in per_h],
        bp_grad_norms=[float(np.median(v)) for v in per_g],
        per_sample_h=per_h,
        per_sample_g=per_g,
        grads=grads64,
        logits=logits.detach(),
        hiddens=[h.detach() for h in hiddens],
        backward_gains=[float(np.median(v)) for v in per_gain],
        per_sample_gain=per_gain,
        error_norm=float(np.median(err.cpu().numpy())),
    )


def correct_predictions(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per row: top-1 prediction == label, and never for a row with a non-finite logit (the
    argmax of a NaN row is class 0, so NaN logits would score the share of class 0)."""
    return (logits.argmax(-1) == y.to(logits.device)) & torch.isfinite(logits).all(-1)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000,
             head_logits: torch.Tensor | None = None) -> float:
    """Top-1 accuracy in eval mode (mode restored afterwards); rows with a non-finite logit
    count as wrong (`correct_predictions`). `head_logits`: the model's eval-mode logits of the
    first rows of x, already computed (the trace's eval batches), which are not recomputed."""
    if len(y) == 0:
        raise ValueError("accuracy: no samples to evaluate")
    start = 0 if head_logits is None else len(head_logits)
    if start > len(y):
        raise ValueError(f"accuracy: {start} head logits for {len(y)} samples")
    with eval_mode(model):
        correct = (0 if head_logits is None
                   else correct_predictions(head_logits, y[:start]).sum().item())
        for i in range(start, len(y), batch_size):
            correct += correct_predictions(model(x[i:i + batch_size]),
                                           y[i:i + batch_size]).sum().item()
    return correct / len(y)


def cosine64(u: np.ndarray, v: np.ndarray) -> float:
    """Hand-written cosine in float64 with no eps clamp (F.cosine_similarity clamps at 1e-8,
    which shrinks cosines of vectors near the floor: pitfall 2). Zero vectors give NaN."""
    u = np.asarray(u, dtype=np.float64).ravel()
    v = np.asarray(v, dtype=np.float64).ravel()
    denom = np.sqrt(u @ u) * np.sqrt(v @ v)
    return float(u @ v / denom) if denom > 0 else float("nan")


def cross_batch_stability(grads: torch.Tensor, batch_sizes: list[int]) -> float:
    """Diagnostic (c), cross-batch direction stability: the mean cosine, over unordered pairs of
    eval batches, between the batches' BP gradient directions.

    A batch's direction is the normalised mean of its samples' dCE/dh (not of unit vectors,
    which the many tiny, confident samples would dominate). Needs >= 2 batches.
    """
    if len(batch_sizes) < 2:
        raise ValueError(f"cross-batch direction stability needs at least 2 eval batches (8 or "
                         f"more recommended), got {len(batch_sizes)}")
    g = grads.detach().to(torch.float64).reshape(grads.shape[0], -1).cpu().numpy()
    means, start = [], 0
    for n in batch_sizes:
        means.append(g[start:start + n].mean(axis=0))
        start += n
    cos = [cosine64(means[i], means[j])
           for i in range(len(means)) for j in range(i + 1, len(means))]
    return float(np.mean(cos))


# --- Measurements: the numbers taken from one eval pass -------------------------------------------
# What one forward/backward on the eval batches offers a measurement (EvalPass):
PASS_PARTS = ("hidden_states", "bp_grads", "unit_error_backward", "logits", "batch_sizes")


class EvalPass(NamedTuple):
    """One forward/backward on the eval batches (`layer_stats`), the labels and the batches."""

    stats: LayerStats
    labels: torch.Tensor
    batch_sizes: Optional[tuple] = None     # None in the trainer's trace
    stability_layer: Optional[int] = None   # (c)'s layer; None in the trainer's trace


@dataclass(frozen=True)
class Measurement:
    """A number taken from the eval pass; `name` is its report field and trace key.

    compute: EvalPass -> a float, or a list of floats (h_0..h_L) when `per_layer`.
    needs: the parts of the pass it reads (PASS_PARTS).
    traced: the trainer's trace records it every epoch (else `diagnose` only); a traced
        measurement cannot need the batch sizes (the trace's pass is one batch).
    """

    name: str
    compute: Callable[[EvalPass], Any]
    needs: tuple = ()
    per_layer: bool = False
    traced: bool = True

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ValueError(f"a measurement's name is an identifier (its report field and trace "
                             f"key), got {self.name!r}")
        unknown = [n for n in self.needs if n not in PASS_PARTS]
        if isinstance(self.needs, str) or unknown:
            raise ValueError(f"measurement {self.name!r}: needs must be a tuple of {PASS_PARTS}, "
                             f"got {self.needs!r}")
        if self.traced and "batch_sizes" in self.needs:
            raise ValueError(f"measurement {self.name!r} needs the eval batch sizes, which the "
                             "trainer's trace does not have: declare it traced=False")


MEASUREMENTS: dict[str, Measurement] = {}
BUILTIN_MEASUREMENTS = ("residual_norms", "bp_grad_norms", "backward_gains", "output_error_norm",
                        "cross_batch_stability")
ACCURACIES = ("headline_acc", "frozen_baseline_acc")  # a report's inputs that are not measured


def register_measurement(m: Measurement) -> Measurement:
    """Add a measurement: `diagnose` and the trainer's trace then take it on every pass."""
    if not isinstance(m, Measurement):
        raise TypeError(f"register_measurement takes a Measurement, got {type(m).__name__}")
    if m.name in ACCURACIES or MEASUREMENTS.get(m.name, m) is not m:
        raise ValueError(f"a measurement or report input named {m.name!r} exists already")
    MEASUREMENTS[m.name] = m
    return m


def unregister_measurement(name: str) -> None:
    """Remove a registered measurement (the built-in ones stay)."""
    if name in BUILTIN_MEASUREMENTS:
        raise ValueError(f"measurement {name!r} is built in and cannot be removed")
    MEASUREMENTS.pop(name, None)


def measure(p: EvalPass, *, traced_only: bool = False) -> dict[str, Any]:
    """{name: value} of every registered measurement (only the traced ones if `traced_only`)."""
    return {name: m.compute(p) for name, m in MEASUREMENTS.items() if m.traced or not traced_only}


for _m in (
        Measurement("residual_norms", lambda p: p.stats.residual_norms, ("hidden_states",),
                    per_layer=True),
        Measurement("bp_grad_norms", lambda p: p.stats.bp_grad_norms, ("bp_grads",),
                    per_layer=True),
        Measurement("backward_gains", lambda p: p.stats.backward_gains,
                    ("unit_error_backward",), per_layer=True),
        Measurement("output_error_norm", lambda p: p.stats.error_norm, ("logits",)),
        Measurement("cross_batch_stability", lambda p: cross_batch_stability(
            p.stats.grads[p.stability_layer], list(p.batch_sizes)),
                    ("bp_grads", "batch_sizes"), traced=False)):
    register_measurement(_m)
