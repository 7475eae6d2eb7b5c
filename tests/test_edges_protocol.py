"""Edge cases of the protocol that used to read as findings: each test feeds the input and checks
what a user sees (the accuracy, the verdict, the printed report, the error message).

- NaN logits are never a correct prediction: `diagnose`'s measured accuracy and the trainer's
  acc_eval count such rows as wrong, and (d) cannot pass on them; the reason names the rows.
- The partial audit refuses a seed given twice.
- A model or a hidden_modules selection with fewer than two hidden states is refused; a diagnostic
  fired by bad input says "could not be computed" in the verdict, a real firing keeps the paper's
  string.
- One-class eval labels or identical eval batches fire (c) with the reason.
- hidden_modules: pass-through modules, outputs edited after their module ran, and modules
  registered under two names get messages that name the modules (or are accepted).
"""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from fa_nb_utils.measures import ModelContractError, accuracy, layer_stats
from fa_nb_utils.model import ResidualMLP
from fa_nb_utils.partial_audit import partial_audit
from fa_nb_utils.protocol import diagnose
from fa_nb_utils.report import DiagnosticReport
from fa_nb_utils.trace import trace_entry

IN, D, C, L = 12, 16, 10, 2
NAME_A = "residual stream exploded"
NAME_C = "BP grad direction is drift-dominated"
NAME_D = "deep blocks fail to beat frozen-random baseline"


def batches(n=3, size=32, seed=0, labels=None):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(size, IN, generator=g)
        y = torch.randint(0, C, (size,), generator=g) if labels is None else labels.clone()
        out.append((x, y))
    return out


# ---------------------------------------------------------------------------------------------
# 1. Non-finite logits are never a correct prediction
# ---------------------------------------------------------------------------------------------
def nan_head_model():
    model = ResidualMLP(IN, D, C, L, seed=0)
    with torch.no_grad():
        model.out_head.weight.fill_(float("nan"))  # every logit NaN; hidden states finite
    return model


def mostly_class_zero(size=32):
    """3/4 of the labels are class 0: argmax of a NaN row (class 0) would score 0.75."""
    y = torch.zeros(size, dtype=torch.long)
    y[::4] = torch.arange(1, 1 + len(y[::4])) % (C - 1) + 1
    return y


def test_all_nan_logits_score_zero_and_d_fires_naming_the_rows():
    model, data = nan_head_model(), batches(labels=mostly_class_zero())
    report = diagnose(model, data, frozen_baseline_acc=0.5)
    assert report.headline_acc == 0.0                      # not 0.75, the share of class 0
    assert report.fired["d"] is True
    assert "non-finite logits in 96 of 96 eval rows" in report.reasons["d"]
    for k in "bce":
        assert report.fired[k] and "non-finite logits in 96 of 96 eval rows" in report.reasons[k]
    assert f"{NAME_D} (could not be computed: " in report.verdict
    text = str(report)
    assert f"VERDICT: {report.verdict}" in text
    assert "FLAG: headline accuracy measured with non-finite logits in 96 of 96" in text
    # without a baseline (d) still cannot be skipped as if the accuracy were one
    alone = diagnose(model, data)
    assert alone.fired["d"] is True and "96 of 96" in alone.reasons["d"]
    # the one accuracy function, which the trainer calls
    x = torch.cat([b[0] for b in data])
    y = torch.cat([b[1] for b in data])
    assert accuracy(model, x, y) == 0.0


class SomeNaNRows(nn.Module):
    """Logits NaN for the rows whose first input feature is 100; the others are finite."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.embed, self.block, self.head = nn.Linear(IN, D), nn.Linear(D, D), nn.Linear(D, C)
        for p in self.parameters():
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    def forward(self, x, return_hidden=False):
        h0 = self.embed(x)
        h1 = h0 + self.block(h0)
        logits = self.head(h1)
        logits = torch.where(x[:, :1] == 100.0, torch.full_like(logits, float("nan")), logits)
        return (logits, [h0, h1]) if return_hidden else logits


def test_nan_rows_count_as_wrong_and_the_rest_as_measured():
    model = SomeNaNRows()
    data = batches(n=4, size=16, seed=3)
    bad = torch.zeros(64, dtype=torch.bool)
    bad[[1, 5, 17, 30, 33, 40, 50, 63]] = True
    x = torch.cat([b[0] for b in data])
    x[bad, 0] = 100.0
    with torch.no_grad():
        y = model(x).argmax(-1)          # every finite row correct; a NaN row's argmax is 0
    y[bad] = 0                           # ... so the old count took the NaN rows as correct
    data = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    assert accuracy(model, x, y) == 56 / 64
    report = diagnose(model, data, frozen_baseline_acc=0.1)
    assert report.headline_acc == 56 / 64
    assert report.fired["d"] is True                       # +77.5 pp, but on non-finite logits
    assert "non-finite logits in 8 of 64 eval rows" in report.reasons["d"]
    assert "non-finite logits in 8 of 64 eval rows" in report.reasons["b"]


def test_the_trainer_records_nan_logits_as_wrong(synthetic_data):
    data = synthetic_data
    model = ResidualMLP(data.test_x[0].numel(), D, 10, 1, seed=0)
    with torch.no_grad():
        model.out_head.weight.fill_(float("nan"))
    entry = trace_entry(model, data, data.test_x[:64], data.test_y[:64], epoch=0)
    assert entry["acc_eval"] == 0.0      # not the share of class 0 in the test split


# ---------------------------------------------------------------------------------------------
# 2. The partial audit refuses a seed given twice
# ---------------------------------------------------------------------------------------------
KW = dict(h0_source="each run's final median ||h_0||", num_blocks=4, grad_layer=2,
          grad_scale="paper scale")


def test_a_seed_given_twice_is_refused_with_the_rows():
    r = {"seed": 7, "acc": 0.40, "h_L": 5.0, "h_0": 1.0, "g_k": 1e-4}
    r2 = {"seed": 8, "acc": 0.30, "h_L": 5.0, "h_0": 1.0, "g_k": 1e-4}
    with pytest.raises(ValueError, match=r"rows 0, 1 all have seed 7"):
        partial_audit([r, r, r2], 0.349, **KW)
    with pytest.raises(ValueError, match=r"rows 0, 2 all have seed 7"):
        partial_audit([r, r2, dict(r, acc=0.41)], 0.349, **KW)
    assert len(partial_audit([r, r2], 0.349, **KW).seeds) == 2


# ---------------------------------------------------------------------------------------------
# 3. Fewer than two hidden states; a firing of bad input says so in the verdict
# ---------------------------------------------------------------------------------------------
def test_a_model_without_blocks_is_refused_before_any_verdict():
    model = ResidualMLP(IN, D, C, 0, seed=0)               # one hidden state, h_0
    with pytest.raises(ModelContractError, match=r"returned 1 hidden state.*h_0 and at least one "
                                                 r"block's output"):
        diagnose(model, batches())
    # layer_stats itself still measures a lone h_0 (the trainer's trace, a gain at h_0)
    x, y = batches(n=1)[0]
    assert len(layer_stats(model, x, y).residual_norms) == 1


class TwoBlocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.head = nn.Linear(IN, D), nn.Linear(D, C)
        self.blocks = nn.ModuleList(nn.Linear(D, D) for _ in range(2))

    def forward(self, x):
        h = self.embed(x)
        for b in self.blocks:
            h = h + b(h)
        return self.head(h)


def test_hidden_modules_selecting_one_module_is_refused_with_what_it_matched():
    model = TwoBlocks()
    with pytest.raises(ValueError, match=r"\['embed'\] selects 1 module\(s\) \('embed'\).*h_0..h_L"
                                         r", at least two"):
        diagnose(model, batches(), hidden_modules=["embed"])
    with pytest.raises(ModelContractError, match=r"pattern .*selects 1 module\(s\) "
                                                 r"\('blocks\.0'\).*at least two"):
        diagnose(model, batches(), hidden_modules=r"blocks\.0")
    assert len(diagnose(model, batches(), hidden_modules=r"embed|blocks\.\d").residual_norms) == 3


def report_with(**kw):
    base = dict(method_name="m", notes="", residual_norms=[1.0, 2.0], bp_grad_norms=[1e-3, 1e-3],
                stability_layer=0, cross_batch_stability=0.0, headline_acc=0.5,
                frozen_baseline_acc=None)
    return DiagnosticReport(**{**base, **kw})


def test_a_diagnostic_that_could_not_be_computed_says_so_in_the_verdict():
    one = report_with(residual_norms=[1.0], bp_grad_norms=[1e-3])
    assert one.verdict == (f"needs walk-back: {NAME_A} (could not be computed: needs at least 2 "
                           "hidden states (h_0..h_L), got 1)")
    assert f"VERDICT: {one.verdict}" in str(one)
    nan = report_with(residual_norms=[1.0, math.nan])
    assert nan.verdict == (f"needs walk-back: {NAME_A} (could not be computed: non-finite "
                           "residual norm at layer(s) [1])")
    # real firings keep the paper's strings, bit for bit
    assert report_with(residual_norms=[1.0, 100.0]).verdict == f"needs walk-back: {NAME_A}"
    both = report_with(residual_norms=[1.0, 100.0], cross_batch_stability=math.nan)
    assert both.verdict == (f"needs walk-back: {NAME_A}; {NAME_C} (could not be computed: "
                            "stability undefined (a batch's mean BP gradient is zero or "
                            "non-finite))")


def test_the_partial_audit_says_when_a_firing_could_not_be_computed():
    bad = partial_audit([{"seed": 1, "acc": 0.6, "h_L": float("inf"), "g_k": None}], 0.349, **KW)
    assert bad.verdict == (f"needs walk-back: {NAME_A} (could not be computed: ||h_L|| is inf: "
                           "non-finite residual norm (seed 1))")
    assert f"VERDICT: {bad.verdict}" in str(bad)
    real = partial_audit([{"seed": 1, "acc": 0.6, "h_L": 1e8, "h_0": 1.0, "g_k": None}], 0.349,
                         **KW)
    assert real.verdict == f"needs walk-back: {NAME_A}"


# ---------------------------------------------------------------------------------------------
# 4. Degenerate eval data fire (c) with the reason
# ---------------------------------------------------------------------------------------------
def test_one_class_eval_labels_fire_c_with_the_reason():
    model = ResidualMLP(IN, D, C, L, seed=0)
    report = diagnose(model, batches(labels=torch.full((32,), 3)), headline_acc=0.5)
    assert report.fired["c"] and report.reasons["c"].startswith(
        "all 96 eval labels are class 3")
    assert f"{NAME_C} (could not be computed: all 96 eval labels are class 3" in report.verdict
    assert "FLAG: all 96 eval labels are class 3" in str(report)


@pytest.mark.parametrize("order, same", [((0, 0, 0), "0 = 1 = 2"), ((0, 1, 0), "0 = 2")])
def test_identical_eval_batches_fire_c_with_the_reason(order, same):
    model = ResidualMLP(IN, D, C, L, seed=0)
    distinct = batches(n=2, seed=5)
    report = diagnose(model, [distinct[i] for i in order], headline_acc=0.5)
    assert report.fired["c"]
    assert report.reasons["c"].startswith(f"eval batches {same} are identical (same x and y)")
    assert "(could not be computed: eval batches" in report.verdict
    # the same x with other labels is another batch
    x, y = distinct[0]
    relabelled = diagnose(model, [(x, y), (x, (y + 1) % C), distinct[1]], headline_acc=0.5)
    assert "c" not in relabelled.reasons


# ---------------------------------------------------------------------------------------------
# 5. hidden_modules messages
# ---------------------------------------------------------------------------------------------
class WithIdentities(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.head = nn.Linear(IN, D), nn.Linear(D, C)
        self.id1, self.id2, self.block = nn.Identity(), nn.Identity(), nn.Linear(D, D)

    def forward(self, x):
        h = self.id2(self.id1(self.embed(x)))
        h = h + self.block(h)
        return self.head(h)


def test_two_pass_through_modules_are_named_as_one_state_not_an_in_place_update():
    with pytest.raises(ModelContractError, match=r"modules 'id1' and 'id2' returned the same "
                                                 r"tensor object: an identity-like module.*Name "
                                                 r"one of them") as err:
        diagnose(WithIdentities(), batches(), hidden_modules=["id1", "id2"])
    assert "in place" not in str(err.value)


class EditsEmbedAfter(TwoBlocks):
    def forward(self, x):
        h = self.embed(x)
        h.relu_()                        # edits embed's output after embed ran
        for b in self.blocks:
            h = h + b(h)
        return self.head(h)


class InPlaceBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(D, D)

    def forward(self, h):
        h += self.fc(h)                  # updates its input, the previous state, in place
        return h


class InPlaceStream(TwoBlocks):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(InPlaceBlock() for _ in range(2))

    def forward(self, x):
        h = self.embed(x)
        for b in self.blocks:
            h = b(h)
        return self.head(h)


def test_an_output_edited_after_its_module_ran_names_the_module_and_the_fix():
    with pytest.raises(ModelContractError, match=r"output of module\(s\) \['embed'\] was edited in "
                                                 r"place after the module ran.*Name a module whose "
                                                 r"output is not edited afterwards") as err:
        diagnose(EditsEmbedAfter(), batches(), hidden_modules=["embed", "blocks.0", "blocks.1"])
    assert "appended to the returned list" not in str(err.value)
    with pytest.raises(ModelContractError, match=r"module 'blocks.0' edited the output of 'embed' "
                                                 r"in place and returned it"):
        diagnose(InPlaceStream(), batches(), hidden_modules=["embed", "blocks.0", "blocks.1"])


class ClampsItsOwnOutput(nn.Module):
    """Edits its output in place before returning it: that edited tensor IS its output."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(D, D)

    def forward(self, h):
        out = h + self.fc(h)
        out.clamp_(-1e3, 1e3)
        return out


class ClampStream(TwoBlocks):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(ClampsItsOwnOutput() for _ in range(2))

    def forward(self, x, return_hidden=False):
        hs = [self.embed(x)]
        for b in self.blocks:
            hs.append(b(hs[-1]))
        logits = self.head(hs[-1])
        return (logits, hs) if return_hidden else logits


def test_a_module_editing_its_own_output_before_returning_it_is_accepted():
    model, data = ClampStream(), batches()
    report = diagnose(model, data, hidden_modules=["embed", "blocks.0", "blocks.1"])
    x = torch.cat([b[0] for b in data])
    with torch.no_grad():
        hs = model(x, return_hidden=True)[1]
    want = [float(np.median(h.double().norm(dim=-1).numpy())) for h in hs]
    assert report.residual_norms == pytest.approx(want, rel=1e-6)
    assert not any(v is None for v in report.to_dict()["residual_norms"])


class Aliased(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.head = nn.Linear(IN, D), nn.Linear(D, C)
        self.adds = nn.ModuleList(nn.Linear(D, D) for _ in range(2))
        self.first = self.adds[0]        # the same module under a second name

    def forward(self, x):
        h = self.embed(x)
        h = self.first(h)
        return self.head(h + self.adds[1](h))


def test_a_module_registered_under_two_names_may_be_named_by_either():
    torch.manual_seed(0)
    model, data = Aliased(), batches()
    by_alias = diagnose(model, data, hidden_modules=["embed", "first", "adds.1"])
    canonical = diagnose(model, data, hidden_modules=["embed", "adds.0", "adds.1"])
    assert by_alias.to_dict() == canonical.to_dict()
    with pytest.raises(ValueError, match=r"'first' and 'adds.0', which are the same module"):
        diagnose(model, data, hidden_modules=["embed", "first", "adds.0"])
    assert len(diagnose(model, data, hidden_modules=r"embed|first|adds\.\d").residual_norms) == 3
