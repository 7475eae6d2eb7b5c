"""Training logs in TensorBoard, read back with TensorBoard's own reader: `train --tensorboard`,
`train(tensorboard=...)` and the grid write one sub-folder per run with per-layer scalars; a
resumed run continues its curves without a step twice, a reused run writes nothing, a monitor's
stop is text; a Monitor in a user's own loop feeds the same logger."""
import sys

import pytest
import torch

from fa_nb_utils import cli
from fa_nb_utils.config import TrainConfig
from fa_nb_utils.loggers import TensorBoardLogger, epoch_scalars, monitor_entry
from fa_nb_utils.model import ResidualMLP
from fa_nb_utils.monitor import Monitor
from fa_nb_utils.report import DiagnosticThresholds
from fa_nb_utils.trainer import train

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

LAYERS = [f"{key}/{l}" for key in ("residual_norms", "bp_grad_norms", "backward_gains")
          for l in range(3)]   # num_blocks=2: h_0, h_1, h_2


def tiny(data_root, **kw):
    return TrainConfig(**{"data": "synthetic", "synthetic_n_train": 2000,
                          "synthetic_n_test": 1280, "d_hidden": 16, "num_blocks": 2, "epochs": 1,
                          "eval_batches": 2, "eval_batch_size": 64, "progress": False,
                          "data_root": str(data_root), "rule": "dfa", **kw})


def read(folder):
    """Every scalar and text event of one run's folder, duplicates kept."""
    acc = EventAccumulator(str(folder), purge_orphaned_data=False)
    acc.Reload()
    tags = acc.Tags()
    return ({t: [e.step for e in acc.Scalars(t)] for t in tags["scalars"]},
            {t: [(e.step, e.tensor_proto.string_val[0].decode()) for e in acc.Tensors(t)]
             for t in tags["tensors"]})


def only_run(tb):
    (folder,) = [p for p in tb.iterdir() if p.is_dir()]
    return folder


def test_the_command_line_writes_per_layer_scalars_per_epoch(synthetic_folder, tmp_path, capsys):
    tb = tmp_path / "tb"
    code = cli.train_main(["--rule", "dfa", "--data", "synthetic", "--data-root",
                           str(synthetic_folder.parent), "--synthetic-n-train", "2000",
                           "--synthetic-n-test", "1280", "--d-hidden", "16", "--num-blocks", "2",
                           "--epochs", "2", "--no-progress", "--runs-root", str(tmp_path / "runs"),
                           "--tensorboard", str(tb)])
    assert code == 0, capsys.readouterr().err
    folder = only_run(tb)
    assert folder.name == only_run(tmp_path / "runs").name   # the run's own folder name
    scalars, _ = read(folder)
    assert set(LAYERS) | {"acc_eval", "train_loss"} <= set(scalars)
    assert scalars["residual_norms/2"] == [0, 1, 2]
    assert scalars["train_loss"] == [1, 2]             # epoch 0 has no train loss


def test_a_resumed_run_continues_its_curves_and_a_reused_run_writes_nothing(checkpoint_each_epoch, synthetic_folder,
                                                                             tmp_path):
    config, tb = tiny(synthetic_folder.parent, epochs=3), tmp_path / "tb"

    def interrupt(entry):
        if entry["epoch"] == 2:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train(config, runs_root=tmp_path / "runs", tensorboard=tb, on_epoch=interrupt)
    assert read(only_run(tb))[0]["acc_eval"] == [0, 1, 2]
    assert train(config, runs_root=tmp_path / "runs", tensorboard=tb).status == "resumed at epoch 2"
    scalars, _ = read(only_run(tb))
    assert {t: steps for t, steps in scalars.items() if steps != [0, 1, 2, 3]} == {
        "train_loss": [1, 2, 3]}
    files = sorted((p.name, p.stat().st_size) for p in only_run(tb).iterdir())
    assert train(config, runs_root=tmp_path / "runs", tensorboard=tb).status == "reused"
    assert sorted((p.name, p.stat().st_size) for p in only_run(tb).iterdir()) == files


def test_a_monitor_stop_is_logged_as_text(synthetic_folder, tmp_path):
    monitor = Monitor(stop_on=["b"], thresholds=DiagnosticThresholds(g_norm_floor=1e3))
    result = train(tiny(synthetic_folder.parent, epochs=3), monitor=monitor,
                   tensorboard=tmp_path / "tb")   # no runs folder: logged epoch by epoch
    assert result.stop_reason is not None and result.stop_reason.epoch == 0
    scalars, texts = read(only_run(tmp_path / "tb"))
    assert scalars["bp_grad_norms/2"] == [0]
    ((step, text),) = texts["stop_reason/text_summary"]
    assert step == 0 and text.startswith("stopped at epoch 0: ") and "(b)" in text


def test_a_monitor_in_a_users_own_loop_feeds_the_same_logger(synthetic_data, tmp_path):
    torch.manual_seed(0)
    model = ResidualMLP(d_hidden=16, num_blocks=2, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    batches = synthetic_data.eval_batches(2, 64)
    monitor, logger = Monitor(stop_on=[]), TensorBoardLogger(tmp_path / "tb" / "mine")
    for epoch in range(3):
        loss = None
        if epoch:
            x, y = batches[0]
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        monitor.check(model, batches, epoch, acc_eval=0.1, train_loss=loss and loss.item())
        logger(monitor_entry(monitor, epoch))
    logger.close()
    scalars, _ = read(tmp_path / "tb" / "mine")
    assert set(LAYERS) <= set(scalars) and scalars["residual_norms/0"] == [0, 1, 2]


def test_gamma_is_logged_per_layer_when_measured():
    entry = {"epoch": 4, "acc_eval": 0.5, "residual_norms": [1.0, None],
             "protocol": {"alignment": {"per_layer": [0.9, None, 0.2]}}}
    assert epoch_scalars(entry) == {"acc_eval": 0.5, "residual_norms/0": 1.0, "gamma/0": 0.9,
                                    "gamma/2": 0.2}


def test_the_grid_logs_each_trained_run_in_its_own_folder(tmp_path):
    from fa_nb_utils.paper.experiments import run_grid
    from fa_nb_utils.paper.profiles import get_profile

    tb = tmp_path / "tb"
    records = run_grid(get_profile("tiny"), tmp_path / "results", rules=["dfa"], seeds=[1, 2],
                       frozen=False, executor="inprocess", threads=1, progress=False,
                       tensorboard=tb, epochs=1)
    assert sorted(p.name for p in tb.iterdir()) == sorted(r.result.run_dir.name for r in records)
    for folder in tb.iterdir():
        assert read(folder)[0]["acc_eval"] == [0, 1]


def test_without_tensorboard_the_error_names_the_extra(synthetic_folder, tmp_path, monkeypatch,
                                                       capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(ImportError, match=r"pip install 'fa-eval\[tensorboard\]'"):
        train(tiny(tmp_path / "no-data-here"), tensorboard=tmp_path / "tb")
    assert cli.train_main(["--tensorboard", str(tmp_path / "tb"), "--data", "synthetic",
                           "--data-root", str(tmp_path / "no-data")]) == 2
    assert "fa-eval[tensorboard]" in capsys.readouterr().err
    assert not (tmp_path / "no-data").exists() and not (tmp_path / "tb").exists()
