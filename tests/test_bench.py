"""benchmarks/bench_train.py: a quick run reports every number, and its seed-style baseline does
the trainer's work (same crop/flip per image, same update per batch), so its ratios are fair.
EP's breakdown times the rule's own step (same update as train_step) and its reference pieces
do the relaxation's own work.

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
from fa_nb_utils.ep import EPOptions, StackedBlocks, relax
from fa_nb_utils.rules import local_forward
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
    # EP: timed with the others, no seed-style loop (None, no ratio), its breakdown and the
    # relaxation against T x c
    r = res["results"]["ep"]["trainer"]
    assert r["ms_per_step"] > 0 and r["steps_per_s"] == pytest.approx(1e3 / r["ms_per_step"])
    assert res["results"]["ep"]["seed_style"] is None and "ep" not in res["ratios"]
    ep = res["ep"]
    assert ep["options"] == {"beta": 0.01, "steps": 20, "step_size": 0.2, "credit": "error",
                             "nudge": "one_sided"}
    b = ep["breakdown"]
    assert {"free forward (local_forward)", "relaxation (T steps)", "credits (-eps / beta)",
            "local losses + backward", "optimizer step"} <= set(b["parts"])
    assert all(v["ms"] >= 0 for k, v in b["parts"].items() if k != "credits (-eps / beta)")
    assert b["sum_ms"] == pytest.approx(sum(v["ms"] for v in b["parts"].values()))
    q = b["relaxation"]
    assert q["T"] == 20 and q["relax_calls_per_step"] == 1 and q["c_ms"] > 0
    assert q["T_times_c_ms"] == pytest.approx(20 * q["c_ms"])
    assert q["ms_per_call"] == pytest.approx(b["parts"]["relaxation (T steps)"]["ms"])
    assert q["ratio_of_medians"] == pytest.approx(q["ms_per_call"] / q["T_times_c_ms"])
    assert q["ratio"] > 0 and math.isfinite(q["ratio"]) and q["ratio_fastest"] > 0
    assert q["ratio_cpu_time"] > 0 and len(q["ms_per_call_steps"]) == b["steps"]
    assert q["tolerance"] == 1.15 and q["within_claim"] == (q["ratio"] <= 1.15)
    assert q["excess_ms"] == pytest.approx(q["ms_per_call"] - q["T_times_c_ms"])
    assert sum(q["extra_ms"].values()) == pytest.approx(q["ms_per_call"])
    assert "aten::" in q["top_ops"]   # --profile: the relaxation's profiler table too
    o = q["ops_vs_reference"]
    assert o["aten_calls_loop"] > o["aten_calls_reference"] > 0 and o["top"]
    # the bridges: timed with the others at their defaults, no seed-style loop, ms/step vs BP, DFA
    for rule in ("state_bridge", "credit_bridge"):
        r = res["results"][rule]["trainer"]
        assert r["ms_per_step"] > 0 and res["results"][rule]["seed_style"] is None
        b = res["bridges"][rule]
        assert b["options"]["hidden"] == 256
        for base in ("bp", "dfa"):
            assert b["ms_per_step_vs"][base] == pytest.approx(
                r["ms_per_step"] / res["results"][base]["trainer"]["ms_per_step"])
    assert res["bridges"]["credit_bridge"]["options"]["grad_weight"] == 1000.0
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


def test_ep_steps_option(bench):
    assert bench.parse_args(["--quick", "--ep-steps", "5"]).ep_steps == 5
    assert bench.parse_args([]).ep_steps is None
    with pytest.raises(SystemExit):
        bench.parse_args(["--ep-steps", "0"])


def _ep_cases(bench, arrays, steps=4):
    data = DeviceData.from_cifar(arrays, name="synthetic", limit_train=64)
    config = TrainConfig(rule="ep", seed=3, data="synthetic", d_hidden=32, num_blocks=2,
                         batch_size=32, device="cpu", progress=False,
                         rule_options={"steps": steps})
    return [bench.TrainerCase("ep", config, data, torch.device("cpu")) for _ in range(2)]


def test_ep_breakdown_step_is_the_trainers_step(bench, arrays):
    """The breakdown cuts `train_step`'s EP step at its parts: same batches, same weights after."""
    timed_case, plain = _ep_cases(bench, arrays)
    for _ in range(2):
        secs, fwd, y, clock = bench.ep_step_parts(timed_case, torch.device("cpu"))
        plain.step()
        assert clock.calls == 1 and set(secs) == set(bench.EP_PARTS)
    assert bench.ep_module.relax is relax, "the relax clock must put relax back"
    for (name, p), q in zip(timed_case.model.named_parameters(), plain.model.parameters()):
        assert torch.equal(p, q), name
    assert torch.equal(timed_case.loss_sum, plain.loss_sum)


def test_ep_reference_pieces_do_the_relaxations_work(bench, arrays):
    """T steps of `_relax_iteration` (the loop the pieces time) give relax's own states."""
    (case, _) = _ep_cases(bench, arrays, steps=5)
    model, opts = case.model, case.rule.options
    x, y = next(case.batches)
    with torch.no_grad():
        free = [h.detach() for h in local_forward(model, x).hiddens]
    states, _ = relax(model, free[0], free, y, opts.beta, opts.steps, opts.step_size)
    branches = StackedBlocks(model)
    s = torch.stack(free)
    with torch.enable_grad():
        for _ in range(opts.steps):
            s = bench._relax_iteration(model, branches, free[0], s, y, opts.beta, opts.step_size,
                                       readout=True)
    assert torch.allclose(s.detach(), torch.stack(states), atol=1e-6)
    pieces = bench.relaxation_reference(model, free, y, opts, torch.device("cpu"))
    assert set(pieces) == {"stack", "blocks_T", "energy_T", "loop_T", "final", "blocks_T_cpu",
                           "energy_T_cpu", "loop_T_cpu"}
    assert all(v >= 0 for v in pieces.values())
    flops = bench.relaxation_flops(32, 2, 10, opts.steps)
    assert flops["total"] == opts.steps * (8 * 32 * 32 * 2 + 4 * 32 * 10) + 4 * 32 * 32 * 2
    assert EPOptions().steps == 20   # the benchmark's default T


def test_bench_grid_times_each_setting_and_compares_the_runs(tmp_path):
    """benchmarks/bench_grid.py: one row per setting, ratios to the first, runs compared."""
    spec = importlib.util.spec_from_file_location("bench_grid", ROOT / "benchmarks" / "bench_grid.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "grid.json"
    res = module.main(["--profile", "tiny", "--rules", "bp", "--seeds", "42", "--no-frozen",
                       "--settings", "inprocess:1x1,process:1x1", "--data-root",
                       str(tmp_path / "data"), "--json", str(out)])
    rows = res["settings"]
    assert [r["label"] for r in rows] == ["inprocess:1x1", "process:1x1"]
    assert all(r["runs"] == 1 and r["wall_s"] > 0 for r in rows)
    assert rows[0]["ratio"] == 1.0
    assert rows[1]["ratio"] == pytest.approx(rows[1]["wall_s"] / rows[0]["wall_s"])
    assert all(r["same_runs_as_first"] for r in rows)   # same thread count: bit-identical
    assert json.loads(out.read_text())["metadata"]["profile"] == "tiny"
    with pytest.raises(SystemExit):
        module.main(["--settings", "process:two"])
