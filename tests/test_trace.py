"""The trace format: entries keyed by the report's field names (format 2), and format 1's traces
(hidden_norms, bp_grad_norms_per_sample_med, backward_gains_med, output_error_norm_med) read as
format 2 wherever a trace enters: a checkpoint resumed or reused, trace.json, replay_trace."""
import json

from fa_nb_utils import TrainConfig, train
from fa_nb_utils.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from fa_nb_utils.io import write_json_atomic
from fa_nb_utils.monitor import Monitor, replay_file, replay_trace
from fa_nb_utils.report import DiagnosticThresholds
from fa_nb_utils.trace import OLD_KEYS, TRACE_FORMAT, entry_reports
from fa_nb_utils.runs import TRACE_NAME, nonfinite_numbers

NEW_KEYS = ("residual_norms", "bp_grad_norms", "backward_gains", "output_error_norm")
NOT_NUMBERS = ("protocol", "stop_reason", "seconds")


def config(**kw):
    return TrainConfig(**{**dict(rule="dfa", epochs=2, seed=42, data="synthetic", d_hidden=16,
                                 num_blocks=2, limit_train=500, progress=False, device="cpu"),
                          **kw})


def format_1(entry: dict) -> dict:
    """An entry as fa-eval wrote it before format 2."""
    old = {new: old for old, new in OLD_KEYS.items()}
    return {old.get(k, k): v for k, v in entry.items()}


def numbers(trace):
    return [{k: v for k, v in e.items() if k not in NOT_NUMBERS} for e in trace]


def rewrite_as_format_1(run_dir):
    """The run folder as an older fa-eval left it: checkpoint and trace.json in format 1."""
    path = run_dir / CHECKPOINT_NAME
    state = load_checkpoint(path)
    state = {k: v for k, v in state.items() if k not in ("format", "schema_version")}
    state["trace"] = [format_1(e) for e in state["trace"]]
    state["metadata"] = {k: v for k, v in state["metadata"].items() if k != "trace_format"}
    save_checkpoint(path, state)
    write_json_atomic(run_dir / TRACE_NAME, {"metadata": state["metadata"],
                                             "trace": state["trace"]})
    return state


def test_a_trace_entry_holds_the_reports_field_names(synthetic_data):
    result = train(config(epochs=1), data=synthetic_data)
    assert result.metadata["trace_format"] == TRACE_FORMAT == 2
    for e in result.trace:
        assert set(NEW_KEYS) <= set(e) and not set(OLD_KEYS) & set(e)
    report = entry_reports(result.trace)[1]
    assert report.residual_norms == result.trace[1]["residual_norms"]
    assert report.backward_gains == result.trace[1]["backward_gains"]


def test_acc_eval_reuses_the_eval_batches_logits_and_equals_a_full_forward(synthetic_data):
    """The eval batches are the test split's first rows: their logits from layer_stats count
    for those rows; the accuracy is the same as one no-grad forward over the whole split."""
    import torch
    from fa_nb_utils.measures import accuracy
    from fa_nb_utils.trace import trace_entry
    model = train(config(epochs=1), data=synthetic_data).model
    data = synthetic_data
    full = accuracy(model, data.test_x, data.test_y)
    assert trace_entry(model, data, data.test_x[:256], data.test_y[:256], 1)["acc_eval"] == full
    # eval rows that are not the split's first rows: nothing reused, the same number
    assert trace_entry(model, data, data.test_x[256:512], data.test_y[256:512], 1)["acc_eval"] \
        == full
    # a head that disagrees with the model is used as given (it is the caller's promise)
    wrong = torch.zeros(len(data.test_y), 10)
    wrong[torch.arange(len(data.test_y)), (data.test_y + 1) % 10] = 1.0
    assert accuracy(model, data.test_x, data.test_y, head_logits=wrong) == 0.0


def test_a_format_1_trace_replays_as_its_format_2_twin(synthetic_data, tmp_path):
    result = train(config(), data=synthetic_data)
    old = [format_1(e) for e in result.trace]
    assert "hidden_norms" in old[0] and "residual_norms" not in old[0]
    t = DiagnosticThresholds(h_norm_explosion_ratio=1.01, backward_gain_floor=1.0)
    assert replay_trace(old, thresholds=t).to_dict() == \
        replay_trace(result.trace, thresholds=t).to_dict()
    path = tmp_path / TRACE_NAME
    path.write_text(json.dumps({"metadata": {}, "trace": old}))
    assert replay_file(path, thresholds=t).to_dict() == \
        replay_trace(result.trace, thresholds=t).to_dict()
    assert entry_reports(old)[2].bp_grad_norms == result.trace[2]["bp_grad_norms"]


def test_a_run_resumed_from_a_format_1_checkpoint_continues_in_format_2(
        synthetic_data, tmp_path):
    plain = train(config(), data=synthetic_data, runs_root=tmp_path / "plain")
    # a monitor stops the run at epoch 0; the caller then asks for the full budget
    stopped = train(config(), data=synthetic_data, runs_root=tmp_path / "old",
                    monitor=Monitor(thresholds=DiagnosticThresholds(g_norm_floor=1.0)))
    assert stopped.stop_reason.epoch == 0
    rewrite_as_format_1(stopped.run_dir)
    full = train(config(), data=synthetic_data, runs_root=tmp_path / "old")
    assert full.metadata["resumed_from_epoch"] == 0 and full.metadata["trace_format"] == 2
    assert numbers(full.trace) == numbers(plain.trace)   # every entry in format 2, same numbers
    saved = json.loads((full.run_dir / TRACE_NAME).read_text())
    assert numbers(saved["trace"]) == numbers(plain.trace)
    assert numbers(load_checkpoint(full.run_dir / CHECKPOINT_NAME)["trace"]) == \
        numbers(plain.trace)


def test_a_finished_format_1_run_is_reused_with_a_format_2_trace(synthetic_data, tmp_path):
    first = train(config(epochs=1), data=synthetic_data, runs_root=tmp_path)
    rewrite_as_format_1(first.run_dir)
    again = train(config(epochs=1), data=synthetic_data, runs_root=tmp_path)
    assert again.status == "reused"
    assert again.trace == first.trace and again.metadata["trace_format"] == 2


def test_a_format_1_entry_with_non_finite_norms_is_a_divergence():
    entry = format_1({"epoch": 3, "acc_eval": 0.1, "train_loss": 2.0,
                      "residual_norms": [1.0, float("nan")], "bp_grad_norms": [1e-3, None]})
    assert nonfinite_numbers(entry) == ("median ||h_l|| non-finite at layer(s) [1]; "
                                        "median ||g_l|| non-finite at layer(s) [1]")
