"""ViT-Mini and the small CNN: the rules' credits against independent computations, the rules
that refuse them (and why), and training, keys and the protocol end to end."""
from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fa_nb_utils import diagnose
from fa_nb_utils.architectures import SmallCNN, ViTMini, build_architecture
from fa_nb_utils.data import DeviceData
from fa_nb_utils.diagnostics import DIAGNOSTICS
from fa_nb_utils.report import DiagnosticReport
from fa_nb_utils.rules import build_rule, local_forward
from fa_nb_utils.config import TrainConfig
from fa_nb_utils.runs import config_key, run_key_of
from fa_nb_utils.trainer import train

IMAGE = (3, 16, 16)


def report(residual_norms) -> DiagnosticReport:
    return DiagnosticReport(method_name="", notes="", residual_norms=residual_norms,
                            bp_grad_norms=[1e-3] * len(residual_norms), stability_layer=0,
                            cross_batch_stability=0.0, headline_acc=0.5, frozen_baseline_acc=None)


def tiny_vit(dtype=torch.float64) -> ViTMini:
    return ViTMini(IMAGE, d_hidden=16, num_classes=5, num_blocks=2, patch_size=8, heads=2,
                   seed=0).to(dtype)


def tiny_cnn(dtype=torch.float64) -> SmallCNN:
    model = SmallCNN(IMAGE, d_hidden=12, num_classes=5, channels=(4, 6, 8), seed=0).to(dtype)
    g = torch.Generator().manual_seed(3)
    for m in model.modules():   # running statistics of a trained net, not the init's 0 and 1
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g, dtype=dtype))
            m.running_var.copy_(torch.rand(m.num_features, generator=g, dtype=dtype) + 0.5)
    return model


def batch(n=6, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *IMAGE, generator=g, dtype=dtype), torch.randint(0, 5, (n,), generator=g)


MODELS = {"vit": tiny_vit, "cnn": tiny_cnn}


@pytest.mark.parametrize("arch", MODELS)
def test_states_and_interface(arch):
    model = MODELS[arch]()
    x, y = batch()
    logits, hiddens = model(x, return_hidden=True)
    assert logits.shape == (6, 5) and len(hiddens) == model.num_blocks + 1
    if arch == "vit":
        assert all(h.shape == (6, 5, 16) for h in hiddens)      # cls + 4 patches, d = 16
        assert model.state_sizes is None
    else:
        assert [h.shape[1] for h in hiddens] == list(model.state_sizes) == [4 * 256, 6 * 64,
                                                                             8 * 16, 12]
    # the interface the rules' local forward uses gives the same logits
    with torch.no_grad():
        model.eval()
        fwd = local_forward(model, x)
        torch.testing.assert_close(fwd.logits, model(x))


@pytest.mark.parametrize("arch", MODELS)
def test_bp_credit_is_the_per_sample_gradient(arch):
    """BP's credit against a loop of one-sample backward passes in float64."""
    model = MODELS[arch]().eval()
    x, y = batch()
    credits = build_rule("bp", model, {}, torch.Generator()).credits(model, x, y)
    for i in range(x.shape[0]):
        logits, hiddens = model(x[i:i + 1], return_hidden=True)
        grads = torch.autograd.grad(F.cross_entropy(logits, y[i:i + 1], reduction="sum"),
                                    hiddens)
        for a, g in zip(credits, grads):
            torch.testing.assert_close(a[i], g[0], rtol=1e-9, atol=1e-12)


def test_dfa_credit_on_the_cnn_is_e_times_each_states_own_matrix():
    model = tiny_cnn().eval()
    rule = build_rule("dfa", model, {}, torch.Generator().manual_seed(5)).double()
    assert rule.feedback.shape == (sum(model.state_sizes), 5)
    x, y = batch()
    credits = rule.credits(model, x, y)
    with torch.no_grad():
        p = model(x).softmax(-1)
    start = 0
    for k, size in enumerate(model.state_sizes):
        B = rule.feedback[start:start + size]           # this state's own rows, nothing shared
        start += size
        for i in range(x.shape[0]):
            e = [p[i, c].item() - (1.0 if c == y[i].item() else 0.0) for c in range(5)]
            want = torch.tensor([sum(B[r, c].item() * e[c] for c in range(5))
                                 for r in range(size)], dtype=torch.float64)
            torch.testing.assert_close(credits[k][i], want, rtol=1e-9, atol=1e-12)


def test_dfa_credit_on_the_vit_is_the_same_at_every_token():
    model = tiny_vit().eval()
    rule = build_rule("dfa", model, {}, torch.Generator().manual_seed(5)).double()
    x, y = batch()
    credits = rule.credits(model, x, y)
    with torch.no_grad():
        e = model(x).softmax(-1) - F.one_hot(y, 5).double()
    pairing = [0, 0, 1]                                  # h_0 and h_1 share B_0, as for the MLP
    for k, a in enumerate(credits):
        want = e @ rule.feedback[pairing[k]].T
        torch.testing.assert_close(a, want[:, None, :].expand(-1, 5, -1))


@pytest.mark.parametrize("arch", MODELS)
def test_dfa_step_trains_each_block_with_its_own_local_loss(arch):
    """The single backward of DFA's step loss gives every block the gradient of its own
    <f_l(h_l.detach()), a_{l+1}> / B (the credit broadcast over tokens), and the head CE's."""
    model = MODELS[arch]().train()
    rule = build_rule("dfa", model, {}, torch.Generator().manual_seed(5)).double()
    x, y = batch()
    torch.manual_seed(0)
    model.zero_grad()
    rule.step_loss(model, x, y).loss.backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}

    # independently: one block at a time, from the same (train-mode) forward's values
    model.zero_grad()
    with torch.no_grad():
        logits, hiddens = model(x, return_hidden=True)
        credits = rule.credits_from_error(logits.softmax(-1) - F.one_hot(y, 5).double())
    credits = list(credits)
    n = x.shape[0]
    terms = [model.embed(model.flatten_input(x))]
    terms += [block(h.detach()) for block, h in zip(model.blocks, hiddens)]
    total = F.cross_entropy(model.readout(hiddens[-1].detach()), y)
    for t, a in zip(terms, credits):
        a = a.reshape(a.shape[0], *[1] * (t.dim() - a.dim()), *a.shape[1:])
        total = total + (t * a).sum() / n
    total.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(got[name], p.grad, rtol=1e-8, atol=1e-12, msg=name)


@pytest.mark.parametrize("rule", ["fa", "ep", "state_bridge", "credit_bridge"])
@pytest.mark.parametrize("arch", MODELS)
def test_rules_without_a_credit_for_the_architecture_refuse_it_and_say_why(rule, arch):
    """The refusal names the rule and the architecture, what the rule does train (the fix), and
    a reason that is about this architecture, from the model builder and from the config."""
    model = MODELS[arch]()
    with pytest.raises(ValueError) as built:
        build_rule(rule, model, {}, torch.Generator())
    with pytest.raises(ValueError) as configured:
        TrainConfig(rule=rule, architecture=arch, num_blocks=3 if arch == "cnn" else 4)
    for message in (str(built.value), str(configured.value)):
        assert f"rule '{rule}' does not train architecture '{arch}'" in message
        assert "(it trains resmlp)" in message
        reason = message.split("(it trains resmlp): ", 1)[1]
        words = {"vit": ("ViT-Mini", "token"), "cnn": ("CNN", "batch-normalised")}[arch]
        assert any(w in reason for w in words), reason   # why not, for this architecture


def test_bad_architecture_configs_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="num_blocks must be 3"):
        TrainConfig(rule="bp", architecture="cnn", num_blocks=4)
    with pytest.raises(ValueError, match="controls of the ResidualMLP"):
        TrainConfig(rule="bp", architecture="vit", terminal_ln=False)
    with pytest.raises(ValueError, match="unknown architecture 'resnet'"):
        TrainConfig(rule="bp", architecture="resnet")
    with pytest.raises(ValueError, match="no option"):
        TrainConfig(rule="bp", architecture="vit", architecture_options={"patch": 4})
    with pytest.raises(ValueError, match="patch_size"):
        TrainConfig(rule="bp", architecture="vit", architecture_options={"patch_size": 0})
    with pytest.raises(ValueError, match="channels"):
        TrainConfig(rule="bp", architecture="cnn", architecture_options={"channels": "abc"})
    with pytest.raises(ValueError, match="does not divide"):
        ViTMini((3, 30, 30), patch_size=4)
    with pytest.raises(ValueError, match="multiple of heads"):
        ViTMini(d_hidden=10, heads=4)
    with pytest.raises(ValueError, match="needs \\(N, C, H, W\\) images"):
        build_architecture("cnn", {}, sample_shape=(20,), d_hidden=8, num_classes=2,
                           num_blocks=3)
    with pytest.raises(ValueError, match="takes images of shape"):
        tiny_vit()(torch.zeros(2, 3, 8, 8, dtype=torch.float64))


def test_the_resmlps_run_keys_do_not_change():
    """The architecture fields are left out of the key at their defaults, so finished ResMLP
    runs keep their keys (a checkpoint's config written before the fields existed included)."""
    config = TrainConfig(rule="dfa", data="synthetic")
    old = {k: v for k, v in config.to_dict().items()
           if k not in ("architecture", "architecture_options")}
    assert run_key_of(config.to_dict(), "fp", "v") == run_key_of(old, "fp", "v")
    assert "architecture" not in config_key(config.to_dict())
    vit = TrainConfig(rule="dfa", data="synthetic", architecture="vit", d_hidden=128)
    assert run_key_of(vit.to_dict(), "fp", "v") != run_key_of(
        dataclasses.replace(vit, architecture="resmlp").to_dict(), "fp", "v")


def test_vit_branches_start_small():
    model = ViTMini(seed=0).eval()
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, hiddens = model(x, return_hidden=True)
        for h0, h1 in zip(hiddens, hiddens[1:]):
            ratio = ((h1 - h0).norm(dim=-1) / h0.norm(dim=-1)).median()
            assert ratio < 0.3


def test_vit_attention_is_softmax_of_scaled_scores_times_values():
    """The written-out attention against torch's fused kernel and a per-head float64 loop."""
    import math
    import torch.nn.functional as F
    branch = ViTMini(seed=0).double().blocks[0]
    z = torch.randn(3, 17, branch.qkv.in_features, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(1))
    n, t, d = z.shape
    heads, dh = branch.heads, d // branch.heads
    q, k, v = branch.qkv(z).reshape(n, t, 3, heads, dh).permute(2, 0, 3, 1, 4)
    fused = branch.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, t, d))
    loop = torch.zeros(n, t, d, dtype=torch.float64)
    for b in range(n):
        for h in range(heads):
            scores = q[b, h] @ k[b, h].T / math.sqrt(dh)
            loop[b, :, h * dh:(h + 1) * dh] = torch.softmax(scores, dim=-1) @ v[b, h]
    with torch.no_grad():
        out = branch.attention(z)
        torch.testing.assert_close(out, fused, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out, branch.proj(loop), rtol=1e-12, atol=1e-12)


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    proto = torch.randn(5, *IMAGE, generator=g)
    y_tr, y_te = torch.randint(0, 5, (96,), generator=g), torch.randint(0, 5, (64,), generator=g)
    x_tr = proto[y_tr] + torch.randn(96, *IMAGE, generator=g)
    x_te = proto[y_te] + torch.randn(64, *IMAGE, generator=g)
    return DeviceData.from_tensors(x_tr, y_tr, x_te, y_te, augment=False)


def _gamma_by_hand(result, batches, floor=1e-7):
    """Γ_k recomputed without the package's alignment code: per sample, the float64 gradient of
    its own cross-entropy w.r.t. h_k (a one-sample backward through a float64 copy of the
    model), the cosine with the rule's credit, the mean over samples; None where the median
    gradient norm on the paper's scale (/128) is under the floor."""
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    credits = [a.double().reshape(len(y), -1) for a in result.rule.credits(result.model, x, y)]
    model = copy.deepcopy(result.model).double().eval()
    cos = [[] for _ in credits]
    norms = [[] for _ in credits]
    for i in range(len(y)):
        logits, hiddens = model(x[i:i + 1].double(), return_hidden=True)
        grads = torch.autograd.grad(F.cross_entropy(logits, y[i:i + 1]), hiddens)
        for k, (a, g) in enumerate(zip(credits, grads)):
            a, g = a[i], g.reshape(-1)
            cos[k].append(float(a @ g) / (float(a.norm()) * float(g.norm())))
            norms[k].append(float(g.norm()) / 128)
    return [sum(c) / len(c) if float(np.median(n)) >= floor else None
            for c, n in zip(cos, norms)]


@pytest.mark.parametrize("arch,options,blocks", [
    ("vit", {"patch_size": 8, "heads": 2}, 2), ("cnn", {"channels": [4, 6, 8]}, 3)])
@pytest.mark.parametrize("rule", ["bp", "dfa"])
def test_training_diagnosis_gamma_and_reuse(tmp_path, arch, options, blocks, rule):
    data = _data()
    config = TrainConfig(rule=rule, architecture=arch, architecture_options=options,
                         d_hidden=16, num_blocks=blocks, epochs=2, batch_size=32,
                         eval_batches=2, eval_batch_size=32, progress=False)
    result = train(config, data=data, runs_root=tmp_path)
    assert result.run_dir.name.startswith(f"{arch}-{rule}-s42-")
    assert [e["epoch"] for e in result.trace] == [0, 1, 2]
    # the final accuracy is the trained model's on the test split, counted one image at a time
    model = result.model.eval()
    with torch.no_grad():
        right = sum(int(model(data.test_x[i:i + 1]).argmax(-1).item() == data.test_y[i].item())
                    for i in range(len(data.test_y)))
    assert result.trace[-1]["acc_eval"] == pytest.approx(right / len(data.test_y), abs=1e-12)
    batches = data.eval_batches(2, 32)
    report = diagnose(result.model, batches, rule=result.rule)
    assert len(report.residual_norms) == blocks + 1
    per_layer, by_hand = report.alignment["per_layer"], _gamma_by_hand(result, batches)
    assert [v is None for v in per_layer] == [v is None for v in by_hand]
    for v, w in zip(per_layer, by_hand):
        assert v is None or v == pytest.approx(w, abs=1e-5)
    if rule == "bp":
        assert by_hand == pytest.approx([1.0] * (blocks + 1), abs=1e-5)   # the exact gradient
    again = train(config, data=data, runs_root=tmp_path)
    assert again.run_dir == result.run_dir
    assert again.trace == result.trace                        # reused, not retrained


def test_the_command_line_trains_the_cnn_and_refuses_a_rule_it_cannot_train(tmp_path, capsys):
    from fa_nb_utils.cli import train_main

    common = ["--data", "synthetic", "--data-root", str(tmp_path), "--synthetic-n-train", "200",
              "--synthetic-n-test", "1280", "--epochs", "1", "--no-progress"]
    assert train_main(["--rule", "fa", "--architecture", "vit", *common]) == 2
    assert "does not train architecture 'vit'" in capsys.readouterr().err
    assert train_main(["--rule", "dfa", "--architecture", "cnn", "--architecture-option",
                       "channels=[4,4,4]", "--d-hidden", "8", "--num-blocks", "3",
                       *common]) == 0
    assert "epoch   1" in capsys.readouterr().out
    assert train_main(["--rule", "dfa", "--no-terminal-ln", "--d-hidden", "8", *common]) == 0


def test_first_epochs_and_growth_read_the_trace_with_strict_thresholds():
    from types import SimpleNamespace

    from fa_nb_utils.paper.architecture_audit import _collapse, first_epochs
    from fa_nb_utils.report import DiagnosticThresholds

    t = DiagnosticThresholds()
    trace = [{"epoch": 0, "residual_norms": [1, 1.1], "bp_grad_norms": [1e-3, 1e-3],
              "backward_gains": [1, 0.5]},
             {"epoch": 1, "residual_norms": [1, 50], "bp_grad_norms": [1, 1e-7],
              "backward_gains": [1, 1e-3]},             # exactly at every threshold: quiet
             {"epoch": 2, "residual_norms": [1, 50.1], "bp_grad_norms": [1, 9e-8],
              "backward_gains": [1, 9e-4]},
             {"epoch": 3, "residual_norms": [2, 1], "bp_grad_norms": [1, 1],
              "backward_gains": []}]
    trace = [{**e, "acc_eval": 0.5} for e in trace]
    assert first_epochs(trace, t) == {"a": 2, "b": 2, "e": 2}
    growth = lambda h: DIAGNOSTICS["a"].value(report(h))  # (a)'s statistic, as the table shows
    assert growth([2.0, 4.0, 2.0]) == 2.0 and math.isnan(growth([0.0, 1.0]))
    assert DIAGNOSTICS["a"].fires(report([0.0, 1.0]))      # undefined: (a) fires with the reason

    def run(fired, gain):
        report = SimpleNamespace(thresholds=t)
        return SimpleNamespace(audit=SimpleNamespace(fired=fired, gain_L=gain, report=report))
    assert _collapse([run(["a", "b"], 1.0)]) == "yes"
    assert _collapse([run(["a"], 1e-4), run(["a", "b"], 1e-5)]) == "partly"
    assert _collapse([run(["a"], 1e-2)]) == "no" and _collapse([run(["b"], 1e-5)]) == "no"


def test_the_paper_profile_plans_the_papers_grids():
    from fa_nb_utils.paper import architecture_audit as A
    from fa_nb_utils.paper.profiles import get_profile

    paper = get_profile("paper")
    plan = A.architecture_plan(paper)
    # 5 variants x 2 rules x (trained + frozen) x 3 seeds, every config valid
    assert len(plan) == 5 * 2 * 2 * 3
    variants = {A.variant_of(c) for *_, c, _ in plan}
    assert variants == set(A.VARIANTS)
    vit = next(c for *_, c, _ in plan if c.architecture == "vit")
    assert (vit.d_hidden, vit.num_blocks, vit.epochs, vit.data) == (128, 4, 100, "cifar10")
    assert vit.architecture_options["patch_size"] == 4
    cnn = next(c for *_, c, _ in plan if c.architecture == "cnn")
    assert cnn.architecture_options["channels"] == [32, 64, 128] and cnn.num_blocks == 3
    # the standard ResMLP's runs are notebook 01's (same config, hence the same run)
    std = [c for r, s, f, c, _ in plan if A.variant_of(c) == "resmlp"]
    assert all(c == paper.config(c.rule, c.seed, freeze_blocks=c.freeze_blocks, device="cpu")
               for c in std)
    depth = A.depth_plan(paper)
    assert sorted({c.num_blocks for *_, c, _ in depth}) == [2, 4, 6, 8, 12]
    assert {c.d_hidden for *_, c, _ in depth} == {512} and len(depth) == 15


def test_the_smoke_profile_trains_the_cnn_for_fewer_epochs_than_vit_mini():
    from fa_nb_utils.paper import architecture_audit as A
    from fa_nb_utils.paper.profiles import get_profile

    epochs = {(c.architecture, c.rule): (c.epochs, c.cosine_epochs)
              for *_, c, _ in A.architecture_plan(get_profile("smoke"))}
    assert epochs[("vit", "dfa")] == epochs[("vit", "bp")] == (12, 500)
    assert epochs[("cnn", "dfa")] == epochs[("cnn", "bp")] == (5, 500)
    # without cnn_epochs the CNN follows cross_epochs (the tiny profile's 1)
    tiny = {c.architecture: c.epochs for *_, c, _ in A.architecture_plan(get_profile("tiny"))}
    assert tiny["cnn"] == tiny["vit"] == 1


def test_notebook_06_logic_on_the_tiny_profile(tmp_path):
    """Both grids train, every table and figure is written with its sidecar, the claims table has
    every claim, and a reading call finds every run finished (nothing retrained)."""
    import json

    from fa_nb_utils.paper import architecture_audit as A
    from fa_nb_utils.paper import findings
    from fa_nb_utils.paper.experiments import MissingRunsError, profile_data
    from fa_nb_utils.paper.profiles import get_profile

    prof = get_profile("tiny")
    data = profile_data(prof)
    with pytest.raises(MissingRunsError, match="--only 06"):
        A.run_architectures(prof, tmp_path, data=data, train_missing=False, progress=False)
    arch, depth = A.run_architectures(prof, tmp_path, data=data, executor="inprocess",
                                      progress=False)
    audits = A.audit_architectures(arch, data)
    assert {(a.variant, a.rule) for a in audits} == {
        *((v, "dfa") for v in A.CONTROLS), *((v, r) for v in A.CROSS for r in ("bp", "dfa"))}
    assert all(a.audit.frozen_acc is not None for a in audits)   # tiny trains the baselines
    out = A.save_architecture_table(audits, prof, tmp_path, data)
    rows = A.depth_rows(A.depth_audits(depth, data))
    saved = A.save_depth(rows, prof, tmp_path, data)
    claims = A.mechanism_claims(audits, rows, data.name)
    A.save_claims(claims, prof, tmp_path, data)
    for kind, name in (("tables", A.ARCH_NAME), ("figures", A.ARCH_NAME),
                       ("tables", A.DEPTH_NAME), ("figures", A.DEPTH_NAME),
                       ("tables", A.CLAIMS_NAME)):
        side = json.loads((tmp_path / kind / f"{name}.json").read_text())
        assert side["metadata"]["profile"] == "tiny" and side["numbers"]
    assert all(r["CIFAR-10 (ours)"] == "not run" for r in out["rows"])
    assert len(saved["rows"]) == 3 * 2 and len(claims) == 8
    assert {c["reproduced"].split(" (")[0] for c in claims} <= {
        "yes", "partly", "no", "not run", "not comparable"}
    assert findings.architectures(claims, prof)[0].startswith("Of the paper's 8")
    again, _ = A.run_architectures(prof, tmp_path, data=data, train_missing=False,
                                   progress=False)
    assert [r.result.run_dir for r in again] == [r.result.run_dir for r in arch]


def test_growth_and_means_say_non_finite_values_instead_of_dropping_them():
    from fa_nb_utils.paper.architecture_audit import _geo, first_epochs
    from fa_nb_utils.report import DiagnosticThresholds

    for h in ([1.0, float("nan"), 2.0], [float("nan"), 1.0]):  # undefined, and (a) fires
        assert math.isnan(DIAGNOSTICS["a"].value(report(h))) and DIAGNOSTICS["a"].fires(report(h))
    nan_trace = [{"epoch": 1, "acc_eval": 0.5, "residual_norms": [1.0, float("nan")],
                  "bp_grad_norms": [1.0, None], "backward_gains": [None]}]
    assert first_epochs(nan_trace, DiagnosticThresholds()) == {"a": 1, "b": 1, "e": 1}
    assert _geo([1e3, float("inf")]) == "inf on 1/2 seeds"
    assert _geo([1e-9, 0.0]) == "0 on 1/2 seeds" and _geo([None]) == "missing on 1/1 seeds"
    assert _geo([1e-2, 1e-4]) == "0.001" and _geo([]) == "—"


def test_images_of_another_layout_are_refused_not_reshaped():
    model = tiny_vit()
    with pytest.raises(ValueError, match="takes images of shape"):
        model(torch.zeros(2, 16, 16, 3, dtype=torch.float64))   # channels last
    model(torch.zeros(2, 3 * 16 * 16, dtype=torch.float64))     # flat vectors of them are fine
    with pytest.raises(ValueError, match="multiple of ViT-Mini's heads"):
        TrainConfig(rule="bp", architecture="vit", d_hidden=130)


def test_architecture_options_key_with_their_defaults_resolved():
    a = TrainConfig(rule="bp", architecture="vit", d_hidden=128)
    b = TrainConfig(rule="bp", architecture="vit", d_hidden=128,
                    architecture_options={"patch_size": 4, "heads": 4, "mlp_ratio": 2})
    assert run_key_of(a.to_dict(), "fp", "v") == run_key_of(b.to_dict(), "fp", "v")
    assert config_key(a.to_dict())["architecture_options"]["heads"] == 4


def test_an_old_checkpoints_config_is_compared_without_the_new_fields():
    from fa_nb_utils.runs import config_differences

    now = TrainConfig(rule="dfa", data="synthetic", epochs=3)
    old = {k: v for k, v in now.to_dict().items()
           if k not in ("architecture", "architecture_options")}
    old["epochs"] = 5
    assert config_differences(config_key(old), config_key(now.to_dict())) == [
        "epochs: checkpoint 5 vs now 3"]
