"""A user's own rule works everywhere: named by its import path `module:Class` (or by its name once
its module is imported) in TrainConfig, both command lines and the training grid (in-process and on
the process pool here; Dask's and submitit's workers run the same `run_job`).

The rule is docs/rules.md's `SignDFA` example, written as a module into a temporary folder on the
Python path (a fresh module and rule name per test, unregistered afterwards). The module touches
a marker file when it is imported, so a test can tell that a command did not import it.
- Named by its path or by its name, a rule gives the same run key and run folder; the built-in
  rules keep the keys they had before rules could be named by path (pinned).
- The process pool trains a rule of the caller's module, named either way, into the in-process
  folders; a rule defined in __main__ is refused there with the fix, and trains in-process.
- diagnose never imports a module on a checkpoint's word: without --rule it says which --rule to
  pass; with it, Γ; with --no-gamma the rule is not needed at all.
"""
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fa_nb_utils import __version__, rules
from fa_nb_utils.cli import diagnose_main
from fa_nb_utils.paper.executors import GridJob, run_job
from fa_nb_utils.paper.experiments import profile_data, run_grid
from fa_nb_utils.paper.profiles import get_profile
from fa_nb_utils.rules import RULES
from fa_nb_utils.config import TrainConfig
from fa_nb_utils.runs import run_key_of, run_name
from fa_nb_utils.trainer import train

TINY = get_profile("tiny")
_count = itertools.count()

SIGN_DFA = '''
from dataclasses import dataclass
from pathlib import Path

import torch

from fa_nb_utils.measures import eval_mode
from fa_nb_utils.rules import (Rule, StateSpec, StepOutput, local_forward, local_loss,
                               output_error, register_rule)

Path(__file__).with_suffix(".imported").touch()   # for the tests: this module was imported


@dataclass(frozen=True)
class SignDFAOptions:
    scale: float = 1.0             # every option is a field with a default


@register_rule
class SignDFA(Rule):
    """DFA with sign-only feedback: a_0 = a_1 = e S_0^T, a_{l+1} = e S_l^T, S_l = sign(B_l)."""

    name = "sign_dfa"
    Options = SignDFAOptions
    description = "DFA with sign feedback, e sign(B_l)^T"

    def __init__(self, model, options, generator):
        super().__init__(model, options, generator)
        n, d, c = model.num_blocks, model.d_hidden, model.num_classes
        # a buffer: saved in checkpoint["rule"], never optimised or decayed
        self.register_buffer("feedback", torch.randn(n, d, c, generator=generator).sign())

    def state_spec(self, model):                            # what Γ needs from the saved run
        return [StateSpec.buffer("feedback",
                                 (model.num_blocks, model.d_hidden, model.num_classes))]

    def _credits(self, e):
        pairing = [0] + list(range(self.num_blocks))       # h_0 and h_1 share S_0
        fb = self.feedback[pairing].to(e.dtype) * self.options.scale
        return torch.einsum("bc,kdc->kbd", e, fb)          # (L+1, B, d)

    def credits(self, model, x, y):
        with eval_mode(model), torch.no_grad():
            logits = model(x)
        return list(self._credits(output_error(logits, y)).unbind(0))

    def step_loss(self, model, x, y, *, penalty_lambda=0.0, frozen_blocks=False):
        fwd = local_forward(model, x)
        a = self._credits(output_error(fwd.logits, y))
        loss = local_loss(fwd, y, a, penalty_lambda=penalty_lambda, frozen_blocks=frozen_blocks)
        return StepOutput(loss, fwd.logits.detach())
'''


class UserRule:
    """A SignDFA module on the Python path: `module`, the rule's `name`, its import `path`."""

    def __init__(self, folder: Path):
        n = next(_count)
        self.module, self.name = f"user_rules_{os.getpid()}_{n}", f"sign_dfa_{n}"
        self.path = f"{self.module}:SignDFA"
        self.file = folder / f"{self.module}.py"
        self.file.write_text(SIGN_DFA.replace('"sign_dfa"', repr(self.name)))
        self.marker = self.file.with_suffix(".imported")

    def forget(self):
        """This process as if it had never imported the module."""
        RULES.pop(self.name, None)
        sys.modules.pop(self.module, None)
        self.marker.unlink(missing_ok=True)


@pytest.fixture
def user_rule(tmp_path, monkeypatch):
    folder = tmp_path / "user_code"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(folder)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    made = []

    def make():
        made.append(UserRule(folder))
        return made[-1]

    yield make
    for rule in made:
        rule.forget()


def tiny(data_root, **kw) -> TrainConfig:
    """A config of seconds, on conftest's synthetic data (`synthetic_folder`)."""
    base = dict(data="synthetic", synthetic_n_train=2000, synthetic_n_test=1280, d_hidden=16,
                num_blocks=2, epochs=1, eval_batches=2, eval_batch_size=64, progress=False,
                device="cpu", data_root=str(data_root))
    return TrainConfig(**{**base, **kw})


# ---------------------------------------------------------------------------------------------
# Naming a rule, and the run key
# ---------------------------------------------------------------------------------------------
def test_a_rule_named_by_its_path_trains_and_keys_as_when_named_by_its_name(
        user_rule, data_root, synthetic_folder, tmp_path):
    mine = user_rule()
    assert mine.name not in RULES and mine.module not in sys.modules
    by_path = tiny(data_root, rule=mine.path, rule_options={"scale": 0.5})
    assert mine.marker.exists() and by_path.rule == mine.name    # imported, registered
    result = train(by_path, runs_root=tmp_path / "runs")
    assert [e["epoch"] for e in result.trace] == [0, 1]
    assert ":" not in result.run_dir.name and result.run_dir.name.startswith(f"{mine.name}-s42-")
    assert result.metadata["rule"]["import_path"] == mine.path
    saved = json.loads((result.run_dir / "trace.json").read_text())
    assert saved["metadata"]["rule"]["import_path"] == mine.path
    by_name = tiny(data_root, rule=mine.name, rule_options={"scale": 0.5})
    assert run_key_of(by_name.to_dict(), "fp", "v") == run_key_of(by_path.to_dict(), "fp", "v")
    again = train(by_name, runs_root=tmp_path / "runs")       # the same folder: reused
    assert again.run_dir == result.run_dir and again.metadata["resumed_from_epoch"] == 1


# Run keys computed before a rule could be named by its import path: finished runs (a paper
# grid is ~17 h of CPU) must keep them.
PINNED_KEYS = {
    "bp": "242227236c9e6ad1f6ef3c7cf385bfc9c22b607bda0f0799bf7ba53deb13ebc5",
    "dfa": "7a769ff2eb0164e7d32f8b7c9b231b1ec775f72c9ec2e9e7f8897b7915d34a34",
    "fa": "14e0ae97670f1c3e93ed9f5c83c313f43f2ca511d7a36cd8fc4de6d7736b459f",
    # EP's since its relaxation on displacements (new option momentum, T = 5): other credits
    "ep": "a6e19d92829793d31e63c70b6271aa17ee4d00b70997e5652d0e99461293f25b",
    "state_bridge": "f709980cfc4e671ec477763adf1bfcf30e06f9b6546f60c884d2b5dcd5703295",
    "credit_bridge": "6e395c1e26ad35df6e7aa4baff7d22a4d6be95cdae9a406650e82d123fb81635",
}
BUILT_IN_PATHS = {"bp": "fa_nb_utils.rules:BP", "dfa": "fa_nb_utils.rules:DFA",
                  "fa": "fa_nb_utils.rules:FA", "ep": "fa_nb_utils.ep:EP",
                  "state_bridge": "fa_nb_utils.bridges:StateBridge",
                  "credit_bridge": "fa_nb_utils.bridges:CreditBridge"}


@pytest.mark.parametrize("rule", sorted(PINNED_KEYS))
def test_the_built_in_rules_keep_their_run_keys_named_either_way(rule):
    assert RULES[rule].import_path() == BUILT_IN_PATHS[rule]
    for named in (rule, BUILT_IN_PATHS[rule]):
        config = TrainConfig(rule=named)
        key = run_key_of(config.to_dict(), "fp", "0.1.0")
        assert key == PINNED_KEYS[rule], named
        assert run_name(config, key) == f"{rule}-s42-{PINNED_KEYS[rule][:12]}"
    frozen = TrainConfig(rule="fa_nb_utils.rules:DFA", data="synthetic", freeze_blocks=True,
                         seed=123, epochs=3, rule_options={"credit_norm": "rms"})
    assert run_key_of(frozen.to_dict(), "fp", "0.1.0") == \
        "7b63b8a8bd1b2e3d2db45e8030b69bd4e882f2a4e5739f2ada5be602c23b2815"


def test_a_rule_that_cannot_be_found_gets_a_message_with_the_fix(user_rule, tmp_path):
    mine = user_rule()
    with pytest.raises(ValueError) as err:
        TrainConfig(rule="sign_dfx")
    text = str(err.value)
    assert "unknown rule 'sign_dfx'" in text and "module:Class" in text and "dfa" in text
    rules.resolve_rule(mine.path)
    with pytest.raises(ValueError, match=rf"did you mean '{mine.name}'"):
        TrainConfig(rule=mine.name[:-1] + "x")
    with pytest.raises(ValueError, match="no module 'no_such_module_xyz'.*Python path"):
        TrainConfig(rule="no_such_module_xyz:SignDFA")
    with pytest.raises(ValueError, match=rf"{mine.module}' has no attribute 'SignDFX'"
                                         r".*did you mean 'SignDFA'"):
        TrainConfig(rule=f"{mine.module}:SignDFX")
    with pytest.raises(ValueError, match="SignDFAOptions.*is not a subclass of .*Rule"):
        TrainConfig(rule=f"{mine.module}:SignDFAOptions")
    broken = tmp_path / "user_code" / f"broken_{mine.module}.py"
    broken.write_text("import no_such_dependency_xyz\n")
    with pytest.raises(ValueError, match="importing module .* failed.*no_such_dependency_xyz"):
        TrainConfig(rule=f"{broken.stem}:SignDFA")


def test_an_unregistered_rule_class_named_by_its_path_is_registered(user_rule, tmp_path):
    folder = tmp_path / "user_code"
    module = f"plain_{user_rule().module}"
    (folder / f"{module}.py").write_text(
        SIGN_DFA.replace("@register_rule\n", "").replace('"sign_dfa"', f"'{module}_rule'"))
    try:
        cls = rules.resolve_rule(f"{module}:SignDFA")
        assert RULES[f"{module}_rule"] is cls and cls.import_path() == f"{module}:SignDFA"
    finally:
        RULES.pop(f"{module}_rule", None)
        sys.modules.pop(module, None)


def test_the_train_command_line_trains_a_rule_named_by_its_path(user_rule, data_root,
                                                               synthetic_folder, tmp_path):
    mine = user_rule()
    runs = tmp_path / "runs"
    proc = subprocess.run(
        [sys.executable, "-m", "fa_nb_utils.train", "--rule", mine.path, "--epochs", "1",
         "--synthetic-n-train", "2000", "--synthetic-n-test", "1280", "--d-hidden", "16",
         "--num-blocks", "2", "--data", "synthetic", "--data-root", str(data_root),
         "--runs-root", str(runs), "--no-progress", "--threads", "1"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = runs.glob(f"{mine.name}-s42-*")
    assert (run_dir / "checkpoint.pt").exists()
    key = run_key_of(TrainConfig(rule=mine.path, epochs=1, data="synthetic", synthetic_n_train=2000,
                                 synthetic_n_test=1280, d_hidden=16, num_blocks=2).to_dict(),
                     json.loads((run_dir / "trace.json").read_text())["metadata"]["data"][
                         "fingerprint"], __version__)
    assert run_dir.name.endswith(key[:12])


# ---------------------------------------------------------------------------------------------
# The training grid
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def grid_data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid_data")
    profile_data(TINY, data_root=str(root))
    return str(root)


def _folders(records):
    return [r.result.run_dir.name for r in records]


def test_the_process_pool_trains_a_users_rule_named_by_path_or_by_name(
        user_rule, grid_data_root, tmp_path):
    by_path, by_name = user_rule(), user_rule()
    __import__(by_name.module)        # the caller's own module registers this one
    assert by_path.module not in sys.modules
    kw = dict(seeds=[42], frozen=False, data_root=grid_data_root, progress=False)
    pool = dict(executor="process", workers=2, threads=1)
    records = run_grid(TINY, tmp_path / "pool", rules=[by_path.path, by_name.name], **pool, **kw)
    assert [r.status for r in records] == ["trained", "trained"]
    assert all(r.result.trace[-1]["epoch"] == TINY.epochs for r in records)
    reference = run_grid(TINY, tmp_path / "inprocess", rules=[by_path.name, by_name.path],
                         executor="inprocess", threads=1, **kw)
    assert sorted(_folders(records)) == sorted(_folders(reference))
    # named the other way, the pool's runs are the same runs: reused, nothing trained
    again = run_grid(TINY, tmp_path / "pool", rules=[by_path.name, by_name.path], **pool, **kw)
    assert [r.status for r in again] == ["reused", "reused"]


def test_a_rule_defined_in_main_is_refused_on_the_pool_and_trains_in_process(
        grid_data_root, tmp_path):
    name = f"main_rule_{os.getpid()}"
    base = RULES["dfa"]
    cls = type("MainRule", (base,), {"name": name, "__module__": "__main__"})
    RULES[name] = cls
    try:
        kw = dict(rules=[name], seeds=[42], frozen=False, data_root=grid_data_root,
                  progress=False)
        with pytest.raises(ValueError) as err:
            run_grid(TINY, tmp_path, executor="process", workers=2, threads=1, **kw)
        text = str(err.value)
        assert f"rule {name!r} is defined in __main__" in text
        assert "into a module" in text and "executor='inprocess'" in text
        assert not list(tmp_path.glob("runs/*/checkpoint.pt"))    # refused before any training
        (record,) = run_grid(TINY, tmp_path, executor="inprocess", **kw)
        assert record.status == "trained" and record.result.trace[-1]["epoch"] == TINY.epochs
    finally:
        RULES.pop(name, None)


def test_a_worker_imports_the_rule_of_its_job(user_rule, grid_data_root, tmp_path):
    """run_job in a process that never imported the rule: the job's path imports it."""
    mine = user_rule()
    config = TINY.config(mine.path, 42, data_root=grid_data_root, epochs=1)
    data = profile_data(TINY, data_root=grid_data_root)
    planned = run_name(config, run_key_of(config.to_dict(), data.fingerprint, __version__))
    mine.forget()                          # as in a fresh worker process
    job = GridJob(config, str(tmp_path), data.fingerprint, "label", planned, log=False,
                  rule_path=mine.path)
    outcome = run_job(job, data)
    assert outcome.status == "trained" and Path(outcome.run_dir).name == planned
    assert mine.marker.exists()


# ---------------------------------------------------------------------------------------------
# diagnose
# ---------------------------------------------------------------------------------------------
def test_diagnose_imports_a_rule_only_when_the_user_names_it(
        user_rule, data_root, synthetic_folder, tmp_path, capsys):
    mine = user_rule()
    result = train(tiny(data_root, rule=mine.path), runs_root=tmp_path / "runs")
    ckpt = str(result.run_dir / "checkpoint.pt")
    mine.forget()                          # a new session: the rule's module is not imported
    out = tmp_path / "report.json"

    assert diagnose_main(["--checkpoint", ckpt, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--rule {mine.path}" in err and "--no-gamma" in err and mine.name in err
    assert not mine.marker.exists() and mine.module not in sys.modules     # nothing imported
    assert not out.exists()

    assert diagnose_main(["--checkpoint", ckpt, "--out", str(out), "--no-gamma"]) == 0
    assert not mine.marker.exists() and mine.module not in sys.modules
    report = json.loads(out.read_text())
    assert report["alignment"] is None and report["method_name"] == mine.name.upper()

    assert diagnose_main(["--checkpoint", ckpt, "--out", str(out), "--rule", mine.path]) == 0
    assert mine.marker.exists()
    gamma = json.loads(out.read_text())["alignment"]
    assert isinstance(gamma["headline"], float) and -1 <= gamma["headline"] <= 1

    # a --rule that is another rule than the run's is refused
    capsys.readouterr()
    assert diagnose_main(["--checkpoint", ckpt, "--out", str(out), "--rule", "dfa"]) == 2
    assert f"trained with rule {mine.name!r}" in capsys.readouterr().err


def test_diagnose_says_a_rule_of_main_must_move_into_a_module(data_root, synthetic_folder,
                                                             tmp_path, capsys):
    name = f"main_diag_{os.getpid()}"
    RULES[name] = type("MainRule", (RULES["dfa"],), {"name": name, "__module__": "__main__"})
    try:
        result = train(tiny(data_root, rule=name), runs_root=tmp_path / "runs")
        assert result.metadata["rule"]["import_path"] == "__main__:MainRule"
    finally:
        RULES.pop(name, None)
    assert diagnose_main(["--checkpoint", str(result.run_dir / "checkpoint.pt"),
                          "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert "__main__" in err and "into a module" in err and "--rule <module>:MainRule" in err
