"""benchmarks/bench_protocol.py: what a quick run reports is what it ran (the training steps and
diagnose calls it made and timed, on the model and eval samples it names), and its FLOP counts
are those torch counts for a training step and a diagnose call. No speed is asserted."""
import importlib.util
import json
import math
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from fa_nb_utils.model import ResidualMLP
from fa_nb_utils.protocol import diagnose

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_protocol",
                                                  ROOT / "benchmarks" / "bench_protocol.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def counted_flops(fn) -> int:
    """FLOPs of the matmuls `fn` runs, counted by torch (2 per multiply-add)."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("d,blocks", [(256, 4), (32, 2)])   # the paper's shapes, --quick's
def test_flop_counts_are_the_ones_torch_counts(bench, d, blocks):
    """Per sample: a training step (forward, input and weight gradients) and a diagnose call
    (one forward; the backward of the summed CE and the backward gain's, to the states)."""
    model = ResidualMLP(input_dim=3072, d_hidden=d, num_classes=10, num_blocks=blocks)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3072, generator=g), torch.randint(0, 10, (8,), generator=g)
    train = counted_flops(lambda: F.cross_entropy(model(x), y).backward())
    diag = counted_flops(lambda: diagnose(model, [(x[:4], y[:4]), (x[4:], y[4:])]))
    fl = bench.flop_counts(3072, d, blocks, 10)
    assert fl["train_per_sample"] * 8 == train
    assert fl["diagnose_per_sample"] * 8 == diag


def test_quick_run_reports_the_runs_it_made(bench, data_root, synthetic_folder, tmp_path,
                                            monkeypatch):
    steps, calls = {}, []

    real_step = bench.TrainerSteps.step

    def step(self):
        t0 = time.perf_counter()
        real_step(self)
        steps.setdefault(self.config.rule, []).append(time.perf_counter() - t0)

    def timed_diagnose(model, batches):
        t0 = time.perf_counter()
        report = diagnose(model, batches)
        calls.append({"seconds": time.perf_counter() - t0, "report": report,
                      "samples": sum(len(b[1]) for b in batches),
                      "shape": (model.d_hidden, model.num_blocks), "training": model.training})
        return report

    monkeypatch.setattr(bench.TrainerSteps, "step", step)
    monkeypatch.setattr(bench, "diagnose", timed_diagnose)
    threads = torch.get_num_threads()
    out = tmp_path / "bench.json"
    res = bench.main(["--quick", "--threads", "1", "--data-root", str(data_root),
                      "--n-train", "2000", "--n-test", "1280", "--json", str(out), "--quiet"])
    assert torch.get_num_threads() == threads, "main() must leave torch's thread count as it was"
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    cfg = res["config"]
    assert cfg["data"]["source"] == "synthetic" and cfg["data"]["num_train"] == 2000
    assert cfg["eval_samples"] == 64 and cfg["steps_per_epoch"] == math.ceil(50_000 / 32)
    warmup, rounds, per_round = cfg["warmup"], cfg["rounds"], cfg["steps_per_round"]

    # each rule made the steps its config says; each round's time holds its steps
    assert set(steps) == {"bp", "dfa"} == set(res["training"])
    for rule, seconds in steps.items():
        t = res["training"][rule]
        assert len(seconds) == warmup + rounds * per_round
        for j, ms in enumerate(t["ms_per_step_rounds"]):
            inside = seconds[warmup + j * per_round:warmup + (j + 1) * per_round]
            assert ms / 1e3 * per_round >= sum(inside) * (1 - 1e-9), (rule, j)
        assert math.isfinite(t["epoch_s"]) and t["epoch_s"] > 0
        assert math.isfinite(res["shares"][rule]["time_share"])
        assert res["shares"][rule]["judged"] is False   # the target is for the paper's shapes

    # the diagnose calls: a warm-up, then the timed ones, each on the eval samples it names,
    # on the BP model as training left it (train mode), each timed around the whole call
    dg = res["diagnose"]
    assert len(calls) == 1 + rounds * cfg["calls_per_round"] == 1 + len(dg["ms_calls"])
    assert all(c["samples"] == cfg["eval_samples"] and c["training"]
               and c["shape"] == (cfg["d"], cfg["blocks"]) for c in calls)
    for ms, call in zip(dg["ms_calls"], calls[1:]):
        assert ms / 1e3 >= call["seconds"] * (1 - 1e-9)
    assert dg["verdict_of_watched_model"] == calls[0]["report"].verdict

    # the FLOP counts it divides are a training step's and a diagnose call's, per sample
    model = ResidualMLP(input_dim=cfg["input_dim"], d_hidden=cfg["d"],
                        num_classes=cfg["classes"], num_blocks=cfg["blocks"])
    x = torch.randn(cfg["batch"], cfg["input_dim"])
    y = torch.randint(0, cfg["classes"], (cfg["batch"],))
    fl = res["flops"]
    assert fl["train_per_sample"] * cfg["batch"] == counted_flops(
        lambda: F.cross_entropy(model(x), y).backward())
    assert fl["diagnose_per_sample"] * cfg["batch"] == counted_flops(
        lambda: diagnose(model, [(x[:16], y[:16]), (x[16:], y[16:])]))
