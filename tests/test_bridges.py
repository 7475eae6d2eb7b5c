"""State Bridge and Credit Bridge: exact limits, learning, training, state and Γ.

- With G replaced by the network's own exact forward from h_k (blocks k..L-1, then out_ln), SB's
  credit is the BP gradient; with V replaced by the true cross-entropy-to-go, CB's is too
  (float64, against autograd's per-sample gradient).
- On a frozen BP-trained network, training only the bridge raises its credit's cosine with the
  true gradient at layer L // 2.
- Each rule lowers the training loss, its checkpoints round-trip and resume bit-identically, and
  without its bridge Γ is N/A, never a number.
"""
import importlib

import pytest
import torch
import torch.nn.functional as F

from fa_nb_utils.alignment import GammaUnavailable, gamma
from fa_nb_utils.bridges import CreditBridgeOptions, StateBridgeOptions
from fa_nb_utils.model import ResidualMLP
from fa_nb_utils.rules import bp_credits, build_rule
from fa_nb_utils.config import TrainConfig
from fa_nb_utils.checkpoint import CHECKPOINT_NAME
from fa_nb_utils.trainer import train

BRIDGES = ("state_bridge", "credit_bridge")


def _model(residual=True):
    torch.manual_seed(0)
    model = ResidualMLP(24, 32, 6, 3, seed=1, residual=residual).double()
    with torch.no_grad():
        for block in model.blocks:
            block.fc2.weight.normal_(0.0, 0.2)   # far from the identity: Jacobians matter
    x = torch.randn(40, 24, dtype=torch.float64)
    y = torch.randint(0, 6, (40,))
    return model, x, y


def _rel(a, g):
    return max(float((ak - gk).norm() / gk.norm()) for ak, gk in zip(a, g))


def _forward_from(model, h, k):
    for block in list(model.blocks)[k:]:
        h = h + block(h) if model.residual else block(h)
    return h


@pytest.mark.parametrize("residual", [True, False])
def test_state_bridge_with_the_exact_forward_is_bp(residual):
    model, x, y = _model(residual)
    rule = build_rule("state_bridge", model, {}, torch.Generator().manual_seed(0)).double()
    rule.predict = lambda m, H, s: torch.stack(
        [m.out_ln(_forward_from(m, H[k], k)) for k in range(H.shape[0])])
    assert _rel(rule.credits(model, x, y), bp_credits(model, x, y)) < 1e-5


@pytest.mark.parametrize("residual", [True, False])
def test_credit_bridge_with_the_true_cost_to_go_is_bp(residual):
    model, x, y = _model(residual)
    rule = build_rule("credit_bridge", model, {}, torch.Generator().manual_seed(0)).double()
    rule.value = lambda m, H, s, yy: torch.stack(
        [F.cross_entropy(m.readout(_forward_from(m, H[k], k)), yy, reduction="none")
         for k in range(H.shape[0])])
    assert _rel(rule.credits(model, x, y), bp_credits(model, x, y)) < 1e-5


def _cos_at(rule, model, x, y, k):
    a = rule.credits(model, x, y)[k].flatten(1)
    g = bp_credits(model, x, y)[k].flatten(1)
    return float(F.cosine_similarity(a, g, dim=1).mean())


@pytest.mark.parametrize("name", BRIDGES)
def test_training_only_the_bridge_on_a_frozen_bp_network_aligns_its_credit(
        name, synthetic_data, data_root):
    """The bridge learns what the network above h_{L//2} does: its credit's cosine with the true
    gradient there rises by at least 0.2 (CB from about 0; SB starts from its skip, LN(h_k))."""
    torch.manual_seed(0)
    cfg = TrainConfig(rule="bp", epochs=4, seed=3, data="synthetic", d_hidden=64, num_blocks=4,
                      limit_train=1000, progress=False, data_root=str(data_root))
    model = train(cfg, data=synthetic_data).model
    model.requires_grad_(False)
    model.eval()
    rule = build_rule(name, model, {}, torch.Generator().manual_seed(0))
    x, y = synthetic_data.test_x[:512], synthetic_data.test_y[:512]
    k = model.num_blocks // 2
    before = _cos_at(rule, model, x, y, k)
    opt = torch.optim.AdamW(rule.parameters(), lr=3e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    for step in range(300):
        idx = torch.randint(0, 1000, (128,), generator=gen)
        opt.zero_grad(set_to_none=True)
        rule.step_loss(model, synthetic_data.train_x[idx], synthetic_data.train_y[idx]).loss.backward()
        opt.step()
    after = _cos_at(rule, model, x, y, k)
    assert after >= min(before + 0.2, 0.9), (name, before, after)
    if name == "credit_bridge":
        assert abs(before) < 0.3 and after >= 0.2, (before, after)


def _config(name, data_root, **kw):
    base = dict(rule=name, epochs=3, seed=5, data="synthetic", synthetic_n_train=2000,
                synthetic_n_test=1280, d_hidden=64, num_blocks=2, limit_train=1000, threads=1,
                progress=False, data_root=str(data_root))
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("name", BRIDGES)
def test_each_bridge_lowers_the_training_loss_and_records_its_bridge(name, data_root,
                                                                     synthetic_folder):
    res = train(_config(name, data_root, epochs=4))
    losses = [e["train_loss"] for e in res.trace[1:]]
    assert losses[-1] < 0.97 * losses[0], losses
    meta = res.metadata["rule"]
    assert meta["state"][0]["name"] == "bridge" and meta["state"][0]["kind"] == "module"
    assert meta["bridge"]["hidden"] == 256


@pytest.mark.parametrize("name", BRIDGES)
def test_bridge_checkpoints_round_trip_and_resume_bit_identically(checkpoint_each_epoch, name, tmp_path, data_root,
                                                                  synthetic_folder, monkeypatch):
    from fa_nb_utils.checkpoint import load_checkpoint
    trainer = importlib.import_module("fa_nb_utils.trainer")
    fresh = train(_config(name, data_root), runs_root=tmp_path / "fresh")
    real, calls = trainer.train_step, [0]

    def interrupt(*a, **k):
        calls[0] += 1
        if calls[0] == 2 * 8 + 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(trainer, "train_step", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(_config(name, data_root), runs_root=tmp_path / "runs")
    monkeypatch.setattr(trainer, "train_step", real)
    (run_dir,) = (tmp_path / "runs").iterdir()
    state = load_checkpoint(run_dir / CHECKPOINT_NAME)
    assert state["epoch"] == 2 and any(k.startswith("bridge.") for k in state["rule"])
    resumed = train(_config(name, data_root), runs_root=tmp_path / "runs")
    strip = lambda t: [{k: v for k, v in e.items() if k != "seconds"} for e in t]
    assert strip(resumed.trace) == strip(fresh.trace)
    _assert_same_state(resumed.model.state_dict(), fresh.model.state_dict())
    rule_state = resumed.rule.state_dict()
    _assert_same_state(rule_state, fresh.rule.state_dict())
    if name == "credit_bridge":   # its perturbation noise is saved, and compared above
        assert torch.is_tensor(rule_state["_extra_state"]["noise_generator"])


def _assert_same_state(got, want, where="state"):
    """Every entry equal, bit for bit: tensors with torch.equal, nested dicts entry by entry;
    an entry of any other kind fails rather than passing unchecked."""
    assert set(got) == set(want), where
    for key, value in want.items():
        if torch.is_tensor(value):
            assert torch.equal(got[key], value), f"{where}[{key!r}]"
        elif isinstance(value, dict):
            _assert_same_state(got[key], value, f"{where}[{key!r}]")
        else:
            raise AssertionError(f"{where}[{key!r}]: a {type(value).__name__} is not compared")


@pytest.mark.parametrize("name", BRIDGES)
def test_gamma_needs_the_saved_bridge(name, data_root, synthetic_folder, synthetic_data):
    res = train(_config(name, data_root, epochs=1), data=synthetic_data)
    batches = synthetic_data.eval_batches(4, 128)
    g = gamma(res.model, batches, rule=res.rule)
    assert all(v is not None for v in g.per_layer_raw)
    rule = res.rule
    del rule.bridge                             # a checkpoint without the auxiliary net
    with pytest.raises(GammaUnavailable, match="bridge.*missing"):
        gamma(res.model, batches, rule=rule)


@pytest.mark.parametrize("bad", [{"hidden": 0}, {"hidden": -4}, {"hidden": 2.5}, {"hidden": True},
                                 {"lr_scale": 0.0}, {"lr_scale": float("nan")}])
def test_nonsense_state_bridge_options_are_refused(bad):
    with pytest.raises(ValueError, match="state_bridge option"):
        StateBridgeOptions(**bad)


@pytest.mark.parametrize("bad", [{"sigma": -0.1}, {"sigma": float("inf")}, {"hidden": 0},
                                 {"grad_weight": float("nan")}, {"lr_scale": -1.0}])
def test_nonsense_credit_bridge_options_are_refused(bad):
    with pytest.raises(ValueError, match="credit_bridge option"):
        CreditBridgeOptions(**bad)


@pytest.mark.parametrize("name", BRIDGES)
def test_the_command_line_trains_each_bridge_without_an_explicit_import(name, data_root,
                                                                       synthetic_folder, tmp_path):
    """`python -m fa_nb_utils.train --rule <bridge>`: the package registers the bridges itself,
    and the trace's metadata records the bridge's options (the measured defaults)."""
    import json
    import subprocess
    import sys

    out = tmp_path / "trace.json"
    proc = subprocess.run(
        [sys.executable, "-m", "fa_nb_utils.train", "--rule", name, "--epochs", "1",
         "--data", "synthetic", "--data-root", str(data_root), "--synthetic-n-train", "2000",
         "--synthetic-n-test", "1280", "--d-hidden", "32", "--no-progress", "--threads", "1",
         "--trace-out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    meta = doc["metadata"]["rule"]
    assert meta["rule"] == name and meta["bridge"]["hidden"] == 256
    if name == "credit_bridge":
        assert meta["options"]["grad_weight"] == 1000.0
    assert [e["epoch"] for e in doc["trace"]] == [0, 1]
