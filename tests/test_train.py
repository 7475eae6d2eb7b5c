"""The trainer: trace format, determinism, seed independence of rules, CLI, bad configs and data,
and what `train` returns."""
import dataclasses
import json
import shutil

import pytest
import torch

from fa_nb_utils.data import cifar
from fa_nb_utils.data import DeviceData
from fa_nb_utils.cli import train_main as main
from fa_nb_utils.config import TrainConfig
from fa_nb_utils.trainer import train

SMALL = dict(epochs=2, seed=42, data="synthetic", d_hidden=32, num_blocks=2, limit_train=500,
             progress=False, device="cpu")


def small_config(**kw):
    return TrainConfig(**{**SMALL, **kw})


def test_trace_has_init_entry_and_per_epoch_protocol_numbers(synthetic_data):
    model, trace = train(small_config(rule="dfa"), data=synthetic_data)
    assert [e["epoch"] for e in trace] == [0, 1, 2]
    for e in trace:
        assert set(e) >= {"epoch", "acc_eval", "residual_norms", "bp_grad_norms",
                          "train_loss", "seconds", "lr"}
        assert len(e["residual_norms"]) == len(e["bp_grad_norms"]) == 3
        assert 0.0 <= e["acc_eval"] <= 1.0
    assert trace[0]["train_loss"] is None and trace[1]["train_loss"] > 0
    assert not model.training


def test_same_seed_same_numbers_and_rules_share_the_init(synthetic_data):
    r1 = train(small_config(rule="dfa"), data=synthetic_data)
    r2 = train(small_config(rule="dfa"), data=synthetic_data)
    strip = lambda tr: [{k: v for k, v in e.items() if k != "seconds"} for e in tr]
    assert strip(r1.trace) == strip(r2.trace)
    for p, q in zip(r1.model.parameters(), r2.model.parameters()):
        assert torch.equal(p, q)
    assert torch.equal(r1.rule.feedback, r2.rule.feedback)
    # BP and DFA start from the same weights: the init stream does not depend on the rule
    bp0 = train(small_config(rule="bp", epochs=0), data=synthetic_data)
    dfa0 = train(small_config(rule="dfa", epochs=0), data=synthetic_data)
    for p, q in zip(bp0.model.parameters(), dfa0.model.parameters()):
        assert torch.equal(p, q)
    other = train(small_config(rule="dfa", seed=7, epochs=0), data=synthetic_data)
    assert not torch.equal(other.model.embed.weight, dfa0.model.embed.weight)


def test_the_steps_backward_reaches_the_optimizers_parameters_only():
    from fa_nb_utils.trainer import backward
    w = torch.nn.Parameter(torch.ones(3))
    state = torch.full((3,), 2.0, requires_grad=True)   # a rule's detached copy of a state
    backward((w * state).sum(), torch.optim.SGD([w], lr=0.1))
    assert torch.equal(w.grad, state.detach()) and state.grad is None


@pytest.mark.parametrize("rule", ["state_bridge", "credit_bridge", "ep", "dfa"])
@pytest.mark.parametrize("frozen", [False, True])
def test_train_step_updates_are_bitwise_those_of_the_plain_backward(synthetic_data, rule, frozen):
    """train_step against a step written with loss.backward() over every leaf."""
    from fa_nb_utils.trainer import _fresh_state, train_step
    config = small_config(rule=rule, freeze_blocks=frozen, penalty_lambda=0.0 if frozen else 1e-2)
    finals = []
    for step in ("trainer", "plain"):
        model, rule_, opt, _, gens = _fresh_state(config, synthetic_data, torch.device("cpu"))
        batches = synthetic_data.train_batches(64, gens["data_order"], gens["augment"])
        for _, (x, y) in zip(range(3), batches):
            if step == "trainer":
                train_step(model, rule_, opt, x, y, config)
            else:
                out = rule_.step_loss(model, x, y, penalty_lambda=config.penalty_lambda,
                                      frozen_blocks=config.freeze_blocks)
                opt.zero_grad(set_to_none=True)
                out.loss.backward()
                opt.step()
        finals.append([p.detach().clone() for p in [*model.parameters(), *rule_.parameters()]])
    assert all(torch.equal(a, b) for a, b in zip(*finals))


def test_frozen_blocks_baseline_keeps_blocks_at_init(synthetic_data):
    init = train(small_config(rule="bp", epochs=0), data=synthetic_data).model
    frozen = train(small_config(rule="bp", freeze_blocks=True, epochs=1), data=synthetic_data).model
    for p, q in zip(init.blocks.parameters(), frozen.blocks.parameters()):
        assert torch.equal(p, q)
    assert not torch.equal(init.embed.weight, frozen.embed.weight)


def test_metadata_records_the_rule_form(synthetic_data):
    res = train(small_config(rule="dfa", epochs=0, rule_options={"credit_norm": "rms"}),
                data=synthetic_data)
    meta = res.metadata
    assert meta["rule"]["options"] == {"credit_norm": "rms"}
    assert "rms" in meta["rule"]["credit_form"]
    # what Γ needs from the saved run: DFA's feedback, one (d, C) matrix per block
    assert meta["rule"]["state"] == [{"name": "feedback", "kind": "buffer", "shape": [2, 32, 10]}]
    assert tuple(res.rule.feedback.shape) == (2, 32, 10)
    assert meta["data"]["fingerprint"] == synthetic_data.fingerprint
    json.dumps(meta)  # plain JSON


def test_result_unpacks_as_model_and_trace_and_names_the_rest(synthetic_data, tmp_path):
    res = train(small_config(rule="dfa", epochs=1), data=synthetic_data, runs_root=tmp_path)
    model, trace = res
    assert model is res.model and trace is res.trace and [e["epoch"] for e in trace] == [0, 1]
    assert [f.name for f in dataclasses.fields(res)] == [
        "model", "trace", "rule", "config", "data", "metadata", "run_dir", "monitor",
        "stop_reason"]
    assert res.rule.name == "dfa" and res.config.epochs == 1 and res.data is synthetic_data
    assert (res.run_dir / "checkpoint.pt").is_file() and res.run_dir.parent == tmp_path
    assert res.monitor is None and res.stop_reason is None
    assert json.loads((res.run_dir / "trace.json").read_text())["metadata"] == res.metadata
    assert "Module" not in repr(res) and "run_dir=" in repr(res)  # short: no weights, no trace


def test_user_tensors_train():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 20, generator=g) * 3
    y = torch.randint(0, 3, (600,), generator=g)
    x = centres[y] + torch.randn(600, 20, generator=g)
    data = DeviceData.from_tensors(x[:400], y[:400], x[400:], y[400:])
    cfg = small_config(rule="bp", epochs=3, eval_batches=2, eval_batch_size=100, limit_train=None)
    model, trace = train(cfg, data=data)
    assert model.input_dim == 20 and model.num_classes == 3
    assert trace[-1]["acc_eval"] > 0.9


def test_bad_configs_name_the_fix():
    with pytest.raises(ValueError, match="epochs must be an int >= 0"):
        small_config(epochs=-1)
    with pytest.raises(ValueError, match="epochs must be an int"):
        small_config(epochs=2.5)
    with pytest.raises(ValueError, match="data must be one of"):
        small_config(data="imagenet")
    with pytest.raises(ValueError, match="lr must be a finite number"):
        small_config(lr=float("nan"))
    with pytest.raises(ValueError, match="CUDA is not available|is not a device"):
        if torch.cuda.is_available():
            small_config(device="tpu")
        small_config(device="cuda")
    with pytest.raises(ValueError, match="num_blocks must be an int >= 1"):
        small_config(num_blocks=0, freeze_blocks=True)
    with pytest.raises(ValueError, match="unknown TrainConfig field"):
        TrainConfig.from_dict({"rule": "bp", "epochz": 3})


def test_missing_or_altered_batches_are_refused(synthetic_folder, tmp_path):
    root = tmp_path / "root"
    folder = root / "cifar-10-batches-py"
    shutil.copytree(synthetic_folder, folder)
    (folder / "data_batch_3").unlink()
    with pytest.raises(cifar.DataNotFoundError, match="data_batch_3"):
        cifar.load_cifar10(root, download=False)
    shutil.copy(synthetic_folder / "data_batch_3", folder / "data_batch_3")
    raw = bytearray((folder / "test_batch").read_bytes())
    raw[5000] ^= 0xFF
    (folder / "test_batch").write_bytes(bytes(raw))
    with pytest.raises(cifar.DataIntegrityError, match="test_batch"):
        cifar.load_cifar10(root, download=False)


def test_offline_without_files_says_where_to_put_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="--data synthetic") as exc:
        train(small_config(data="cifar10", download=False, data_root=str(tmp_path)))
    assert str(tmp_path) in str(exc.value)


def test_cli_trains_and_writes_the_trace(tmp_path, capsys, data_root, synthetic_folder):
    out = tmp_path / "trace.json"
    rc = main(["--rule", "dfa", "--epochs", "1", "--seed", "3", "--data", "synthetic",
               "--data-root", str(data_root), "--synthetic-n-train", "2000",
               "--synthetic-n-test", "1280", "--d-hidden", "16", "--num-blocks", "2",
               "--no-progress", "--trace-out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "epoch   1" in printed
    saved = json.loads(out.read_text())
    assert [e["epoch"] for e in saved["trace"]] == [0, 1]
    assert saved["metadata"]["config"]["rule"] == "dfa"


def test_cli_bad_rule_exits_with_a_message(capsys):
    assert main(["--rule", "nope", "--epochs", "1"]) == 2
    assert "registered rules" in capsys.readouterr().err
