"""A diagnostic on a number nobody measured before, registered with no other edit of the package.

The toy measures the median |logit margin| (the label's logit minus the largest other one) from
the eval pass, and fires when it is under a floor set so high that every model fires it. It is
seen in the printed report, the JSON both ways, a monitored run's records and trace, the replay,
the full audit table and the partial audit, and is gone once unregistered.
"""
import json

import numpy as np
import pytest
import torch

from fa_nb_utils import TrainConfig, diagnose, train
from fa_nb_utils.diagnostics import (BELOW, DIAGNOSTICS, PARTIAL_NOT_MEASURED, Diagnostic,
                                     register_diagnostic, unregister_diagnostic)
from fa_nb_utils.measures import MEASUREMENTS, Measurement
from fa_nb_utils.monitor import Monitor, replay_trace
from fa_nb_utils.paper import audit
from fa_nb_utils.paper.experiments import profile_data, run_grid
from fa_nb_utils.paper.profiles import get_profile
from fa_nb_utils.partial_audit import partial_audit
from fa_nb_utils.report import DiagnosticReport

NAME = "logits barely separate the label"
COLUMN = "logit margin (m)"


def logit_margin(p) -> float:
    """Median over eval samples of |z_y - max_{j != y} z_j|, in float64."""
    z = p.stats.logits.detach().to(torch.float64)
    y = p.labels.to(z.device).long()[:, None]
    others = z.scatter(1, y, float("-inf")).max(dim=1).values
    return float(np.median((z.gather(1, y)[:, 0] - others).abs().cpu().numpy()))


@pytest.fixture
def toy():
    margin = Measurement("logit_margin", logit_margin, needs=("logits",))
    diag = register_diagnostic(Diagnostic(
        key="m", name=NAME, title="logit margin", needs=(margin,),
        threshold_field="logit_margin_floor", direction=BELOW, default_threshold=1e6,
        partial=PARTIAL_NOT_MEASURED, partial_note="needs the logits of the eval batches"))
    yield diag
    unregister_diagnostic("m")


def model_and_batches(seed=0):
    torch.manual_seed(seed)
    from fa_nb_utils.model import ResidualMLP
    model = ResidualMLP(12, 16, 3, 2, seed=seed)
    x, y = torch.randn(64, 12), torch.randint(0, 3, (64,))
    return model, [(x[:32], y[:32]), (x[32:], y[32:])]


def test_the_toy_is_in_the_printed_report_and_the_json_both_ways(toy):
    model, batches = model_and_batches()
    report = diagnose(model, batches, headline_acc=0.5)
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    with torch.no_grad():
        z = model(x).double()
    mask = torch.nn.functional.one_hot(y, 3).bool()
    expected = float(np.median((z[mask] - z.masked_fill(mask, float("-inf")).max(1).values)
                               .abs().numpy()))
    value = report.measurements["logit_margin"]
    assert value == pytest.approx(expected, rel=1e-6) and report.statistics["m"] == value
    assert report.fired["m"] is True and report.verdict.endswith(f"; {NAME}")
    text = str(report)
    assert f"(m) logit margin: {value:.4g}" in text
    assert f"FLAG: logit margin {value:.4g} < threshold 1e+06 — {NAME}." in text
    d = json.loads(report.to_json())
    assert d["measurements"] == {"logit_margin": value}
    assert d["diagnostics"]["m"] == "fired" and d["thresholds"]["logit_margin_floor"] == 1e6
    back = DiagnosticReport.from_json(report.to_json())
    assert back.measurements == {"logit_margin": value} and back.fired["m"] is True
    assert back.to_dict() == d
    # a report made before the toy was registered did not measure it: skipped, not fired
    before = DiagnosticReport.from_dict({k: v for k, v in d.items() if k != "measurements"})
    assert before.fired["m"] is None and NAME not in before.verdict


def test_the_toy_is_in_a_monitored_runs_records_trace_and_replay(toy, synthetic_data):
    config = TrainConfig(data="synthetic", d_hidden=16, num_blocks=2, epochs=2, limit_train=500,
                         eval_batches=2, eval_batch_size=64, progress=False, device="cpu")
    monitor = Monitor()
    result = train(config, data=synthetic_data, monitor=monitor)
    assert [e["epoch"] for e in result.trace] == [0, 1, 2]
    for entry, record in zip(result.trace, monitor.records):
        # the trace entry holds the measurement under its name: the monitor's own number
        assert entry["logit_margin"] == record["report"]["measurements"]["logit_margin"]
        assert record["report"]["diagnostics"]["m"] == "fired" and "m" in record["fired"]
        assert entry["protocol"]["statistics"]["m"] == entry["logit_margin"]
    assert monitor.first_fired["m"] == 0
    row = replay_trace(result.trace)["m"]
    assert (row.status, row.first_epoch) == ("fired", 0) and NAME in row.label
    # without the protocol records the trace still decides it: its number is traced
    bare = [{k: v for k, v in e.items() if k != "protocol"} for e in result.trace]
    assert replay_trace(bare)["m"].first_epoch == 0
    # a trace written before the toy was registered cannot decide it, and says why
    before = replay_trace([{k: v for k, v in e.items() if k != "logit_margin"} for e in bare])
    assert before["m"].status == "not available"
    assert before["m"].detail == "no logit_margin in the trace"
    # the same number as diagnose on the final model
    batches = synthetic_data.eval_batches(config.eval_batches, config.eval_batch_size)
    final = diagnose(result.model, batches, headline_acc=result.trace[-1]["acc_eval"])
    assert final.measurements["logit_margin"] == result.trace[-1]["logit_margin"]


def test_the_toy_has_a_column_in_the_full_audit_table_and_is_not_measured_by_the_partial(
        toy, tmp_path):
    profile = get_profile("tiny")
    data = profile_data(profile, device="cpu")
    threads = torch.get_num_threads()
    try:
        records = run_grid(profile, tmp_path, rules=("dfa",), seeds=(42,), data=data,
                           threads=1, progress=False)
    finally:
        torch.set_num_threads(threads)
    table = audit.audit_runs(records, data, profile=profile)
    cols = list(table.columns)
    assert cols[cols.index("(d) margin pp, as paper applied") + 1] == COLUMN
    assert cols.index(COLUMN) + 1 == cols.index("Γ headline")
    summary, seed = table.rows
    value = table.audits[0].report.measurements["logit_margin"]
    assert seed[COLUMN] == f"{value:.4g}" and summary[COLUMN] == f"{value:.4g} (n=1)"
    assert seed["fired (matched)"].endswith("+(m)")
    assert table.numbers()["per_seed"][0]["m"] == value
    saved = audit.save_audit_table(table, outdir=tmp_path / "tables")
    assert COLUMN in saved["csv"].read_text().splitlines()[0]

    res = partial_audit([{"seed": 1, "acc": 0.4, "h_L": 50.0, "h_0": 10.0, "g_k": 1e-4}],
                        frozen_baseline_acc=0.3, h0_source="final entry", num_blocks=2,
                        grad_layer=1, grad_scale="paper scale")
    assert res.status["m"] == "not measured" and "(m)" in res.open_items
    assert res.to_dict()["m"] == {"status": "not measured",
                                  "reason": "needs the logits of the eval batches"}


def test_unregistered_the_toy_and_its_measurement_are_gone():
    margin = Measurement("logit_margin", logit_margin, needs=("logits",))
    register_diagnostic(Diagnostic(key="m", name=NAME, title="logit margin", needs=(margin,),
                                   threshold_field="logit_margin_floor", direction=BELOW,
                                   default_threshold=1e6))
    assert "logit_margin" in MEASUREMENTS
    unregister_diagnostic("m")
    assert "m" not in DIAGNOSTICS and "logit_margin" not in MEASUREMENTS
    model, batches = model_and_batches()
    report = diagnose(model, batches)
    assert report.measurements == {} and "measurements" not in report.to_dict()
    assert COLUMN not in audit.audit_columns()


def test_a_diagnostic_needs_a_measurement_that_exists():
    with pytest.raises(ValueError, match="needs unknown measurement"):
        Diagnostic(key="q", name="x", title="x", needs=("no_such_number",),
                   threshold_field="x", direction=BELOW, default_threshold=1.0)
    with pytest.raises(ValueError, match="batch sizes"):
        Measurement("per_batch", lambda p: 0.0, needs=("batch_sizes",))
