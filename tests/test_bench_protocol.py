"""benchmarks/bench_protocol.py: a quick run reports the diagnose time, both rules' epoch times,
the time shares and the FLOP share with the right counts. No speed is asserted."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_protocol",
                                                  ROOT / "benchmarks" / "bench_protocol.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flop_counts_at_the_paper_shapes(bench):
    fl = bench.flop_counts(3072, 256, 4, 10)
    share = 1280 * fl["diagnose_per_sample"] / (50_000 * fl["train_per_sample"])
    assert fl["train_per_sample"] == 6_306_816 and fl["diagnose_per_sample"] == 3_680_256
    assert share == pytest.approx(0.01494, abs=1e-5)   # above the 1% target: an arithmetic floor


def test_quick_run_reports_every_number(bench, data_root, synthetic_folder, tmp_path):
    threads = torch.get_num_threads()
    out = tmp_path / "bench.json"
    res = bench.main(["--quick", "--threads", "1", "--data-root", str(data_root),
                      "--n-train", "2000", "--n-test", "1280", "--json", str(out), "--quiet"])
    assert torch.get_num_threads() == threads, "main() must leave torch's thread count as it was"
    cfg = res["config"]
    assert cfg["data"]["source"] == "synthetic" and cfg["data"]["num_train"] == 2000
    assert cfg["eval_samples"] == 64 and cfg["steps_per_epoch"] == 50_000 // 32 + 1
    dg = res["diagnose"]
    assert 0 < dg["ms_min"] <= dg["ms_per_call"] <= dg["ms_max"]
    assert len(dg["ms_calls"]) == cfg["rounds"] * cfg["calls_per_round"]
    for rule in ("bp", "dfa"):
        t, s = res["training"][rule], res["shares"][rule]
        assert t["epoch_s"] == pytest.approx(t["ms_per_step"] / 1e3 * cfg["steps_per_epoch"])
        assert s["time_share"] == pytest.approx(dg["ms_per_call"] / 1e3 / t["epoch_s"])
        assert s["judged"] is False and s["pass"] is None
    fl = res["flops"]
    d, L, C = cfg["d"], cfg["blocks"], cfg["classes"]
    assert fl["diagnose_per_sample"] == 2 * 3072 * d + 8 * d * d * L + 4 * d * C
    assert fl["share"] == pytest.approx(64 * fl["diagnose_per_sample"]
                                        / (50_000 * fl["train_per_sample"]))
    assert fl["rough_share"] == pytest.approx(64 / 50_000)
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
