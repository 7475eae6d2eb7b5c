"""The in-training monitor (named stops, recorded protocol) and replay of saved traces (docs/protocol.md, the monitor and replay)."""
import json
import math

import importlib
import pytest

from fa_nb_utils.checkpoint import CHECKPOINT_NAME, load_checkpoint
from fa_nb_utils.protocol import diagnose
from fa_nb_utils.io import write_json_atomic
from fa_nb_utils.monitor import Monitor, StopReason, replay_file, replay_trace
from fa_nb_utils.report import NAME_A, NAME_B, DiagnosticThresholds
from fa_nb_utils.config import TrainConfig
from fa_nb_utils.runs import TRACE_NAME
from fa_nb_utils.trainer import train

train_mod = importlib.import_module("fa_nb_utils.trainer")

SMALL = dict(epochs=2, seed=42, data="synthetic", d_hidden=32, num_blocks=2, limit_train=500,
             progress=False, device="cpu")
MONITOR_KEYS = ("protocol", "stop_reason", "seconds")


def cfg(**kw):
    return TrainConfig(**{**SMALL, **kw})


def numbers(trace):
    """The trace without what the monitor adds and without wall-clock times."""
    return [{k: v for k, v in e.items() if k not in MONITOR_KEYS} for e in trace]


def max_growth(h):
    return max(b / a for a, b in zip(h, h[1:]))


# ---------------------------------------------------------------------------------------------
# Monitor in train()
# ---------------------------------------------------------------------------------------------
def test_strict_floor_stops_at_epoch_zero_with_a_named_reason(synthetic_data):
    monitor = Monitor(thresholds=DiagnosticThresholds(g_norm_floor=1.0))
    res = train(cfg(rule="dfa"), data=synthetic_data, monitor=monitor)
    stop = res.stop_reason
    assert isinstance(stop, StopReason) and res.monitor is monitor
    assert (stop.diagnostic, stop.name, stop.epoch, stop.threshold) == ("b", NAME_B, 0, 1.0)
    assert stop.value == res.trace[0]["bp_grad_norms"][-1]
    assert stop.message.startswith("(b) deepest median ||g_L||") and "at epoch 0" in stop.message
    assert [e["epoch"] for e in res.trace] == [0]          # no training after the stop
    assert res.trace[0]["stop_reason"] == stop.to_dict()
    assert monitor.first_fired["b"] == 0 and monitor.first_fired["a"] is None
    json.dumps(monitor.to_dict(), allow_nan=False)


def test_a_stops_at_the_first_due_epoch_and_the_stopped_run_is_finished_work(
        synthetic_data, tmp_path, monkeypatch):
    plain = train(cfg(rule="dfa", epochs=4), data=synthetic_data)
    growth = [max_growth(e["residual_norms"]) for e in plain.trace]
    # a threshold between the growth at init and the largest growth DFA reaches in this run
    threshold = (growth[0] + max(growth[1:])) / 2
    expected = next(e for e in (0, 2, 4) if growth[e] > threshold)
    assert expected > 0

    monitor = Monitor(every=2, stop_on=("a",),
                      thresholds=DiagnosticThresholds(h_norm_explosion_ratio=threshold))
    res = train(cfg(rule="dfa", epochs=4), data=synthetic_data, monitor=monitor,
                runs_root=tmp_path, checkpoint_every=3)
    stop = res.stop_reason
    assert (stop.diagnostic, stop.name, stop.epoch) == ("a", NAME_A, expected)
    assert stop.value == pytest.approx(growth[expected], rel=1e-12)
    assert stop.threshold == threshold and "max per-block growth" in stop.message
    # the trace ends at the stop, with the same numbers as the run without a monitor
    assert numbers(res.trace) == numbers(plain.trace[:expected + 1])
    assert [e["epoch"] for e in res.trace if "protocol" in e] == list(range(0, expected + 1, 2))

    # the stop epoch is checkpointed (not a multiple of checkpoint_every) with its reason
    state = load_checkpoint(res.run_dir / CHECKPOINT_NAME)
    assert state["epoch"] == expected and state["stop_reason"] == stop.to_dict()
    saved = json.loads((res.run_dir / TRACE_NAME).read_text())
    assert saved["metadata"]["stop_reason"] == stop.to_dict()
    assert saved["metadata"]["monitor"]["stop_on"] == ["a"]

    # a rerun with a monitor does not train further: a stopped run is finished work, and the
    # monitor restores its records from the saved protocol dicts
    calls = []
    real = train_mod.train_step
    monkeypatch.setattr(train_mod, "train_step", lambda *a, **k: calls.append(1) or real(*a, **k))
    m2 = Monitor()
    again = train(cfg(rule="dfa", epochs=4), data=synthetic_data, runs_root=tmp_path, monitor=m2)
    assert calls == [] and again.stop_reason == stop
    assert m2.stop_reason == stop and m2.first_fired["a"] == expected
    assert numbers(again.trace) == numbers(res.trace)
    # a reader that asks for the run as it is gets the stopped run, untrained
    read = train(cfg(rule="dfa", epochs=4), data=synthetic_data, runs_root=tmp_path,
                 accept_stopped=True)
    assert calls == [] and read.stop_reason == stop
    # a caller without a monitor asked for the full run: it continues from the stop, and its
    # numbers are those of the run that was never stopped
    full = train(cfg(rule="dfa", epochs=4), data=synthetic_data, runs_root=tmp_path)
    assert len(calls) > 0 and full.stop_reason is None
    assert numbers(full.trace) == numbers(plain.trace)


def test_default_monitor_on_bp_never_stops_changes_no_number_and_uses_diagnose(synthetic_data):
    plain = train(cfg(rule="bp"), data=synthetic_data)
    assert plain.stop_reason is None and plain.monitor is None
    assert not any("protocol" in e or "stop_reason" in e for e in plain.trace)
    assert "monitor" not in plain.metadata and "stop_reason" not in plain.metadata

    monitor = Monitor()
    res = train(cfg(rule="bp"), data=synthetic_data, monitor=monitor)
    assert res.stop_reason is None and monitor.stop_reason is None
    assert monitor.first_fired["a"] is None and monitor.first_fired["b"] is None
    assert monitor.first_fired["nonfinite"] is None
    assert numbers(res.trace) == numbers(plain.trace)
    assert [r["epoch"] for r in monitor.records] == [0, 1, 2]
    for e, r in zip(res.trace, monitor.records):
        assert e["protocol"] == r["report"]
        json.dumps(e["protocol"], allow_nan=False)
        assert e["protocol"]["residual_norms"] == e["residual_norms"]
    # the stored protocol numbers are diagnose's own, on the same model and eval batches
    last = res.trace[-1]
    direct = diagnose(res.model, synthetic_data.eval_batches(10, 128),
                      headline_acc=last["acc_eval"], method_name="BP", notes="epoch 2")
    assert last["protocol"] == direct.to_dict()


def test_c_and_d_are_recorded_but_stop_only_when_listed(synthetic_data):
    always_c = DiagnosticThresholds(stability_drift_ceiling=-1.0)   # any stability > -1 fires
    monitor = Monitor(thresholds=always_c, frozen_baseline_acc=0.99)
    res = train(cfg(rule="bp"), data=synthetic_data, monitor=monitor)
    assert res.stop_reason is None and len(res.trace) == 3
    assert monitor.first_fired["c"] == 0 and monitor.first_fired["d"] == 0
    for e, r in zip(res.trace, monitor.records):
        assert e["protocol"]["fired"]["c"] and e["protocol"]["fired"]["d"]
        assert set(r["fired"]) >= {"c", "d"} and r["stop_reason"] is None
    # replay sees (c) at the same first epoch from the stored protocol records; (d) is judged on
    # the final accuracy, so the replay reports it at the last entry only (nothing saved)
    rep = replay_trace(res.trace, thresholds=always_c)
    assert rep["c"].first_epoch == 0
    d = rep["d"]
    assert (d.status, d.first_epoch, d.saved_share, d.diff_pp) == ("fired", 2, 0.0, 0.0)
    assert d.acc_then == d.acc_end == res.trace[-1]["acc_eval"]
    assert rep.frozen_source == "from the trace's protocol records"
    # the recorded baseline serves the last entry even when that entry carries no protocol
    unmonitored_end = [dict(e) for e in res.trace]
    del unmonitored_end[-1]["protocol"]
    assert replay_trace(unmonitored_end, thresholds=always_c)["d"].to_dict() == d.to_dict()


def test_d_cannot_stop_a_run_during_training():
    with pytest.raises(ValueError, match=r"stop_on includes 'd'.*final accurac.*replay_trace"):
        Monitor(stop_on=("a", "b", "nonfinite", "d"), frozen_baseline_acc=0.99)
    with pytest.raises(ValueError, match=r"stop_on includes 'd'"):
        Monitor(stop_on=("d",))


def test_non_finite_training_stops_on_nonfinite(synthetic_data):
    res = train(cfg(rule="dfa", lr=1e6), data=synthetic_data, monitor=Monitor())
    stop = res.stop_reason
    assert (stop.diagnostic, stop.name) == ("nonfinite", "non-finite values")
    assert stop.epoch == res.trace[-1]["epoch"] >= 1
    assert not math.isfinite(res.trace[-1]["train_loss"])
    assert all(math.isfinite(e["train_loss"]) for e in res.trace[1:-1])
    assert "train loss" in stop.message and stop.to_dict()["value"] is None
    json.dumps(res.monitor.to_dict(), allow_nan=False)
    # between diagnose runs the train loss alone is checked
    quiet = train(cfg(rule="dfa", lr=1e6), data=synthetic_data,
                  monitor=Monitor(every=100, stop_on=("nonfinite",)))
    assert quiet.stop_reason.diagnostic == "nonfinite"
    assert quiet.stop_reason.epoch == stop.epoch
    assert [e["epoch"] for e in quiet.trace if "protocol" in e] == [0]


def test_bad_monitor_settings_are_refused(synthetic_data):
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['z'\].*'a'.*'b'.*'c'.*'e'.*"
                                         r"'nonfinite'") as err:
        Monitor(stop_on=("a", "z"))
    assert "'d'" not in str(err.value)             # (d) never stops a run (see below)
    with pytest.raises(ValueError, match="every must be an int >= 1"):
        Monitor(every=0)
    with pytest.raises(ValueError, match="percentage"):
        Monitor(frozen_baseline_acc=34.9)
    with pytest.raises(TypeError, match="monitor must be"):
        train(cfg(epochs=0), data=synthetic_data, monitor="a")


# ---------------------------------------------------------------------------------------------
# Replay of hand-made traces
# ---------------------------------------------------------------------------------------------
def hand_trace():
    """Epochs 0..10. h_L / h_0 = 1000 from the start, but no block grows > 50x until epoch 7;
    ||g_L|| drops under the floor at epoch 3."""
    trace = []
    for e in range(11):
        h = [1.0, 60.0, 61.0, 62.0] if e >= 7 else [1.0, 10.0, 100.0, 1000.0]
        g = [1e-3, 1e-3, 1e-3, 1e-8 if e >= 3 else 1e-4]
        trace.append({"epoch": e, "acc_eval": 0.1 + 0.02 * e, "residual_norms": h,
                      "bp_grad_norms": g,
                      "train_loss": None if e == 0 else 2.0 - 0.1 * e})
    return trace


def test_replay_uses_per_block_growth_and_computes_every_number():
    trace = hand_trace()
    rep = replay_trace(trace)
    acc = [e["acc_eval"] for e in trace]
    a, b, ab = rep["a"], rep["b"], rep["a|b"]
    assert (a.status, a.first_epoch) == ("fired", 7)      # not at 0, where max/h_0 = 1000
    assert (b.status, b.first_epoch) == ("fired", 3)
    assert (ab.first_epoch, ab.acc_then, ab.acc_end) == (3, acc[3], acc[10])
    assert ab.saved_share == (10 - 3) / 10 and a.saved_share == (10 - 7) / 10
    assert ab.diff_pp == round(100 * (acc[10] - acc[3]), 9)
    assert a.acc_then == acc[7] and "max per-block growth 60×" in a.detail
    assert rep["c"].status == "not available" and rep["d"].status == "not available"
    assert rep["nonfinite"].status == "never fired"
    text = str(rep)
    assert "epoch 7" in text and "epoch 3" in text and "70% (7/10)" in text
    assert "96%" not in text
    json.dumps(rep.to_dict(), allow_nan=False)



def test_replay_judges_d_on_the_final_accuracy_only():
    trace = hand_trace()                       # acc 0.1 + 0.02 e: 0.10 at epoch 0, 0.30 at 10
    # early accuracy is below the baseline, the final one clears it by 10 pp: (d) never fires
    rep = replay_trace(trace, frozen_baseline_acc=0.2)
    d = rep["d"]
    assert (d.status, d.first_epoch, d.saved_share) == ("never fired", None, None)
    assert "final accuracy" in d.detail and "epoch 10" in d.detail and "+10.00 pp" in d.detail
    # a final margin of 1 pp fires, at the last epoch, and a stop on it would save nothing
    rep = replay_trace(trace, frozen_baseline_acc=0.29)
    d = rep["d"]
    assert (d.status, d.first_epoch, d.saved_share, d.diff_pp) == ("fired", 10, 0.0, 0.0)
    assert d.acc_then == d.acc_end == trace[-1]["acc_eval"]
    assert "margin +1.00 pp" in d.detail and "final accuracy" in d.detail
    assert "0% (0/10)" in str(rep) and "100%" not in str(rep)
    assert rep["a|b"].first_epoch == 3                  # the other rows are unchanged
    # a one-entry trace: (d) at its only epoch, saved share 0 (not undefined)
    one = replay_trace(trace[-1:], frozen_baseline_acc=0.29)["d"]
    assert (one.first_epoch, one.saved_share) == (10, 0.0)
    zero = replay_trace(trace[:1], frozen_baseline_acc=0.29)["d"]
    assert (zero.first_epoch, zero.saved_share) == (0, 0.0)


def test_replay_never_fired_and_non_finite_entries(tmp_path):
    healthy = [{"epoch": e, "acc_eval": 0.5 + 0.01 * e, "residual_norms": [8.7, 9.0, 9.5],
                "bp_grad_norms": [8e-3, 8e-3, 8e-3]} for e in range(5)]
    rep = replay_trace(healthy)
    for key in ("a", "b", "a|b", "nonfinite"):
        r = rep[key]
        assert r.status == "never fired" and r.first_epoch is None and r.saved_share is None
    assert "never fired" in str(rep)

    broken = [dict(e) for e in healthy]
    broken[2] = {**broken[2], "residual_norms": [8.7, float("nan"), 9.5]}
    rep = replay_trace(broken)
    assert rep["a"].first_epoch == 2 and "non-finite residual norm" in rep["a"].detail
    assert rep["nonfinite"].first_epoch == 2 and "non-finite values" in rep["nonfinite"].detail
    assert rep["b"].status == "never fired"

    # the file format (strict JSON: the NaN is written as null) gives the same answer
    path = write_json_atomic(tmp_path / "trace.json", {"metadata": {"config": {}}, "trace": broken})
    from_file = replay_file(path)
    assert from_file.to_dict() == rep.to_dict()
    assert replay_trace(json.loads(path.read_text())).to_dict() == rep.to_dict()
    with pytest.raises(ValueError, match="no 'trace' key"):
        replay_trace({"metadata": {}})
    with pytest.raises(FileNotFoundError, match="trace.json"):
        replay_file(tmp_path / "missing.json")
