"""What `replay_trace` and `replay_file` accept: bad traces are refused before any replay, with the
entry and the fix named; null numbers (non-finite when written) and numpy scalars are accepted."""
import json
import math

import numpy as np
import pytest
import torch

from fa_nb_utils.checkpoint import save_checkpoint
from fa_nb_utils.monitor import StopReason, _finite, _num, replay_file, replay_trace


def healthy(n=4):
    return [{"epoch": e, "acc_eval": 0.5 + 0.01 * e, "residual_norms": [8.7, 9.0, 9.5],
             "bp_grad_norms": [8e-3, 8e-3, 8e-3],
             "train_loss": None if e == 0 else 2.0 - 0.1 * e} for e in range(n)]


def with_entry(i, **changes):
    trace = healthy()
    trace[i] = {**trace[i], **changes}
    return trace


# ---------------------------------------------------------------------------------------------
# Accuracies
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("acc", [63.0, 1.5, -0.1, 100])
def test_accuracy_outside_0_1_is_refused_with_the_entry_and_a_hint(acc):
    with pytest.raises(ValueError, match=r"trace entry 2 \(epoch 2\): acc_eval .* outside \[0, 1\]"
                       ) as err:
        replay_trace(with_entry(2, acc_eval=acc))
    if 1 < acc <= 100:
        assert "/ 100" in str(err.value) and f"{acc / 100:g}" in str(err.value)


def test_a_percentage_is_refused_before_any_replay_even_in_the_last_entry():
    trace = healthy()
    trace[-1]["acc_eval"] = 63.0
    with pytest.raises(ValueError, match="percentage"):
        replay_trace(trace, frozen_baseline_acc=0.349)


def test_non_numeric_accuracy_is_refused():
    with pytest.raises(ValueError, match=r"trace entry 1 \(epoch 1\): acc_eval must be a number"):
        replay_trace(with_entry(1, acc_eval="0.6"))
    with pytest.raises(ValueError, match="acc_eval must be a number"):
        replay_trace(with_entry(1, acc_eval=True))


def test_null_and_nan_accuracy_still_fire_nonfinite_with_a_reason():
    for bad in (None, float("nan")):
        rep = replay_trace(with_entry(2, acc_eval=bad))
        nf = rep["nonfinite"]
        assert (nf.status, nf.first_epoch) == ("fired", 2) and "headline accuracy" in nf.detail


# ---------------------------------------------------------------------------------------------
# Epochs
# ---------------------------------------------------------------------------------------------
def test_duplicate_epochs_are_refused_with_both_entries():
    trace = healthy()
    trace[3]["epoch"] = 1
    with pytest.raises(ValueError, match=r"trace entries 1 and 3 both have epoch 1"):
        replay_trace(trace)


@pytest.mark.parametrize("epoch, what", [(-1, "-1"), (2.5, "2.5"), (2.0, "2.0"), ("2", "'2'"),
                                         (True, "True"), (None, "None")])
def test_negative_or_non_integer_epochs_are_refused_with_the_entry(epoch, what):
    with pytest.raises(ValueError, match=r"trace entry 2: epoch must be an integer >= 0, got "
                       + what.replace(".", r"\.")):
        replay_trace(with_entry(2, epoch=epoch))


def test_unsorted_distinct_epochs_are_still_accepted():
    trace = healthy()
    rep = replay_trace(list(reversed(trace)))
    assert rep.to_dict() == replay_trace(trace).to_dict()


# ---------------------------------------------------------------------------------------------
# Per-layer numbers
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field", ["residual_norms", "bp_grad_norms"])
def test_strings_in_per_layer_numbers_are_refused_with_entry_and_layer(field):
    values = ["8.7", 9.0, 9.5] if field == "residual_norms" else [8e-3, "8e-3", 8e-3]
    layer = 0 if field == "residual_norms" else 1
    with pytest.raises(ValueError, match=rf"trace entry 1 \(epoch 1\): {field}\[{layer}\] must be "
                                         r"a number or null"):
        replay_trace(with_entry(1, **{field: values}))
    with pytest.raises(ValueError, match=rf"trace entry 1 \(epoch 1\): {field} must be a list"):
        replay_trace(with_entry(1, **{field: "8.7, 9.0"}))
    with pytest.raises(ValueError, match=rf"{field}\[2\] must be a number or null"):
        replay_trace(with_entry(1, **{field: [1.0, 1.0, False]}))


def test_a_string_train_loss_is_refused():
    with pytest.raises(ValueError, match=r"trace entry 2 \(epoch 2\): train_loss must be a number "
                                         "or null"):
        replay_trace(with_entry(2, train_loss="1.2"))


def test_null_per_layer_numbers_are_allowed_and_fire_with_a_reason():
    rep = replay_trace(with_entry(2, residual_norms=[8.7, None, 9.5],
                                  bp_grad_norms=[8e-3, 8e-3, None]))
    assert rep["a"].first_epoch == 2 and "non-finite residual norm" in rep["a"].detail
    assert rep["b"].first_epoch == 2
    assert rep["nonfinite"].first_epoch == 2 and "non-finite values" in rep["nonfinite"].detail


# ---------------------------------------------------------------------------------------------
# numpy scalars
# ---------------------------------------------------------------------------------------------
def test_numpy_scalars_are_finite_numbers_and_bools_are_not():
    for v in (np.float32(0.5), np.float64(0.5), np.int64(3), 0.5, 3):
        assert _finite(v) and _num(v) == float(v) and type(_num(v)) is float
    for v in (True, np.bool_(True), np.float32("nan"), np.float64("inf"), None, "0.5"):
        assert not _finite(v) and _num(v) is None


def test_replay_of_numpy_typed_entries_equals_the_python_one():
    plain = healthy()
    typed = [{"epoch": np.int64(e["epoch"]), "acc_eval": np.float32(e["acc_eval"]),
              "residual_norms": np.array(e["residual_norms"], dtype=np.float32),
              "bp_grad_norms": [np.float64(v)
                                               for v in e["bp_grad_norms"]],
              "train_loss": None if e["train_loss"] is None else np.float32(e["train_loss"])}
             for e in plain]
    rep = replay_trace(typed, frozen_baseline_acc=np.float32(0.52))
    ref = replay_trace(plain, frozen_baseline_acc=0.52)
    assert rep["nonfinite"].status == "never fired"      # a float32 train loss is finite
    assert [r.status for r in rep.rows] == [r.status for r in ref.rows]
    assert rep["d"].first_epoch == ref["d"].first_epoch == 3
    assert rep.final_acc == pytest.approx(0.53) and type(rep.final_acc) is float
    d = rep.to_dict()
    assert d["final_acc"] == pytest.approx(0.53)
    json.dumps(d, allow_nan=False)


def test_stop_reason_json_keeps_numpy_values():
    stop = StopReason("a", "residual stream exploded", np.float32(60.0), np.float32(50.0), 3,
                      "(a) max per-block growth 60× > 50× at epoch 3")
    d = stop.to_dict()
    assert d["value"] == 60.0 and d["threshold"] == 50.0
    assert type(d["value"]) is float and type(d["threshold"]) is float
    json.dumps(d, allow_nan=False)
    assert StopReason("nonfinite", "non-finite values", np.float32("nan"), None, 1,
                      "x").to_dict()["value"] is None


# ---------------------------------------------------------------------------------------------
# replay_file on files that are not complete JSON
# ---------------------------------------------------------------------------------------------
def _write_truncated(tmp_path, cut):
    text = json.dumps({"metadata": {"config": {}}, "trace": healthy()}, indent=2)
    path = tmp_path / "trace.json"
    path.write_text(text[:cut(len(text))])
    return path


@pytest.mark.parametrize("cut", [lambda n: n // 2, lambda n: 0], ids=["half", "empty"])
def test_a_truncated_or_empty_trace_file_names_the_path_and_the_fix(tmp_path, cut):
    path = _write_truncated(tmp_path, cut)
    with pytest.raises(ValueError) as err:
        replay_file(path)
    msg = str(err.value)
    assert str(path) in msg and "truncated or not JSON" in msg
    assert "checkpoint.pt" in msg and "rerun the training" in msg
    assert not isinstance(err.value, json.JSONDecodeError)
    assert isinstance(err.value.__cause__, json.JSONDecodeError)


def test_a_truncated_trace_beside_a_checkpoint_points_to_the_checkpoints_trace(tmp_path):
    path = _write_truncated(tmp_path, lambda n: n // 2)
    save_checkpoint(tmp_path / "checkpoint.pt", {"trace": healthy(), "model": {},
                                                 "x": torch.zeros(1)})
    with pytest.raises(ValueError) as err:
        replay_file(path)
    msg = str(err.value)
    assert str(tmp_path / "checkpoint.pt") in msg and "load_checkpoint" in msg
    assert "['trace']" in msg


def test_a_binary_trace_file_is_refused_clearly(tmp_path):
    path = tmp_path / "trace.json"
    path.write_bytes(b"\x80\x81\xff" * 10)
    with pytest.raises(ValueError, match="truncated or not JSON"):
        replay_file(path)


def test_a_complete_trace_file_still_replays(tmp_path):
    path = tmp_path / "trace.json"
    path.write_text(json.dumps({"metadata": {}, "trace": healthy()}))
    assert replay_file(path).to_dict() == replay_trace(healthy()).to_dict()
    assert math.isclose(replay_file(path).final_acc, 0.53)
