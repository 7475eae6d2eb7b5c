"""Notebook 05's logic: six pipeline pitfalls that change a number silently (and an extra one),
each shown live (docs/reporting.md, "Pipeline pitfalls").

    model, rule, batches, run = pitfall_model(profile, results_dir)   # notebook 01's DFA run
    print(pitfall_norm(hidden_state(model, batches)))                 # 1. norm(-1)
    print(pitfall_feedback(model, rule, batches))                     # 4. fresh feedback

Each function is a check a reader can run on their own tensors, model or rule: it returns a
`PitfallResult` whose one-line `str` says whether the pitfall showed on that input and with which
numbers, the paper's in a separate, labelled `paper` field. "Raw" Γ values ignore the floor rule.
Not here: Γ itself (alignment.py), the rules (rules.py).
"""
from __future__ import annotations

import ast
import copy
import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from . import published
from ..alignment import GammaResult, GammaUnavailable, gamma, library_cosine, per_sample_cosine
from .experiments import profile_data, run_grid
from .figures import profile_metadata, save_table, stamp_caption, tables_dir
from ..measures import eval_mode, layer_stats
from .profiles import Profile
from ..rules import Rule, build_rule
from ..validation import model_device, prepare_eval_batches

# DFA's per-sample credit norm measured in the paper's audit runs (randn/sqrt(10) feedback).
DFA_CREDIT_NORM = 4.5
# Pitfalls 2 and 3: sizes of DFA's hidden-layer BP gradients on the paper scale (the paper's).
TINY_GRAD_NORM = 1e-10
FP16_GRAD_NORM = 5e-10
SUPPRESS = "pitfall-ok"   # a comment that exempts a line from check_norm_usage
TABLE_COLUMNS = ("pitfall", "what we measured", "the check", "result", "paper (CIFAR-10)")


@dataclass
class PitfallResult:
    """One pitfall on one input: what was measured, how to check, whether it showed."""

    key: str          # "1".."6" or "extra"
    title: str
    claim: str
    measured: str     # one sentence with the numbers
    check: str        # what to run on your own code
    holds: bool       # the pitfall showed on this input
    numbers: dict = field(default_factory=dict)
    paper: Optional[str] = None   # the paper's numbers, quoted

    @property
    def verdict(self) -> str:
        head = f"Pitfall {self.key}" if self.key.isdigit() else "Extra pitfall"
        status = "SHOWN" if self.holds else "NOT SHOWN on this input"
        return f"{head} ({self.title}): {status} — {self.measured}"

    def __str__(self) -> str:
        return self.verdict

    def row(self) -> dict:
        return {"pitfall": f"{self.key}. {self.title}" if self.key.isdigit() else self.title,
                "what we measured": self.measured, "the check": self.check,
                "result": "shown" if self.holds else "not shown on this input",
                "paper (CIFAR-10)": self.paper, "key": self.key, "claim": self.claim,
                "holds": self.holds, "numbers": _jsonable(self.numbers)}


def _jsonable(obj):
    """Numbers for a JSON sidecar: floats finite or None, tuples as lists."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


# --- Inputs: the profile's DFA run ----------------------------------------------------------------
def pitfall_model(profile: Profile, results_dir: str | Path, rule: str = "dfa",
                  seed: Optional[int] = None, data=None, *, train_missing: bool = False):
    """(model, rule, eval_batches, run) of the profile's main-audit run of `rule` (first seed),
    read from notebook 01's runs (`train_missing=True` trains it here if missing)."""
    data = profile_data(profile) if data is None else data
    seed = profile.seeds[0] if seed is None else seed
    (run,) = run_grid(profile, results_dir, rules=[rule], seeds=[seed], frozen=False, data=data,
                      train_missing=train_missing)
    cfg = run.config
    return (run.result.model, run.result.rule,
            run.result.data.eval_batches(cfg.eval_batches, cfg.eval_batch_size), run)


def hidden_state(model, eval_batches, layer: int = -1) -> torch.Tensor:
    """h_layer of `model` on the concatenated eval batches (detached, eval mode)."""
    x, _ = _xy(model, eval_batches)
    with eval_mode(model), torch.no_grad():
        _, hiddens = model(x, return_hidden=True)
    return hiddens[layer].detach()


def _xy(model, eval_batches):
    x, y, _ = prepare_eval_batches(eval_batches, model_device(model))
    return x, y


# --- 1. norm(-1) ----------------------------------------------------------------------------------
def pitfall_norm(hidden: torch.Tensor) -> PitfallResult:
    """`h.norm(-1)` is torch's p = -1 "norm" of every entry at once (one number), not the L2
    norm over the last dim, which is `h.norm(dim=-1)` (one per sample). Run on a real h_l."""
    h = hidden.detach()
    wrong = h.norm(-1)  # pitfall-ok: the bug, on purpose
    right = h.norm(dim=-1)
    med = float(right.double().median()) if right.numel() else float("nan")
    differ = tuple(wrong.shape) != tuple(right.shape) or not torch.allclose(wrong, right)
    numbers = {"norm(-1)": float(wrong) if wrong.numel() == 1 else wrong.tolist(),
               "norm(-1) shape": list(wrong.shape), "norm(dim=-1) shape": list(right.shape),
               "norm(dim=-1) median": med,
               "norm(dim=-1) min": float(right.min()), "norm(dim=-1) max": float(right.max())}
    wrong_text = (f"{float(wrong):.3g} (one number)" if wrong.numel() == 1
                  else f"shape {tuple(wrong.shape)}")
    return PitfallResult(
        "1", "tensor.norm(-1) is not the L2 norm over the last dim",
        "norm(-1) is a p=-1 'norm' of everything",
        f"on h of shape {tuple(h.shape)}: h.norm(-1) = {wrong_text}; h.norm(dim=-1) gives "
        f"{right.numel()} per-sample norms, median {med:.3g}",
        "check_norm_usage(source_text) flags .norm(-k) / torch.norm(x, -k); write "
        "norm(dim=-1) or torch.linalg.vector_norm(x, dim=-1)",
        differ, numbers)


@dataclass(frozen=True)
class NormFinding:
    line: int
    col: int
    code: str
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.code.strip()}  <- {self.message}"


_NORM_RE = re.compile(r"\.norm\(\s*-\s*\d+\s*[,)]")
_NORM_MSG = ("a negative int as the first positional argument of .norm() is p (a p={p} 'norm' "
             "of every entry), not dim; write .norm(dim={p})")
_FN_MSG = ("the second positional argument of {fn}() is p/ord, not dim: this is a p={p} "
           "'norm'; write {fn}(x, dim={p})")


def _negative_int(node) -> Optional[int]:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) \
            and isinstance(node.operand, ast.Constant) and isinstance(node.operand.value, int) \
            and not isinstance(node.operand.value, bool):
        return -node.operand.value
    return None


def _python_sources(source_text: str) -> list[tuple[int, str]]:
    """(line offset, code) pieces: the code cells of a notebook's JSON, else the text itself."""
    try:
        nb = json.loads(source_text)
    except ValueError:
        return [(0, source_text)]
    if not isinstance(nb, dict) or "cells" not in nb:
        return [(0, source_text)]
    out = []
    for cell in nb["cells"]:
        if cell.get("cell_type") == "code":
            src = cell.get("source", "")
            out.append((0, "".join(src) if isinstance(src, list) else src))
    return out


def check_norm_usage(source_text: str) -> list[NormFinding]:
    """Find `x.norm(-k)` (and `torch.norm(x, -k)`, `torch.linalg.norm(x, -k)`) in Python source
    or a notebook's JSON: the negative int is taken as p, not as dim (pitfall 1).

    A line carrying the comment `# pitfall-ok` is exempt; source that does not parse is scanned
    line by line. Returns the findings (empty: nothing to fix).
    """
    findings = []
    for offset, code in _python_sources(source_text):
        lines = code.splitlines()
        try:
            tree = ast.parse(code)
        except SyntaxError:
            for i, text in enumerate(lines, 1):
                m = _NORM_RE.search(text)
                if m and SUPPRESS not in text:
                    p = re.search(r"-\s*\d+", m.group(0)).group(0).replace(" ", "")
                    findings.append(NormFinding(offset + i, m.start(), text,
                                                _NORM_MSG.format(p=p)))
            continue
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "norm"):
                continue
            text = lines[node.lineno - 1] if node.lineno - 1 < len(lines) else ""
            if SUPPRESS in text:
                continue
            owner = ast.unparse(node.func.value)
            if owner in ("torch", "torch.linalg", "linalg"):
                p = _negative_int(node.args[1]) if len(node.args) > 1 else None
                msg = _FN_MSG.format(fn=f"{owner}.norm", p=p)
            else:
                p = _negative_int(node.args[0]) if node.args else None
                msg = _NORM_MSG.format(p=p)
            if p is not None:
                findings.append(NormFinding(offset + node.lineno, node.col_offset, text, msg))
    return sorted(findings, key=lambda f: (f.line, f.col))


def check_norm_usage_in_files(paths: Sequence[str | Path]) -> dict[str, list[NormFinding]]:
    """`check_norm_usage` over .py and .ipynb files; {path: findings} for files with findings."""
    out = {}
    for p in paths:
        found = check_norm_usage(Path(p).read_text())
        if found:
            out[str(p)] = found
    return out


def package_sources() -> list[Path]:
    """This package's own .py files (to run the check on the code that computes our numbers)."""
    return sorted(Path(__file__).resolve().parents[1].rglob("*.py"))


# --- 2. F.cosine_similarity's eps clamp -----------------------------------------------------------
def _constructed_pair(n: int, d: int, cos: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n credit vectors of norm DFA_CREDIT_NORM and n unit vectors at cosine ~`cos` to them."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=gen, dtype=torch.float64)
    a = a / a.norm(dim=-1, keepdim=True)
    noise = torch.randn(n, d, generator=gen, dtype=torch.float64)
    noise = noise - (noise * a).sum(-1, keepdim=True) * a          # orthogonal to a
    noise = noise / noise.norm(dim=-1, keepdim=True)
    g = cos * a + math.sqrt(1 - cos ** 2) * noise
    return a * DFA_CREDIT_NORM, g


def pitfall_cosine_eps(a: Optional[torch.Tensor] = None, g: Optional[torch.Tensor] = None, *,
                       g_norm: Optional[float] = TINY_GRAD_NORM, seed: int = 0,
                       n: int = 128, d: int = 256, cos: float = 0.6) -> PitfallResult:
    """Per-sample cosine of credit `a` and gradient `g` (N, ...) two ways: hand-written float64
    (no eps) and `F.cosine_similarity` (each norm clamped at 1e-8).

    With `g_norm`, every g is rescaled to that norm first (default: DFA's hidden-layer BP
    gradients on the paper scale; None: your own pair as it is). Without `a`, `g`: n pairs in d
    dims at cosine `cos`, credits of DFA's norm.
    """
    if (a is None) != (g is None):
        raise ValueError("pass both a and g (per-sample credit and gradient) or neither")
    constructed = a is None
    if constructed:
        a, g = _constructed_pair(n, d, cos, seed)
    a = a.detach().to(torch.float64).reshape(a.shape[0], -1).cpu()
    g = g.detach().to(torch.float64).reshape(g.shape[0], -1).cpu()
    if g_norm is not None:
        g = g / g.norm(dim=-1, keepdim=True) * g_norm
    hand, excluded = per_sample_cosine(a, g)
    lib = library_cosine(a, g)
    keep = ~excluded
    hand_m, lib_m = float(hand[keep].mean()), float(lib[keep].mean())
    g_med = float(g.norm(dim=-1).median())
    shrink = hand_m / lib_m if lib_m != 0 else float("inf")
    holds = abs(lib_m) < 0.1 * abs(hand_m)
    numbers = {"median ||g||": g_med, "median ||a||": float(a.norm(dim=-1).median()),
               "hand-written cosine (mean)": hand_m, "F.cosine_similarity (mean)": lib_m,
               "shrink factor": shrink, "constructed inputs": constructed,
               "samples": int(keep.sum())}
    return PitfallResult(
        "2", "F.cosine_similarity clamps its denominator at eps=1e-8",
        "at ||g|| ~ 1e-10 the library cosine shrinks ~100x",
        f"at median ||g|| = {g_med:.2g}: hand-written cosine {hand_m:+.4f}, "
        f"F.cosine_similarity {lib_m:+.6f} (hand / library = {shrink:.3g})"
        + (" (constructed vector pairs)" if constructed else ""),
        "compare alignment.per_sample_cosine(a, g) with F.cosine_similarity on your own pairs "
        "(pitfall_cosine_eps(a, g, g_norm=None)); any ||a|| or ||g|| under 1e-8 is clamped",
        holds, numbers)


# --- 3. fp16 underflow ----------------------------------------------------------------------------
def smallest_subnormal(dtype: torch.dtype) -> float:
    """The smallest positive number `dtype` holds: finfo.tiny (smallest normal) x finfo.eps."""
    fi = torch.finfo(dtype)
    return float(fi.tiny * fi.eps)


def underflow_share(g: torch.Tensor, dtype: torch.dtype) -> float:
    """Share of the non-zero entries of `g` that become exactly 0 when cast to `dtype`."""
    nz = g != 0
    if not nz.any():
        return float("nan")
    return float(((g.to(dtype) == 0) & nz).sum() / nz.sum())


def pitfall_fp16(model, eval_batches, *, grad_norm: float = FP16_GRAD_NORM,
                 dtypes: Sequence[torch.dtype] = (torch.float16, torch.bfloat16, torch.float32)
                 ) -> PitfallResult:
    """The per-sample BP gradient at h_{L-1}, computed by backpropagating one block in each dtype.

    The model's own dCE/dh_L rescaled to median norm `grad_norm` (default: DFA's on the paper
    scale), through the last block in fp16, bf16 and fp32, against float64. Needs `blocks`.
    """
    if not hasattr(model, "blocks") or len(model.blocks) == 0:
        raise ValueError("pitfall_fp16 backpropagates through the model's last block: it needs a "
                         "ResidualMLP-like model with at least one block in `model.blocks`")
    x, y = _xy(model, eval_batches)
    stats = layer_stats(model, x, y)
    g_L = stats.grads[-1].to(model_device(model))
    own = float(stats.bp_grad_norms[-1])
    norms = g_L.reshape(g_L.shape[0], -1).norm(dim=-1)
    g_L = g_L * (grad_norm / float(norms.median()))
    h_in = stats.hiddens[-2]
    residual = getattr(model, "residual", True)

    def vjp(dtype):
        block = copy.deepcopy(model.blocks[-1]).to(dtype).eval()
        with torch.enable_grad():
            h = h_in.detach().to(dtype).requires_grad_(True)
            out = h + block(h) if residual else block(h)
            (g,) = torch.autograd.grad(out, h, grad_outputs=g_L.to(dtype))
        return g.detach().to(torch.float64)

    ref = vjp(torch.float64)
    ref_med = float(ref.norm(dim=-1).median())
    h_max = float(h_in.detach().abs().max())
    per_dtype = {}
    for dt in dtypes:
        g = vjp(dt)
        n = g.norm(dim=-1)
        finite = torch.isfinite(n)
        med = float(n.median()) if bool(finite.all()) else float("nan")
        per_dtype[str(dt).replace("torch.", "")] = {
            "median ||g_{L-1}||": med,
            "samples with an all-zero gradient": float((n == 0).double().mean()),
            "samples with a non-finite gradient": float((~finite).double().mean()),
            "relative error of the median vs float64": abs(med - ref_med) / ref_med,
            "incoming ||g_L|| entries lost in the cast": underflow_share(g_L, dt),
            "h_(L-1) exceeds the dtype's max": h_max > float(torch.finfo(dt).max),
            "smallest positive number": smallest_subnormal(dt),
        }
    f16, b16 = per_dtype.get("float16"), per_dtype.get("bfloat16")
    lost = lambda d: not math.isfinite(d["median ||g_{L-1}||"]) or d["median ||g_{L-1}||"] == 0
    holds = bool(f16 and b16 and lost(f16) and not lost(b16)
                 and b16["relative error of the median vs float64"] < 0.05)
    entry = grad_norm / math.sqrt(g_L[0].numel())
    numbers = {"rescaled median ||g_L||": grad_norm, "typical |entry|": entry,
               "model's own median ||g_L||": own, "float64 median ||g_{L-1}||": ref_med,
               "max |h_(L-1)| entry": h_max, "per dtype": per_dtype}
    if not f16:
        f16_txt = "fp16 not run"
    elif not math.isfinite(f16["median ||g_{L-1}||"]):
        f16_txt = (f"fp16 non-finite ({100 * f16['samples with a non-finite gradient']:.0f}% of "
                   "samples" + (f"; h_(L-1) reaches {h_max:.2g}, over fp16's max "
                                f"{torch.finfo(torch.float16).max:.0f}"
                                if f16["h_(L-1) exceeds the dtype's max"] else "") + ")")
    else:
        f16_txt = (f"fp16 {f16['median ||g_{L-1}||']:.3g} "
                   f"({100 * f16['samples with an all-zero gradient']:.0f}% of samples all zero)")
    b16_txt = (f"bf16 {b16['median ||g_{L-1}||']:.3g} "
               f"({100 * b16['relative error of the median vs float64']:.2g}% off float64's "
               f"{ref_med:.3g})" if b16 else "bf16 not run")
    return PitfallResult(
        "3", "fp16 underflows hidden-layer BP gradients",
        "at ~5e-10 fp16 flushes BP gradients to 0; bf16 keeps fp32's range",
        f"per-sample ||dCE/dh_(L-1)|| with ||g_L|| rescaled to {grad_norm:.0e} (entries "
        f"~{entry:.1g}; fp16's smallest number {smallest_subnormal(torch.float16):.2g}): "
        f"{f16_txt}, {b16_txt}",
        "compute protocol numbers in >= fp32 (measures.compute_dtype does); on your gradients, "
        "underflow_share(g, torch.float16) is the share lost to fp16",
        holds, numbers)


# --- 4-6 and the extra one: Γ ---------------------------------------------------------------------
def fresh_rule(rule: Rule, model, seed: int) -> Rule:
    """The same rule and options with feedback matrices drawn from a generator seeded `seed`
    (another seed than the run's: the run's own would reproduce the saved matrices)."""
    gen = torch.Generator().manual_seed(seed)
    new = build_rule(rule.name, model, dataclasses.asdict(rule.options), gen)
    return new.to(model_device(model))


def _raw_mean(g: GammaResult) -> Optional[float]:
    vals = [v for v in g.per_layer_raw if v is not None]
    return float(np.mean(vals)) if vals and len(vals) == len(g.per_layer_raw) else None


def _layers(values) -> str:
    return "[" + ", ".join("null" if v is None else f"{v:+.3f}" for v in values) + "]"


def pitfall_feedback(model, rule: Rule, eval_batches, *, fresh_seed: int = 2 ** 31 - 1
                     ) -> PitfallResult:
    """Γ with the rule's saved (training) feedback vs with a fresh draw of the same shape.

    Shown when the saved feedback gives a positive mean Γ over layers and the fresh draw's is
    under half of it in size (a run too short to align has Γ ≈ 0 either way: "not shown").
    """
    if not rule.state_spec(model):
        raise ValueError(f"rule {rule.name!r} declares no saved state (no feedback matrices or "
                         "auxiliary nets in rule.state_spec): pitfall 4 does not apply to it")
    saved = gamma(model, eval_batches, rule=rule)
    fresh = gamma(model, eval_batches, rule=fresh_rule(rule, model, fresh_seed))
    s_mean, f_mean = _raw_mean(saved), _raw_mean(fresh)
    differ = saved.per_layer_raw != fresh.per_layer_raw
    # shown: the saved feedback aligns (mean Γ > 0) and a fresh draw loses at least half of it
    holds = bool(differ and s_mean is not None and f_mean is not None and s_mean > 0
                 and abs(f_mean) < 0.5 * s_mean)
    numbers = {"saved: per-layer Γ (raw)": saved.per_layer_raw,
               "fresh: per-layer Γ (raw)": fresh.per_layer_raw,
               "saved: mean over layers (raw)": s_mean, "fresh: mean over layers (raw)": f_mean,
               "saved: headline Γ": saved.headline, "fresh: headline Γ": fresh.headline,
               "fresh seed": fresh_seed}
    return PitfallResult(
        "4", "Γ must use the training feedback matrices",
        "fresh draws give Γ ≈ 0",
        f"Γ per layer with the saved feedback {_layers(saved.per_layer_raw)} (mean "
        f"{s_mean:+.3f}); with a fresh draw {_layers(fresh.per_layer_raw)} (mean {f_mean:+.3f})",
        "pass gamma() the trained rule (result.rule or one given load_state_dict(ckpt['rule'])); "
        "compare with fresh_rule(rule, model, seed): the two must differ",
        holds, numbers)


def per_sample_cosines(model, rule: Rule, eval_batches) -> tuple[list[np.ndarray], list[float]]:
    """Per layer, the hand-written cosines of the rule's credit and the true gradient over the
    eval samples (excluded samples dropped), and the median ||g_k|| (paper scale)."""
    x, y = _xy(model, eval_batches)
    stats = layer_stats(model, x, y)
    credits = rule.credits(model, x.detach(), y)
    out = []
    for a, g in zip(credits, stats.grads):
        cos, excl = per_sample_cosine(a, g)
        out.append(cos[~excl].numpy())
    return out, [float(v) for v in stats.bp_grad_norms]


def aggregations(cos: Sequence[np.ndarray]) -> dict[str, float]:
    """The same per-sample cosines, aggregated the ways papers do (no floor rule); needs at
    least one sample at every layer."""
    empty = [k for k, c in enumerate(cos) if len(c) == 0]
    if empty or len(cos) < 2:
        raise ValueError(f"no cosine at layer(s) {empty} (every sample had ||a||·||g|| = 0), or "
                         f"fewer than 2 layers: nothing to aggregate")
    mean_k = np.array([c.mean() for c in cos])
    med_k = np.array([np.median(c) for c in cos])
    pooled = np.concatenate(cos)
    return {
        "mean over samples, mean over layers (headline form)": float(mean_k.mean()),
        "mean over samples, median over layers": float(np.median(mean_k)),
        "median over samples, mean over layers": float(med_k.mean()),
        "median over samples, median over layers": float(np.median(med_k)),
        "mean over samples, mean over layers 1..L (layer 0 left out)": float(mean_k[1:].mean()),
        "median over samples, mean over layers 1..L": float(med_k[1:].mean()),
        "median of all (sample, layer) cosines": float(np.median(pooled)),
        "deepest layer only, mean over samples": float(mean_k[-1]),
    }


def pitfall_aggregation(model, rule: Rule, eval_batches,
                        gamma_result: Optional[GammaResult] = None) -> PitfallResult:
    """How far the choice of aggregation moves Γ on one model, sign included.

    Raw aggregations of the same per-sample cosines (floor rule ignored), and
    `GammaResult.alternatives` (floor rule applied)."""
    cos, g_norms = per_sample_cosines(model, rule, eval_batches)
    agg = aggregations(cos)
    g = gamma(model, eval_batches, rule=rule) if gamma_result is None else gamma_result
    lo, hi = min(agg.values()), max(agg.values())
    sign = lo < 0 < hi
    holds = (hi - lo) > 0.01 or sign
    lo_p, hi_p = published.DFA_GAMMA_AGGREGATION_RANGE
    alts = {"headline (mean over layers)": g.headline, **g.alternatives}
    numbers = {"raw aggregations": agg, "range": [lo, hi], "sign flips": sign,
               "GammaResult.alternatives (floor rule applied)": alts,
               "median ||g_k|| (paper scale)": g_norms}
    return PitfallResult(
        "5", "the aggregation moves Γ",
        "mean/median over layers or samples, layer 0 in or out: DFA's Γ moves, sign included",
        f"{len(agg)} aggregations of the same cosines span [{lo:+.3f}, {hi:+.3f}] "
        f"(width {hi - lo:.3f}); sign {'flips' if sign else 'does not flip'}",
        "report Γ per layer and name the aggregation; aggregations(per_sample_cosines(model, "
        "rule, batches)[0]) shows how much yours moves",
        holds, numbers,
        paper=f"paper: DFA's Γ spans [{lo_p:+.3f}, {hi_p:+.3f}] over aggregations")


def pitfall_layer0(model, rule: Rule, eval_batches,
                   gamma_result: Optional[GammaResult] = None) -> PitfallResult:
    """Γ per layer: whether layer 0 carries the headline mean over layers."""
    g = gamma(model, eval_batches, rule=rule) if gamma_result is None else gamma_result
    raw = g.per_layer_raw
    if any(v is None for v in raw):
        return PitfallResult(
            "6", "layer 0 dominates the headline Γ",
            "Γ_0 is large, deeper layers ≈ 0: the mean over layers hides it",
            f"Γ per layer {_layers(raw)}: undefined at some layer (no sample with a direction, "
            "or non-finite values), so no comparison", "report the per-layer Γ beside any headline",
            False, {"per-layer Γ (raw)": raw, "per-layer reasons": g.per_layer_reasons})
    deeper = raw[1:]
    mean_all, mean_deep = float(np.mean(raw)), float(np.mean(deeper))
    share = abs(raw[0]) / sum(abs(v) for v in raw) if any(raw) else float("nan")
    holds = abs(raw[0]) > max(abs(v) for v in deeper)
    numbers = {"per-layer Γ (raw)": raw, "per-layer Γ (floor rule)": g.per_layer,
               "per-layer reasons": g.per_layer_reasons, "headline Γ": g.headline,
               "mean over layers (raw)": mean_all, "mean over layers 1..L (raw)": mean_deep,
               "layer 0's share of sum |Γ_k|": share}
    l0, deep = published.DFA_GAMMA["layer0"], published.DFA_GAMMA["deeper"]
    return PitfallResult(
        "6", "layer 0 dominates the headline Γ",
        "Γ_0 is large, deeper layers ≈ 0: the mean over layers hides it",
        f"Γ per layer {_layers(raw)}: mean over layers {mean_all:+.3f}, without layer 0 "
        f"{mean_deep:+.3f}; layer 0 holds {100 * share:.0f}% of sum |Γ_k|",
        "report the per-layer Γ (GammaResult.per_layer) beside any headline",
        holds, numbers,
        paper=f"paper: DFA Γ layer 0 {l0:+.2f}, deeper ≈ {deep:.0f}")


def _zero_state(value) -> None:
    """Zero a declared buffer, or every tensor of a declared auxiliary module, in place."""
    with torch.no_grad():
        for t in ([value] if torch.is_tensor(value) else value.state_dict().values()):
            if torch.is_tensor(t):
                t.zero_()


def pitfall_missing_state(model, rule: Rule, eval_batches) -> PitfallResult:
    """Γ refuses a rule whose declared state (`rule.state_spec`: feedback matrices, auxiliary
    nets) was not saved: removed (None), or zeros (a placeholder never filled from the
    checkpoint). A fresh draw cannot be told apart (pitfall 4), so the defence is to save it."""
    names = [spec.name for spec in rule.state_spec(model)
             if getattr(rule, spec.name, None) is not None]
    if not names:
        raise ValueError(f"rule {rule.name!r} declares no saved state (rule.state_spec) to lose")
    messages = {}
    for case in ("missing", "zeros"):
        broken = copy.deepcopy(rule)
        for n in names:
            if case == "missing":
                setattr(broken, n, None)
            else:
                _zero_state(getattr(broken, n))
        try:
            gamma(model, eval_batches, rule=broken)
            messages[case] = None
        except GammaUnavailable as exc:
            messages[case] = str(exc)
    holds = all(m is not None for m in messages.values())
    return PitfallResult(
        "extra", "feedback matrices / auxiliary nets not saved ⇒ Γ N/A",
        "without the saved state Γ is silently wrong; save it or report N/A",
        f"gamma() with {', '.join(names)} removed: "
        f"{'refused (GammaUnavailable)' if messages['missing'] else 'NOT refused'}; "
        f"set to zeros: {'refused' if messages['zeros'] else 'NOT refused'}",
        "save the rule's state with the model (the trainer's checkpoint['rule']) and load it "
        "before gamma(); alignment.check_rule_state(rule, model) raises when it is missing",
        holds, {"state": names, "messages": messages})


# --- The table ------------------------------------------------------------------------------------
def pitfalls_table(results: Sequence[PitfallResult]) -> list[dict]:
    return [r.row() for r in results]


def save_pitfalls_table(results: Sequence[PitfallResult], profile: Profile,
                        results_dir: str | Path, seeds: Optional[Sequence[int]] = None
                        ) -> dict[str, Path]:
    """Table `05_pitfalls` (pitfall, what we measured, the check, result, paper)."""
    caption = stamp_caption(
        f"The pipeline pitfalls, each measured live ({profile.name} profile): what we "
        "measured, the check to run on your own code, and whether it showed on this input. The "
        "last column quotes the paper.", profile)
    return save_table(pitfalls_table(results), "05_pitfalls", columns=TABLE_COLUMNS,
                      metadata=profile_metadata(profile, seeds=seeds), caption=caption,
                      outdir=tables_dir(results_dir), numbers={"paper_source": published.SOURCE})
