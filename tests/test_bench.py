"""benchmarks/bench_train.py: a quick run reports every number, and its seed-style baseline does
the trainer's work (same crop/flip per image, same update per batch), so its ratios are fair.

No speed is asserted (timed assertions are not allowed here): the targets are for a quiet machine.
"""
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from fa_nb_utils.data import cifar
from fa_nb_utils.data.device import PAD, DeviceData
from fa_nb_utils.trainer import TrainConfig, train_step

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_train", ROOT / "benchmarks" / "bench_train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def arrays(synthetic_folder):
    return cifar.read_cifar10_folder(synthetic_folder)


def test_quick_run_reports_both_loops_both_rules_ratios_and_utilisation(bench, data_root,
                                                                        synthetic_folder, tmp_path):
    threads = torch.get_num_threads()
    out = tmp_path / "bench.json"
    # the conftest's synthetic set (2,000 train images), one thread so that other jobs on the
    # machine cannot stall a parallel region
    res = bench.main(["--quick", "--threads", "1", "--data-root", str(data_root),
                      "--n-train", "2000", "--n-test", "1280", "--profile", "--json", str(out)])
    assert torch.get_num_threads() == threads, "main() must leave torch's thread count as it was"

    cfg = res["config"]
    assert cfg["data"]["source"] == "synthetic" and cfg["data"]["num_train"] == 2000
    d, L, C = cfg["d"], cfg["blocks"], cfg["classes"]
    assert res["flops"]["per_sample"] == 4 * 3072 * d + 12 * d * d * L + 6 * d * C
    assert res["matmul"]["gflops"] > 0 and res["matmul"]["floor_ms_per_step"] > 0
    for rule in ("bp", "dfa"):
        for loop in ("trainer", "seed_style"):
            r = res["results"][rule][loop]
            assert r["ms_per_step"] > 0 and math.isfinite(r["ms_per_step"])
            assert r["steps_per_s"] == pytest.approx(1e3 / r["ms_per_step"])
            assert 0 < r["utilisation"] and math.isfinite(r["utilisation"])
        q = res["ratios"][rule]
        assert q["ratio"] == pytest.approx(res["results"][rule]["seed_style"]["ms_per_step"]
                                           / res["results"][rule]["trainer"]["ms_per_step"])
        assert q["target"] == {"bp": 1.5, "dfa": 2.5}[rule]
        assert q["judged"] is False and q["pass"] is None   # targets hold at d=256, L=4, batch 128
        p = res["profile"][rule]
        assert p["sum_ms"] == pytest.approx(sum(v["ms"] for v in p["parts"].values()))
        assert "aten::" in p["top_ops"]
    meta = res["metadata"]
    assert meta["threads"] == 1 and meta["torch_version"] == torch.__version__
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))


def test_seed_style_dataset_gives_a_crop_and_flip_of_the_trainers_image(bench, arrays):
    data = DeviceData.from_cifar(arrays, name="synthetic", limit_train=8)
    ds = bench.SeedStyleCifar(arrays.train_x[:8], arrays.train_y[:8],
                              torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(data.train_x - data.pad_fill(), (PAD,) * 4) + data.pad_fill()
    seen = set()
    for _ in range(6):
        for i in range(len(ds)):
            x, y = ds[i]
            assert y == int(arrays.train_y[i]) and x.shape == (3, 32, 32)
            hits = [(dy, dx, flip) for dy in range(2 * PAD + 1) for dx in range(2 * PAD + 1)
                    for flip in (False, True)
                    if torch.allclose(x, (lambda c: c.flip(-1) if flip else c)(
                        padded[i, :, dy:dy + 32, dx:dx + 32]), atol=1e-5)]
            assert hits, "a seed-style sample is not a pad-4 crop (+ flip) of the image"
            seen.update(hits)
    assert len({h[2] for h in seen}) == 2 and len({h[:2] for h in seen}) > 1


@pytest.mark.parametrize("rule", ["bp", "dfa"])
def test_seed_style_loop_makes_the_trainers_update(bench, arrays, rule):
    """Same init, same batch: the original worked example's per-block loop (DFA) or the plain BP
    loop gives the same weights as one train_step, so both loops are timed doing the same work."""
    data = DeviceData.from_cifar(arrays, name="synthetic", limit_train=64)
    config = TrainConfig(rule=rule, seed=3, data="synthetic", d_hidden=32, num_blocks=2,
                         batch_size=32, device="cpu", progress=False)
    trainer = bench.TrainerCase(rule, config, data, torch.device("cpu"))
    seed_style = bench.SeedStyleCase(rule, config, data, arrays, torch.device("cpu"),
                                     getattr(trainer.rule, "feedback", None))
    for p, q in zip(trainer.model.parameters(), seed_style.model.parameters()):
        assert torch.equal(p, q)
    for step in range(2):
        x, y = data.train_x[32 * step:32 * (step + 1)], data.train_y[32 * step:32 * (step + 1)]
        train_step(trainer.model, trainer.rule, trainer.opt, x, y, config)
        seed_style.train_on(x.reshape(32, -1), y)
    for (name, p), q in zip(trainer.model.named_parameters(), seed_style.model.parameters()):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-6), name
