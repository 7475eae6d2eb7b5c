"""`diagnose` checked against an independent computation written out plainly in this file.

The reference (`reference_protocol`) does what docs/protocol.md says with none of the package's code: a
float64 copy of the model, one sample at a time, autograd of that sample's own cross-entropy,
divided by 128 (the paper scale: the batch-mean CE over 128 samples, whatever the eval batch
size), `math.sqrt` norms, `statistics.median` medians (the mean of the two middle values, numpy's
convention), batch directions from the mean of per-sample gradients, a hand-written cosine. It is
compared with `diagnose` on random models, on a model whose stream is exploded on purpose, on a
model with (N, T, d) hidden states, with eval batches of different sizes and with half-precision
models. Then: `diagnose` leaves the model as it found it; bad input gets a clear error naming the
fix; NaN/inf/zero inputs fire with a reason; JSON is strict and round-trips; the CLI works on a
real checkpoint.
"""
import copy
import json
import math
import statistics

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fa_nb_utils.cli import diagnose_main as main
from fa_nb_utils.protocol import MEASURED_ACC, diagnose, prepare_eval_batches
from fa_nb_utils.measures import ModelContractError
from fa_nb_utils.model import ResidualMLP
from fa_nb_utils.report import DiagnosticReport, DiagnosticThresholds
from fa_nb_utils.config import TrainConfig
from fa_nb_utils.trainer import train

IN, D, C, L = 24, 16, 5, 3


# ---------------------------------------------------------------------------------------------
# The independent reference
# ---------------------------------------------------------------------------------------------
def _norm(values):
    return math.sqrt(sum(v * v for v in values))


def _cosine(u, v):
    return sum(a * b for a, b in zip(u, v)) / (_norm(u) * _norm(v))


def reference_protocol(model, batches, stability_layer=None):
    """The protocol's definitions computed sample by sample in float64, with plain Python maths."""
    m = copy.deepcopy(model).to(torch.float64).eval()
    h_norms, g_norms, g_vecs = None, None, None   # per layer: per-position norms / per-sample ...
    batch_of = []                                  # eval-batch index of each sample
    for b, (x, y) in enumerate(batches):
        for i in range(len(y)):
            xi = x[i:i + 1].to(torch.float64)
            logits, hs = m(xi, return_hidden=True)
            ce = F.cross_entropy(logits, y[i:i + 1].long(), reduction="sum")  # its own CE
            gs = torch.autograd.grad(ce, hs)
            if h_norms is None:
                h_norms = [[] for _ in hs]; g_norms = [[] for _ in hs]; g_vecs = [[] for _ in hs]
            for l, (h, g) in enumerate(zip(hs, gs)):
                for row in h.detach().reshape(-1, h.shape[-1]).tolist():   # one per position
                    h_norms[l].append(_norm(row))
                g = [v / 128 for v in g.reshape(-1).tolist()]              # all non-batch dims
                g_norms[l].append(_norm(g))
                g_vecs[l].append(g)
            batch_of.append(b)
    residual_norms = [statistics.median(v) for v in h_norms]
    bp_grad_norms = [statistics.median(v) for v in g_norms]
    num_layers = len(residual_norms) - 1
    layer = num_layers // 2 if stability_layer is None else stability_layer
    directions = []
    for b in range(len(batches)):
        rows = [g for g, bb in zip(g_vecs[layer], batch_of) if bb == b]
        mean = [sum(col) / len(rows) for col in zip(*rows)]
        directions.append([v / _norm(mean) for v in mean])
    pairs = [(i, j) for i in range(len(directions)) for j in range(i + 1, len(directions))]
    stability = sum(_cosine(directions[i], directions[j]) for i, j in pairs) / len(pairs)
    growth = [b / a for a, b in zip(residual_norms, residual_norms[1:])]
    return {"residual_norms": residual_norms, "bp_grad_norms": bp_grad_norms,
            "max_block_growth": max(growth), "cumulative": residual_norms[-1] / residual_norms[0],
            "stability": stability, "stability_layer": layer}


def assert_matches_reference(report, ref, rtol):
    assert report.residual_norms == pytest.approx(ref["residual_norms"], rel=rtol)
    assert report.bp_grad_norms == pytest.approx(ref["bp_grad_norms"], rel=rtol)
    assert report.max_block_growth == pytest.approx(ref["max_block_growth"], rel=rtol)
    assert report.cumulative_growth == pytest.approx(ref["cumulative"], rel=rtol)
    assert report.stability_layer == ref["stability_layer"]
    assert report.cross_batch_stability == pytest.approx(ref["stability"], abs=rtol)


# ---------------------------------------------------------------------------------------------
# Models and data
# ---------------------------------------------------------------------------------------------
def tiny_model(seed=0, **kw):
    return ResidualMLP(kw.pop("input_dim", IN), kw.pop("d_hidden", D), kw.pop("num_classes", C),
                       kw.pop("num_blocks", L), seed=seed, **kw)


def make_batches(sizes, seed=0, input_dim=IN, classes=C):
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    x = torch.randn(n, input_dim, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    out, start = [], 0
    for s in sizes:
        out.append((x[start:start + s], y[start:start + s]))
        start += s
    return out


def explode(model, factor=2e4, per_block=120.0):
    """Scale each block's fc2 so that ||h|| grows by far more than 50x per block.

    The branch's size does not depend on ||h|| (its LayerNorm), so block l needs a fc2 scale
    that grows geometrically with l to keep a fixed growth per block."""
    with torch.no_grad():
        for l, block in enumerate(model.blocks):
            block.fc2.weight.mul_(factor * per_block ** l)
    return model


class TokenModel(nn.Module):
    """Tiny residual model with (N, T, d) hidden states: per-token pre-LN blocks, a token mix."""

    def __init__(self, in_dim=6, d=8, classes=4, blocks=2, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Linear(in_dim, d)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU(),
                                                  nn.Linear(d, d)) for _ in range(blocks))
        self.out_ln = nn.LayerNorm(d)
        self.out_head = nn.Linear(d, classes)

    def forward(self, x, return_hidden=False):
        h = self.embed(x)                                   # (N, T, d)
        hs = [h]
        for block in self.blocks:
            f = block(h)
            h = h + f + 0.3 * f.mean(dim=1, keepdim=True)  # tokens of one sample interact
            hs.append(h)
        logits = self.out_head(self.out_ln(h.mean(dim=1)))
        return (logits, hs) if return_hidden else logits


# ---------------------------------------------------------------------------------------------
# (a)-(c) against the reference
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_models_match_the_reference(seed):
    model = tiny_model(seed)
    batches = make_batches([32] * 4, seed=seed)
    report = diagnose(model, batches, headline_acc=0.5)
    ref = reference_protocol(model, batches)
    assert_matches_reference(report, ref, rtol=1e-5)
    # (c) on random labels and 4 batches is whatever the head's bias makes it: not asserted
    assert not report.fired["a"] and not report.fired["b"]


def test_float64_model_matches_the_reference_to_float64_precision():
    model = tiny_model(3).double()
    batches = [(x.double(), y) for x, y in make_batches([20, 20, 24], seed=3)]
    report = diagnose(model, batches, headline_acc=0.5)
    assert_matches_reference(report, reference_protocol(model, batches), rtol=1e-10)


def test_exploded_stream_matches_the_reference_and_fires_a_and_b():
    model = explode(tiny_model(4))
    batches = make_batches([32] * 4, seed=4)
    ref = reference_protocol(model, batches)
    growth = [b / a for a, b in zip(ref["residual_norms"], ref["residual_norms"][1:])]
    assert min(growth) > 50, growth                  # the construction explodes every block
    assert ref["bp_grad_norms"][-1] < 1e-7           # and puts g_L under the floor
    report = diagnose(model, batches, headline_acc=0.5)
    # fp32 forward/backward through a stream of ~1e7 against a float64 reference
    assert_matches_reference(report, ref, rtol=1e-3)
    assert report.fired["a"] and report.fired["b"]
    assert report.max_block_growth > 50 and report.cumulative_growth > 50 ** L
    assert report.verdict.startswith("needs walk-back: residual stream exploded; "
                                     "BP grad at numerical floor")


def test_exploded_embed_alone_is_not_per_block_growth():
    """Scaling the embed multiplies every ||h_l|| alike: no block grows, (a) stays quiet."""
    model = tiny_model(5)
    with torch.no_grad():
        model.embed.weight.mul_(1e4); model.embed.bias.mul_(1e4)
    batches = make_batches([32] * 4, seed=5)
    report = diagnose(model, batches, headline_acc=0.5)
    assert_matches_reference(report, reference_protocol(model, batches), rtol=1e-4)
    assert report.residual_norms[0] > 1e3 and not report.fired["a"]
    assert report.max_block_growth < 2


def test_stability_layer_other_than_the_default():
    model = tiny_model(6)
    batches = make_batches([24] * 5, seed=6)
    for layer in (0, L):
        report = diagnose(model, batches, headline_acc=0.5, stability_layer=layer)
        ref = reference_protocol(model, batches, stability_layer=layer)
        assert report.stability_layer == layer
        assert report.cross_batch_stability == pytest.approx(ref["stability"], abs=1e-6)


def test_batch_sizes_do_not_change_the_paper_scale():
    """Unequal eval batches: per-sample gradients are still dCE_i/dh / 128, and (c) uses each
    batch's own mean."""
    model = tiny_model(7)
    batches = make_batches([50, 30, 48, 7], seed=7)
    report = diagnose(model, batches, headline_acc=0.5)
    assert_matches_reference(report, reference_protocol(model, batches), rtol=1e-5)
    # the same 135 samples split differently: identical (a) and (b), since the scale is fixed
    x = torch.cat([b[0] for b in batches]); y = torch.cat([b[1] for b in batches])
    other = diagnose(model, [(x[:100], y[:100]), (x[100:], y[100:])], headline_acc=0.5)
    assert other.residual_norms == pytest.approx(report.residual_norms, rel=1e-6)
    assert other.bp_grad_norms == pytest.approx(report.bp_grad_norms, rel=1e-6)


def test_token_hidden_states_match_the_reference():
    """(N, T, d): norms per position over d, one median over positions and samples; gradient
    norms over all non-batch dims."""
    model = TokenModel(seed=0)
    g = torch.Generator().manual_seed(8)
    x = torch.randn(60, 3, 6, generator=g); y = torch.randint(0, 4, (60,), generator=g)
    batches = [(x[i:i + 20], y[i:i + 20]) for i in range(0, 60, 20)]
    report = diagnose(model, batches, headline_acc=0.5)
    ref = reference_protocol(model, batches)
    assert_matches_reference(report, ref, rtol=1e-5)
    # a per-sample (not per-position) norm of h would be ~sqrt(3) larger: make sure it is not that
    per_sample = statistics.median(_norm(h.reshape(-1).tolist())
                                   for h in model(x, return_hidden=True)[1][0].detach())
    assert report.residual_norms[0] < 0.8 * per_sample


# ---------------------------------------------------------------------------------------------
# The model comes back exactly as it was
# ---------------------------------------------------------------------------------------------
def test_model_mode_parameters_and_grads_are_left_as_found():
    model = tiny_model(9)
    model.train()
    model.blocks[1].eval()                 # a deliberately mixed mode must survive too
    params = dict(model.named_parameters())
    for name in ("embed.weight", "blocks.0.fc2.weight", "out_head.bias"):
        params[name].grad = torch.randn_like(params[name])
    model.blocks[2].fc1.weight.requires_grad_(False)
    before = {n: p.detach().clone() for n, p in params.items()}
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in params.items()}
    modes = {n: m.training for n, m in model.named_modules()}
    flags = {n: p.requires_grad for n, p in params.items()}

    diagnose(model, make_batches([16] * 3, seed=9), headline_acc=0.5)

    assert {n: m.training for n, m in model.named_modules()} == modes
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
        assert p.requires_grad == flags[n], n
        if grads[n] is None:
            assert p.grad is None, n
        else:
            assert torch.equal(p.grad, grads[n]), n


def test_eval_mode_model_stays_in_eval_mode():
    model = tiny_model(10).eval()
    diagnose(model, make_batches([16] * 3, seed=10), headline_acc=0.5)
    assert not any(m.training for m in model.modules())


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_half_precision_models_are_evaluated_in_fp32_and_left_in_half(half):
    model32 = tiny_model(11)
    batches = make_batches([32] * 4, seed=11)
    ref = diagnose(model32, batches, headline_acc=0.5)
    model = copy.deepcopy(model32).to(half)
    snapshot = {n: p.detach().clone() for n, p in model.named_parameters()}
    half_batches = [(x.to(half), y) for x, y in batches]
    report = diagnose(model, half_batches, headline_acc=0.5)

    for v in report.residual_norms + report.bp_grad_norms + [report.cross_batch_stability]:
        assert math.isfinite(v)
    tol = 1e-2 if half == torch.float16 else 4e-2   # rounding of weights and inputs to half
    assert report.residual_norms == pytest.approx(ref.residual_norms, rel=tol)
    assert report.bp_grad_norms == pytest.approx(ref.bp_grad_norms, rel=tol)
    assert report.cross_batch_stability == pytest.approx(ref.cross_batch_stability, abs=5 * tol)
    # exactly the numbers of an fp32 model with the half weights: the computation ran in fp32
    upcast = diagnose(copy.deepcopy(model).float(),
                      [(x.float(), y) for x, y in half_batches], headline_acc=0.5)
    assert report.residual_norms == upcast.residual_norms
    assert report.bp_grad_norms == upcast.bp_grad_norms
    for n, p in model.named_parameters():
        assert p.dtype == half and torch.equal(p, snapshot[n]), n


# ---------------------------------------------------------------------------------------------
# Accuracy
# ---------------------------------------------------------------------------------------------
def test_without_headline_acc_the_accuracy_is_measured_and_the_report_says_so():
    model = tiny_model(12)
    batches = make_batches([32] * 4, seed=12)
    report = diagnose(model, batches)
    x = torch.cat([b[0] for b in batches]); y = torch.cat([b[1] for b in batches])
    with torch.no_grad():
        expected = sum(int(model(x[i:i + 1]).argmax()) == int(y[i]) for i in range(len(y))) / len(y)
    assert report.headline_acc == pytest.approx(expected)
    assert report.headline_acc_source == MEASURED_ACC
    assert "measured on the eval batches" in str(report)
    assert report.to_dict()["headline_acc_source"] == MEASURED_ACC
    assert diagnose(model, batches, headline_acc=0.25).headline_acc_source == "provided"


# ---------------------------------------------------------------------------------------------
# (d) frozen baseline
# ---------------------------------------------------------------------------------------------
def test_frozen_margin_is_rounded_and_the_test_is_strict():
    model = tiny_model(13)
    batches = make_batches([16] * 3, seed=13)
    only_d = DiagnosticThresholds(stability_drift_ceiling=0.999)  # random labels: (c) is noise
    at = diagnose(model, batches, headline_acc=0.359, frozen_baseline_acc=0.339, thresholds=only_d)
    assert at.frozen_margin_pp == 2.0          # 1.9999999999999962 before rounding
    assert at.frozen_baseline_undercut is False and at.verdict == "trustworthy"
    assert at.to_dict()["diagnostics"]["d"] == "passed"
    under = diagnose(model, batches, headline_acc=0.358, frozen_baseline_acc=0.339,
                     thresholds=only_d)
    assert under.frozen_baseline_undercut is True
    assert under.verdict == "needs walk-back: deep blocks fail to beat frozen-random baseline"
    skipped = diagnose(model, batches, headline_acc=0.358)
    assert skipped.frozen_baseline_undercut is None
    assert skipped.to_dict()["diagnostics"]["d"] == "skipped"
    assert "NOT PROVIDED" in str(skipped)


# ---------------------------------------------------------------------------------------------
# Bad input: a clear error that names the fix
# ---------------------------------------------------------------------------------------------
def test_empty_eval_batches():
    for empty in ([], None, ()):
        with pytest.raises(ValueError, match="eval_batches is empty"):
            diagnose(tiny_model(), empty, headline_acc=0.5)


def test_a_single_batch_says_stability_needs_two():
    with pytest.raises(ValueError, match=r"at least 2 eval batches"):
        diagnose(tiny_model(), make_batches([32]), headline_acc=0.5)


def test_a_single_pair_instead_of_a_list():
    (x, y), = make_batches([64])
    with pytest.raises(ValueError, match=r"one \(x, y\) pair; pass a list of batches"):
        diagnose(tiny_model(), (x, y), headline_acc=0.5)
    with pytest.raises(ValueError, match="pass a list of batches"):
        diagnose(tiny_model(), [x, y], headline_acc=0.5)


def test_mismatched_lengths():
    (x, y), b = make_batches([32, 32])
    with pytest.raises(ValueError, match=r"eval batch 0: y must have shape \(32,\)"):
        diagnose(tiny_model(), [(x, y[:31]), b], headline_acc=0.5)


def test_per_sample_shapes_differ_between_batches():
    a, (x, y) = make_batches([32, 32])
    with pytest.raises(ValueError, match="all eval batches must share it"):
        diagnose(tiny_model(), [a, (x.reshape(32, 4, 6), y)], headline_acc=0.5)


def test_float_labels():
    a, (x, y) = make_batches([32, 32])
    with pytest.raises(TypeError, match="labels must be integer class indices"):
        diagnose(tiny_model(), [a, (x, y.float())], headline_acc=0.5)


def test_labels_out_of_range_for_the_logits():
    a, (x, y) = make_batches([32, 32])
    with pytest.raises(ValueError, match=r"labels must be in 0\.\.4 for a model with 5 logits"):
        diagnose(tiny_model(), [a, (x, y + C)], headline_acc=0.5)
    with pytest.raises(ValueError, match=r"labels must be in 0\.\.4"):
        diagnose(tiny_model(), [a, (x, y - C)], headline_acc=0.5)


def test_a_model_without_return_hidden():
    seq = nn.Sequential(nn.Linear(IN, D), nn.GELU(), nn.Linear(D, C))
    with pytest.raises(ModelContractError, match="return_hidden=True"):
        diagnose(seq, make_batches([16, 16]), headline_acc=0.5)
    assert issubclass(ModelContractError, TypeError)


class _Detaching(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = tiny_model()

    def forward(self, x, return_hidden=False):
        logits, hs = self.inner(x, return_hidden=True)
        return logits, [h.detach() for h in hs]


class _InPlace(nn.Module):
    """Updates the stream in place and appends the same tensor each time."""

    def __init__(self):
        super().__init__()
        self.inner = tiny_model()

    def forward(self, x, return_hidden=False):
        h = self.inner.embed(x)
        hs = [h]
        for block in self.inner.blocks:
            h += block(h)
            hs.append(h)
        return self.inner.readout(h), hs


def test_detached_hidden_states_are_refused():
    with pytest.raises(ModelContractError, match="not part of the autograd graph"):
        diagnose(_Detaching(), make_batches([16, 16]), headline_acc=0.5)


def test_in_place_stream_updates_are_refused_with_the_aliasing_message():
    with pytest.raises(ModelContractError, match=r"share memory.*in place.*h = h \+ f\(h\)"):
        diagnose(_InPlace(), make_batches([16, 16]), headline_acc=0.5)


@pytest.mark.parametrize("kw", ["headline_acc", "frozen_baseline_acc"])
def test_accuracy_outside_0_1_suggests_the_fraction(kw):
    args = {"headline_acc": 0.5, kw: 61.5}
    with pytest.raises(ValueError, match=r"looks like a percentage: pass 0\.615"):
        diagnose(tiny_model(), make_batches([16, 16]), **args)
    args[kw] = -0.1
    with pytest.raises(ValueError, match=r"fraction in \[0, 1\]"):
        diagnose(tiny_model(), make_batches([16, 16]), **args)
    args[kw] = "0.5"
    with pytest.raises(TypeError, match="must be a float"):
        diagnose(tiny_model(), make_batches([16, 16]), **args)


@pytest.mark.parametrize("bad", [
    {"g_norm_floor": -1e-7}, {"g_norm_floor": 0.0}, {"g_norm_floor": float("nan")},
    {"h_norm_explosion_ratio": 1.0}, {"h_norm_explosion_ratio": 0.5},
    {"h_norm_explosion_ratio": float("inf")}, {"stability_drift_ceiling": float("nan")},
    {"stability_drift_ceiling": 1.5}, {"frozen_acc_margin_pp": float("nan")},
    {"frozen_acc_margin_pp": 250.0},
])
def test_thresholds_that_make_no_sense(bad):
    with pytest.raises(ValueError, match="DiagnosticThresholds." + next(iter(bad))):
        DiagnosticThresholds(**bad)


def test_thresholds_must_be_the_dataclass():
    with pytest.raises(TypeError, match="DiagnosticThresholds"):
        diagnose(tiny_model(), make_batches([16, 16]), headline_acc=0.5,
                 thresholds={"g_norm_floor": 1e-7})


def test_custom_thresholds_are_used():
    report = diagnose(tiny_model(), make_batches([16, 16]), headline_acc=0.5,
                      thresholds=DiagnosticThresholds(g_norm_floor=1.0))
    assert report.fired["b"] and report.thresholds.g_norm_floor == 1.0


@pytest.mark.parametrize("layer", [-1, L + 1, 1.0, True])
def test_stability_layer_out_of_range(layer):
    with pytest.raises(ValueError, match=rf"stability_layer must be an int in 0\.\.{L}"):
        diagnose(tiny_model(), make_batches([16, 16]), headline_acc=0.5, stability_layer=layer)


def test_prepare_eval_batches_concatenates_in_order():
    batches = make_batches([5, 7, 3])
    x, y, sizes = prepare_eval_batches(batches, torch.device("cpu"))
    assert sizes == [5, 7, 3]
    assert torch.equal(x, torch.cat([b[0] for b in batches])) and y.dtype == torch.long


# ---------------------------------------------------------------------------------------------
# NaN, inf and zero inputs fire with a reason; they never pass
# ---------------------------------------------------------------------------------------------
class _NaNStream(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = tiny_model()

    def forward(self, x, return_hidden=False):
        logits, hs = self.inner(x, return_hidden=True)
        h = hs[-1] * float("nan")
        return self.inner.readout(h), hs[:-1] + [h]


def test_nan_hidden_states_fire_a_with_a_reason():
    report = diagnose(_NaNStream(), make_batches([16] * 3), headline_acc=0.5)
    assert report.fired["a"] and "non-finite hidden states" in report.reasons["a"]
    assert report.fired["b"] and report.fired["c"]
    assert report.verdict != "trustworthy"
    d = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert d["residual_norms"][-1] is None and d["diagnostics"]["a"] == "fired"
    assert "non-finite" in d["reasons"]["a"]


def test_a_zero_head_gives_zero_gradients_and_fires_b_and_c():
    model = tiny_model(14)
    with torch.no_grad():
        model.out_head.weight.zero_()
    report = diagnose(model, make_batches([16] * 3), headline_acc=0.5)
    assert report.bp_grad_norms == [0.0] * (L + 1)
    assert report.fired["b"]
    assert report.fired["c"] and "zero" in report.reasons["c"]
    json.dumps(report.to_dict(), allow_nan=False)


def test_nan_headline_accuracy_fires_d_with_a_reason():
    report = diagnose(tiny_model(), make_batches([16] * 3), headline_acc=float("nan"),
                      frozen_baseline_acc=0.3)
    assert report.frozen_baseline_undercut is True
    assert "headline_acc is nan" in report.reasons["d"]
    assert report.verdict.endswith("deep blocks fail to beat frozen-random baseline "
                                   "(could not be computed: headline_acc is nan)")
    inf = diagnose(tiny_model(), make_batches([16] * 3), headline_acc=0.5,
                   frozen_baseline_acc=float("inf"))
    assert inf.frozen_baseline_undercut is True and "frozen_baseline_acc" in inf.reasons["d"]


# ---------------------------------------------------------------------------------------------
# JSON and the template row
# ---------------------------------------------------------------------------------------------
def _roundtrip(report):
    text = json.dumps(report.to_dict(), allow_nan=False)
    return DiagnosticReport.from_dict(json.loads(text))


def test_json_round_trip_keeps_the_verdict_and_numbers():
    for model, kw in [(tiny_model(15), {"headline_acc": 0.41, "frozen_baseline_acc": 0.35}),
                      (explode(tiny_model(16)), {"headline_acc": 0.3, "frozen_baseline_acc": 0.35}),
                      (tiny_model(17), {})]:
        report = diagnose(model, make_batches([16] * 4), method_name="m", notes="n", **kw)
        back = _roundtrip(report)
        assert back.verdict == report.verdict and back.fired == report.fired
        assert back.residual_norms == report.residual_norms
        assert back.bp_grad_norms == report.bp_grad_norms
        assert back.cross_batch_stability == report.cross_batch_stability
        assert back.headline_acc == report.headline_acc
        assert back.frozen_baseline_acc == report.frozen_baseline_acc
        assert back.headline_acc_source == report.headline_acc_source
        assert back.to_dict() == report.to_dict()


def test_json_with_nans_is_strict_null_plus_reason():
    report = diagnose(_NaNStream(), make_batches([16] * 3), headline_acc=float("nan"),
                      frozen_baseline_acc=0.3)
    d = report.to_dict()
    text = json.dumps(d, allow_nan=False)          # raises on any NaN left in
    assert "NaN" not in text and "Infinity" not in text
    assert d["headline_acc"] is None and d["cross_batch_stability"] is None
    assert set(d["reasons"]) == {"a", "b", "c", "d", "e"}   # (e): the output error is undefined
    back = DiagnosticReport.from_dict(json.loads(text))
    assert back.verdict == report.verdict and back.fired == report.fired
    assert math.isnan(back.headline_acc)


def test_from_dict_refuses_an_unknown_schema_version():
    d = diagnose(tiny_model(), make_batches([16] * 3), headline_acc=0.5).to_dict()
    for version in (3, 0, None, "1"):
        d["schema_version"] = version
        with pytest.raises(ValueError, match="schema_version"):
            DiagnosticReport.from_dict(d)
    del d["schema_version"]
    with pytest.raises(ValueError, match="schema_version"):
        DiagnosticReport.from_dict(d)


def test_template_rows_carry_the_verdict():
    report = diagnose(explode(tiny_model(18)), make_batches([16] * 3), headline_acc=0.3,
                      frozen_baseline_acc=0.35, method_name="DFA_x")
    md = report.template_row("markdown", dataset="synthetic")
    assert report.verdict in md and "synthetic" in md and md.count("\n") == 2
    tex = report.template_row("latex")
    assert "\\toprule" in tex and "\\bottomrule" in tex
    assert report.verdict in tex and "DFA\\_x" in tex
    with pytest.raises(ValueError, match="markdown"):
        report.template_row("html")


def test_printed_report_has_every_layer_and_the_verdict():
    report = diagnose(explode(tiny_model(19)), make_batches([16] * 3), headline_acc=0.3)
    text = str(report)
    for l in range(L + 1):
        assert f"h_{l}:" in text and f"g_{l}:" in text
    assert f"VERDICT: {report.verdict}" in text
    assert "max per-block growth" in text and "cumulative" in text


# ---------------------------------------------------------------------------------------------
# The command line on a real checkpoint
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, data_root, synthetic_folder):
    runs = tmp_path_factory.mktemp("runs")
    cfg = TrainConfig(rule="bp", epochs=1, seed=1, data="synthetic", data_root=str(data_root),
                      synthetic_n_train=2000, synthetic_n_test=1280, d_hidden=16, num_blocks=2,
                      device="cpu", progress=False)
    return train(cfg, runs_root=runs)


def test_cli_diagnoses_a_checkpoint(tiny_run, data_root, tmp_path, capsys):
    ckpt = tiny_run.run_dir / "checkpoint.pt"
    out = tmp_path / "report.json"
    rc = main(["--checkpoint", str(ckpt), "--data-root", str(data_root), "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "VERDICT" in printed and str(out) in printed
    d = json.loads(out.read_text())                 # strict JSON written
    report = DiagnosticReport.from_dict(d)
    assert f"VERDICT: {report.verdict}" in printed
    assert report.num_eval_samples == 1280 and report.num_eval_batches == 10
    assert report.alignment is not None          # Γ with the run's saved rule state, by default
    assert len(report.residual_norms) == 3
    # its numbers are the trace's last entry: the same code on the same eval batches
    last = tiny_run.trace[-1]
    assert report.residual_norms == pytest.approx(last["residual_norms"], rel=1e-6)
    assert report.bp_grad_norms == pytest.approx(last["bp_grad_norms"], rel=1e-6)
    assert report.headline_acc == pytest.approx(last["acc_eval"])


def test_cli_default_output_is_beside_the_checkpoint(tiny_run, data_root, capsys):
    rc = main(["--checkpoint", str(tiny_run.run_dir / "checkpoint.pt"), "--data-root",
               str(data_root), "--no-gamma", "--frozen-baseline-acc", "0.99"])
    assert rc == 0
    d = json.loads((tiny_run.run_dir / "report.json").read_text())
    assert d["diagnostics"]["d"] == "fired" and d["alignment"] is None


def test_cli_corrupt_checkpoint_exits_2_with_a_message(tmp_path, capsys):
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"this is not a checkpoint" * 10)
    assert main(["--checkpoint", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "could not be read as a checkpoint" in err
    assert main(["--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err


def test_cli_percentage_baseline_exits_2(tiny_run, data_root, capsys):
    rc = main(["--checkpoint", str(tiny_run.run_dir / "checkpoint.pt"), "--data-root",
               str(data_root), "--no-gamma", "--frozen-baseline-acc", "61.5",
               "--out", str(tiny_run.run_dir / "unused.json")])
    assert rc == 2 and "pass 0.615" in capsys.readouterr().err
