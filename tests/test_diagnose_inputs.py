"""`diagnose` and Γ on the inputs people actually pass: nothing wrong, nothing lost.

- Eval batches are read exactly once: a shuffled DataLoader keeps each sample with its own
  credit (Γ of the exact gradient is 1 at every layer), a generator works, for `diagnose` and
  `gamma` alike.
- A NaN or inf accuracy never gives "trustworthy": with a frozen baseline (d) fires with the
  reason; without one `diagnose` refuses before any compute (Python and numpy floats).
- A hidden state edited in place after it was returned is refused (the report would show the
  edited values); in-place ops on tensors the model does not return are fine.
- Clear errors or correct results instead of tracebacks: inside torch.inference_mode(), a model
  with every parameter frozen and integer-token inputs, a model on the meta device, numpy eval
  batches, numpy numbers in a hand-built report, and the command line's --out path and edited
  checkpoints.
"""
import copy
import json
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import fa_nb_utils.checkpoint as checkpoint_module
from fa_nb_utils.alignment import gamma
from fa_nb_utils.checkpoint import load_checkpoint, save_checkpoint
from fa_nb_utils.cli import diagnose_main as main
from fa_nb_utils.protocol import diagnose, prepare_eval_batches
from fa_nb_utils.measures import CONTRACT, ModelContractError
from fa_nb_utils.model import ResidualMLP
from fa_nb_utils.report import DiagnosticReport
from fa_nb_utils.rules import bp_credits
from fa_nb_utils.config import TrainConfig
from fa_nb_utils.trainer import train

IN, D, C, L = 48, 32, 10, 3


def make_model(seed=0):
    return ResidualMLP(IN, D, C, L, seed=seed)


def make_xy(n=96, seed=1, input_dim=IN, classes=C):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, input_dim, generator=g), torch.randint(0, classes, (n,), generator=g)


def split(x, y, size=32):
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(y), size)]


def exact_credits(model):
    return lambda x, y: bp_credits(model, x, y)


def comparable(report):
    """The report's JSON minus nothing: every number, reason and verdict."""
    return json.loads(report.to_json())


# ---------------------------------------------------------------------------------------------
# 1. Eval batches are read once
# ---------------------------------------------------------------------------------------------
def test_a_shuffled_dataloader_keeps_each_sample_with_its_own_credit():
    model = make_model()
    x, y = make_xy()
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True,
                        generator=torch.Generator().manual_seed(3))
    report = diagnose(model, loader, headline_acc=0.5, credit_fn=exact_credits(model))
    assert report.alignment["per_layer"] == pytest.approx([1.0] * (L + 1), abs=1e-9)
    assert report.alignment["per_layer_reasons"] == {}
    # medians do not depend on the order: the same (a)/(b) numbers as the unshuffled batches
    plain = diagnose(model, split(x, y), headline_acc=0.5)
    assert report.residual_norms == pytest.approx(plain.residual_norms, rel=1e-9)
    assert report.bp_grad_norms == pytest.approx(plain.bp_grad_norms, rel=1e-9)
    assert report.num_eval_samples == 96 and report.num_eval_batches == 3
    # gamma on its own, from the loader
    res = gamma(model, loader, credit_fn=exact_credits(model))
    assert res.per_layer == pytest.approx([1.0] * (L + 1), abs=1e-9)


def test_a_generator_of_batches_works_and_gives_the_list_numbers():
    model = make_model(1)
    batches = split(*make_xy(seed=2))
    want = diagnose(model, batches, headline_acc=0.5, credit_fn=exact_credits(model))
    got = diagnose(model, (b for b in batches), headline_acc=0.5, credit_fn=exact_credits(model))
    assert comparable(got) == comparable(want)
    res = gamma(model, (b for b in batches), credit_fn=exact_credits(model))
    assert res.per_layer == pytest.approx([1.0] * (L + 1), abs=1e-9)


class _CountingIterable:
    def __init__(self, batches):
        self.batches, self.passes = batches, 0

    def __iter__(self):
        self.passes += 1
        return iter(self.batches)


def test_an_iterable_is_iterated_exactly_once():
    model = make_model(2)
    batches = _CountingIterable(split(*make_xy(seed=3)))
    diagnose(model, batches, headline_acc=0.5, credit_fn=exact_credits(model))
    assert batches.passes == 1
    batches.passes = 0
    gamma(model, batches, credit_fn=exact_credits(model))
    assert batches.passes == 1


# ---------------------------------------------------------------------------------------------
# 2. A NaN or inf accuracy is never trustworthy
# ---------------------------------------------------------------------------------------------
NONFINITE = [float("nan"), float("inf"), -float("inf"), np.float32("nan"), np.float64("inf"),
             np.float16("-inf")]


@pytest.mark.parametrize("bad", NONFINITE, ids=repr)
def test_non_finite_headline_without_baseline_fires_d_with_the_reason(bad):
    # no baseline would skip (d); a NaN or inf headline accuracy fires it instead, never passes
    report = diagnose(make_model(), split(*make_xy()), headline_acc=bad)
    assert report.fired["d"] is True and not report.trustworthy
    assert report.reasons["d"].startswith("headline_acc is ")
    assert report.to_dict()["diagnostics"]["d"] == "fired"
    json.dumps(report.to_dict(), allow_nan=False)


@pytest.mark.parametrize("bad", NONFINITE, ids=repr)
def test_non_finite_headline_with_a_baseline_fires_d_with_the_reason(bad):
    report = diagnose(make_model(), split(*make_xy()), headline_acc=bad, frozen_baseline_acc=0.3)
    assert report.fired["d"] is True and not report.trustworthy
    assert report.reasons["d"].startswith("headline_acc is ")
    json.dumps(report.to_dict(), allow_nan=False)


@pytest.mark.parametrize("bad", NONFINITE, ids=repr)
def test_non_finite_baseline_fires_d_with_the_reason(bad):
    report = diagnose(make_model(), split(*make_xy()), headline_acc=np.float32(0.5),
                      frozen_baseline_acc=bad)
    assert report.fired["d"] is True and not report.trustworthy
    assert report.reasons["d"].startswith("frozen_baseline_acc is ")


# ---------------------------------------------------------------------------------------------
# 3. A hidden state edited in place after it was returned
# ---------------------------------------------------------------------------------------------
class _EditsReturnedStates(nn.Module):
    """Appends each new state, then edits it in place before the next block uses it."""

    def __init__(self, how):
        super().__init__()
        self.inner, self.how = make_model(), how

    def forward(self, x, return_hidden=False):
        m = self.inner
        h = m.embed(m.flatten_input(x))
        hs = [h]
        for block in m.blocks:
            h = h + block(h)
            hs.append(h)
            if self.how == "relu":
                h = F.relu(h, inplace=True)
            else:
                h.mul_(2)
        logits = m.readout(h)
        return (logits, hs) if return_hidden else logits


class _EditsFirstState(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = make_model()

    def forward(self, x, return_hidden=False):
        m = self.inner
        h = m.embed(m.flatten_input(x))
        hs = [h]
        h.mul_(0.5)                      # h_0 edited after it was appended
        for block in m.blocks:
            h = h + block(h)
            hs.append(h)
        logits = m.readout(h)
        return (logits, hs) if return_hidden else logits


class _InPlaceOnIntermediates(nn.Module):
    """ResidualMLP's numbers, with in-place ops on tensors it does not return."""

    def __init__(self):
        super().__init__()
        self.inner = make_model()

    def forward(self, x, return_hidden=False):
        m = self.inner
        flat = m.flatten_input(x).clone()
        flat.mul_(1.0)                   # in place on the input copy
        h = m.embed(flat)
        hs = [h]
        for block in m.blocks:
            u = F.gelu(block.fc1(block.ln(h)))
            u.mul_(1.0)
            f = block.fc2(u)
            f.add_(0.0)
            h = h + f
            hs.append(h)
        logits = m.readout(h)
        return (logits, hs) if return_hidden else logits


@pytest.mark.parametrize("how", ["relu", "mul"])
def test_a_returned_state_edited_in_place_is_refused_with_the_layer(how):
    with pytest.raises(ModelContractError) as info:
        diagnose(_EditsReturnedStates(how), split(*make_xy()), headline_acc=0.5)
    msg = str(info.value)
    assert "h_1" in msg and "modified in place" in msg and CONTRACT in msg
    assert "h_0" not in msg.split(";")[0]


def test_an_edit_of_h0_after_it_was_appended_is_refused():
    with pytest.raises(ModelContractError, match=r"h_0.*modified in place"):
        diagnose(_EditsFirstState(), split(*make_xy()), headline_acc=0.5)


def test_in_place_ops_on_intermediate_tensors_are_fine():
    batches = split(*make_xy(seed=4))
    plain = diagnose(make_model(), batches, headline_acc=0.5)
    other = diagnose(_InPlaceOnIntermediates(), batches, headline_acc=0.5)
    assert comparable(other) == comparable(plain)


def test_in_place_edits_of_the_callers_inputs_beforehand_are_not_blamed():
    class _ReturnsItsInput(nn.Module):   # h_0 is the input itself (a view of it)
        def __init__(self):
            super().__init__()
            self.inner = make_model()

        def forward(self, x, return_hidden=False):
            h0 = x.reshape(x.shape[0], -1)
            logits, hs = self.inner(h0, return_hidden=True)
            return (logits, [h0] + hs) if return_hidden else logits

    x, y = make_xy()
    x.mul_(1.0)                          # the caller normalised the data in place
    report = diagnose(_ReturnsItsInput(), split(x, y), headline_acc=0.5)
    assert len(report.residual_norms) == L + 2


# ---------------------------------------------------------------------------------------------
# 4. inference_mode, frozen token models, meta models, numpy inputs
# ---------------------------------------------------------------------------------------------
def test_diagnose_inside_inference_mode_gives_the_same_numbers():
    model = make_model(5)
    batches = split(*make_xy(seed=5))
    want = diagnose(model, batches, frozen_baseline_acc=0.2, credit_fn=exact_credits(model))
    with torch.inference_mode():
        got = diagnose(model, batches, frozen_baseline_acc=0.2, credit_fn=exact_credits(model))
        inf_batches = [(x.clone(), y.clone()) for x, y in batches]   # inference tensors
        assert inf_batches[0][0].is_inference()
        got2 = diagnose(model, inf_batches, frozen_baseline_acc=0.2,
                        credit_fn=exact_credits(model))
        res = gamma(model, inf_batches, credit_fn=exact_credits(model))
    assert comparable(got) == comparable(want)
    assert comparable(got2) == comparable(want)
    assert res.per_layer == pytest.approx([1.0] * (L + 1), abs=1e-9)
    with torch.no_grad():
        assert comparable(diagnose(model, batches, frozen_baseline_acc=0.2,
                                   credit_fn=exact_credits(model))) == comparable(want)


def test_a_model_built_under_inference_mode_gets_a_clear_error():
    with torch.inference_mode():
        model = make_model()
    batches = split(*make_xy())
    with pytest.raises(ValueError, match=r"inference tensors.*copy\.deepcopy"):
        diagnose(model, batches, headline_acc=0.5)
    with pytest.raises(ValueError, match=r"inference tensors"):
        gamma(model, batches, credit_fn=exact_credits(model))
    want = diagnose(make_model(), batches, headline_acc=0.5)
    assert comparable(diagnose(copy.deepcopy(model), batches, headline_acc=0.5)) == \
        comparable(want)


class _TokenModel(nn.Module):
    """Integer tokens -> nn.Embedding -> pre-LN residual blocks over (N, T, d)."""

    def __init__(self, vocab=17, d=8, classes=4, blocks=2, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU(),
                                                  nn.Linear(d, d)) for _ in range(blocks))
        self.out_ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, x, return_hidden=False):
        h = self.embed(x)
        hs = [h]
        for block in self.blocks:
            h = h + block(h)
            hs.append(h)
        logits = self.head(self.out_ln(h.mean(dim=1)))
        return (logits, hs) if return_hidden else logits


def token_batches(n_batches=3, n=16, t=5, vocab=17, classes=4, seed=6):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, vocab, (n, t), generator=g),
             torch.randint(0, classes, (n,), generator=g)) for _ in range(n_batches)]


def test_a_frozen_token_model_gives_the_trainable_models_report():
    trainable = _TokenModel()
    frozen = copy.deepcopy(trainable)
    for p in frozen.parameters():
        p.requires_grad_(False)
    batches = token_batches()
    want = diagnose(trainable, batches, headline_acc=0.5, frozen_baseline_acc=0.3)
    got = diagnose(frozen, batches, headline_acc=0.5, frozen_baseline_acc=0.3)
    assert comparable(got) == comparable(want)
    assert not any(p.requires_grad for p in frozen.parameters())   # flags restored
    assert all(p.grad is None for p in frozen.parameters())
    # partly frozen: the flags that were on stay on, the others off
    partly = copy.deepcopy(trainable)
    partly.embed.weight.requires_grad_(False)
    partly.blocks[0][1].weight.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in partly.named_parameters()}
    assert comparable(diagnose(partly, batches, headline_acc=0.5,
                               frozen_baseline_acc=0.3)) == comparable(want)
    assert {n: p.requires_grad for n, p in partly.named_parameters()} == flags


def test_frozen_flags_are_restored_when_the_forward_fails():
    class _Fails(_TokenModel):
        def forward(self, x, return_hidden=False):
            raise TypeError("boom")

    model = _Fails()
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ModelContractError):
        diagnose(model, token_batches(), headline_acc=0.5)
    assert not any(p.requires_grad for p in model.parameters())


def test_a_model_on_the_meta_device_gets_a_clear_error():
    model = make_model().to("meta")
    batches = split(*make_xy())
    with pytest.raises(ValueError, match=r"meta device.*to_empty"):
        diagnose(model, batches, headline_acc=0.5)
    with pytest.raises(ValueError, match=r"meta device.*to_empty"):
        gamma(model, batches, credit_fn=lambda x, y: None)


def test_numpy_eval_batches_give_the_tensor_numbers():
    model = make_model(7)
    x, y = make_xy(seed=7)
    want = diagnose(model, split(x, y), headline_acc=0.5)
    as_np = [(bx.numpy().astype(np.float64), by.numpy()) for bx, by in split(x, y)]
    assert comparable(diagnose(model, as_np, headline_acc=0.5)) == comparable(want)
    small_labels = [(bx, by.astype(np.uint8)) for bx, by in as_np]
    assert comparable(diagnose(model, small_labels, headline_acc=0.5)) == comparable(want)
    mixed = [(bx.numpy()[::-1].copy()[::-1], by) for bx, by in split(x, y)]  # strided, tensor y
    assert comparable(diagnose(model, mixed, headline_acc=0.5)) == comparable(want)
    gx, gy, sizes = prepare_eval_batches(as_np, torch.device("cpu"), dtype=torch.float32)
    assert gx.dtype == torch.float32 and gy.dtype == torch.long and sizes == [32, 32, 32]
    assert comparable(diagnose(_TokenModel(), [(bx.numpy(), by.numpy())
                                               for bx, by in token_batches()],
                               headline_acc=0.5)) == comparable(
        diagnose(_TokenModel(), token_batches(), headline_acc=0.5))


def test_numpy_arrays_that_are_not_numbers_are_refused_clearly():
    x, y = make_xy()
    obj = [(np.array([object()] * 32, dtype=object), y[:32].numpy()) for _ in range(2)]
    with pytest.raises(TypeError, match=r"eval batch 0: x is a numpy array of dtype object"):
        diagnose(make_model(), obj, headline_acc=0.5)
    words = [(x[:32].numpy(), np.array(["cat"] * 32)) for _ in range(2)]
    with pytest.raises(TypeError, match=r"eval batch 0: y is a numpy array of dtype <U3"):
        diagnose(make_model(), words, headline_acc=0.5)
    with pytest.raises(ValueError, match="looks like one"):
        diagnose(make_model(), (x.numpy(), y.numpy()), headline_acc=0.5)


def test_numpy_numbers_in_a_hand_built_report_are_numbers():
    f32 = np.float32
    kw = dict(method_name="m", notes="", stability_layer=np.int64(1),
              residual_norms=[f32(1.0), f32(2.0), f32(3.0)],
              bp_grad_norms=[f32(1e-3), f32(2e-3), f32(3e-3)],
              cross_batch_stability=f32(0.1), headline_acc=f32(0.5),
              frozen_baseline_acc=np.float64(0.3))
    report = DiagnosticReport(**kw)
    assert report.verdict == "trustworthy" and report.reasons == {}
    d = json.loads(report.to_json())
    plain = DiagnosticReport(**{k: (float(v) if isinstance(v, np.floating) else
                                    [float(u) for u in v] if isinstance(v, list) else
                                    int(v) if isinstance(v, np.integer) else v)
                                for k, v in kw.items()})
    assert d == json.loads(plain.to_json())
    assert "h_2: 3.000e+00" in str(report)
    bad = DiagnosticReport(**{**kw, "residual_norms": [f32(1.0), f32("nan"), f32(3.0)]})
    assert bad.fired["a"] and "non-finite residual norm at layer(s) [1]" == bad.reasons["a"]
    boolean = DiagnosticReport(**{**kw, "residual_norms": [np.True_, f32(2.0), f32(3.0)]})
    assert boolean.fired["a"] and "a" in boolean.reasons


# ---------------------------------------------------------------------------------------------
# 4. The command line: the output path first, edited checkpoints with a message
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dfa_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("dfa_cli")
    cfg = TrainConfig(rule="dfa", epochs=1, data="synthetic", synthetic_n_train=500,
                      synthetic_n_test=1280, d_hidden=32, data_root=str(root / "data"),
                      device="cpu", progress=False)
    result = train(cfg, runs_root=root / "runs")
    return result.run_dir / "checkpoint.pt", root / "data"


FORMAT_KEYS = ("format", "schema_version")


def edited_checkpoint(src, dst, edit):
    """Load with the package's loader, edit, and write back through save_checkpoint."""
    state = load_checkpoint(src)
    state = {k: v for k, v in state.items()
             if k not in FORMAT_KEYS and not any(w in k.lower() for w in
                                                 ("digest", "sha", "checksum", "integrity"))}
    edit(state)
    save_checkpoint(dst, state)
    return dst


def _no_loading(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the checkpoint was loaded before the --out check")
    monkeypatch.setattr(checkpoint_module, "load_checkpoint", refuse)


def test_cli_out_is_an_existing_folder(dfa_run, tmp_path, capsys, monkeypatch):
    ckpt, _ = dfa_run
    _no_loading(monkeypatch)
    assert main(["--checkpoint", str(ckpt), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(tmp_path) in err and "is a folder" in err


def test_cli_out_under_a_file(dfa_run, tmp_path, capsys, monkeypatch):
    ckpt, _ = dfa_run
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "sub" / "report.json"
    _no_loading(monkeypatch)
    assert main(["--checkpoint", str(ckpt), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(out) in err and "not a folder" in err
    assert str(tmp_path / "afile") in err


def test_cli_out_in_an_unwritable_folder(dfa_run, tmp_path, capsys, monkeypatch):
    ckpt, _ = dfa_run
    _no_loading(monkeypatch)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k:
                        False if str(p) == str(tmp_path) else real_access(p, mode, *a, **k))
    assert main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not writable" in err and str(tmp_path) in err


def test_cli_out_in_a_folder_to_be_created(dfa_run, tmp_path, capsys):
    ckpt, data = dfa_run
    out = tmp_path / "new" / "deeper" / "report.json"
    rc = main(["--checkpoint", str(ckpt), "--data-root", str(data), "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert json.loads(out.read_text())["alignment"] is not None


@pytest.mark.parametrize("key", ["rule", "model", "config"])
def test_cli_checkpoint_missing_an_entry(dfa_run, tmp_path, capsys, key):
    ckpt, data = dfa_run
    bad = edited_checkpoint(ckpt, tmp_path / "checkpoint.pt", lambda s: s.pop(key))
    rc = main(["--checkpoint", str(bad), "--data-root", str(data),
               "--out", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"error: {bad}: ") and f"no '{key}' entry" in err
    assert "Traceback" not in err
    if key == "rule":
        assert "--no-gamma" in err
        rc = main(["--checkpoint", str(bad), "--data-root", str(data), "--no-gamma",
                   "--out", str(tmp_path / "r.json")])
        assert rc == 0


def test_cli_checkpoint_whose_config_no_longer_fits_its_weights(dfa_run, tmp_path, capsys):
    ckpt, data = dfa_run

    def widen(state):
        state["config"] = dict(state["config"], d_hidden=48)
    bad = edited_checkpoint(ckpt, tmp_path / "checkpoint.pt", widen)
    rc = main(["--checkpoint", str(bad), "--data-root", str(data),
               "--out", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"error: {bad}: ")
    assert "model parameter 'embed.weight' has shape (32, 3072) in the checkpoint but " \
        "(48, 3072) in this model" in err and "Use the config the checkpoint was trained" in err
    assert not (tmp_path / "r.json").exists()


def test_cli_checkpoint_whose_rule_state_no_longer_fits(dfa_run, tmp_path, capsys):
    ckpt, data = dfa_run

    def shrink(state):
        state["rule"] = {k: v[..., :3] if torch.is_tensor(v) and v.dim() else v
                         for k, v in state["rule"].items()}
    bad = edited_checkpoint(ckpt, tmp_path / "checkpoint.pt", shrink)
    rc = main(["--checkpoint", str(bad), "--data-root", str(data),
               "--out", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"error: {bad}: ")
    assert "rule parameter 'feedback' has shape (4, 32, 3) in the checkpoint but (4, 32, 10) " \
        "in this rule" in err
