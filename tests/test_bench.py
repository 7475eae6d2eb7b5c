"""benchmarks/bench_train.py and bench_grid.py: what a quick run reports is what it ran (the
steps each case made and timed, the FLOPs torch counts for a training step and a relaxation,
the data, the runs it compared), and the seed-style baseline does the trainer's work (same
crop/flip per image, same update per batch), so its ratios are fair. EP's breakdown times the
rule's own step (same update as train_step) and its reference pieces do the relaxation's work.

No speed is asserted (timed assertions are not allowed here): the targets are for a quiet machine.
"""
import importlib.util
import json
import math
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from fa_nb_utils.data import cifar
from fa_nb_utils.data.device import PAD, DeviceData
from fa_nb_utils.ep import EPOptions, StackedBlocks, relax
from fa_nb_utils.model import ResidualMLP
from fa_nb_utils.rules import local_forward
from fa_nb_utils.config import TrainConfig
from fa_nb_utils.trainer import train_step

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


def counted_flops(fn) -> int:
    """FLOPs of the matmuls `fn` runs, counted by torch (2 per multiply-add), independently of
    the benchmarks' formulas."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def bp_step_and_relax_flops(d, blocks, classes, batch, steps):
    """One BP training step's FLOPs and one EP relaxation's (T = steps), on the model's shapes."""
    model = ResidualMLP(input_dim=3072, d_hidden=d, num_blocks=blocks, num_classes=classes)
    x, y = torch.randn(batch, 3072), torch.randint(0, classes, (batch,))
    step = counted_flops(lambda: F.cross_entropy(model(x), y).backward())
    with torch.no_grad():
        free = [h.detach() for h in local_forward(model, x).hiddens]
    o = EPOptions(steps=steps)
    relaxation = counted_flops(lambda: relax(model, free, y, o.beta, o.steps, o.step_size,
                                             o.momentum))
    return step, relaxation


def _step_clock(monkeypatch, bench):
    """Wrap every case's step() (in the benchmark's timed rounds): the steps each case made, in
    order, and the seconds each took, measured inside the benchmark's own clock reads."""
    made = {}

    def wrap(cls, loop, rule_of):
        real = cls.step

        def step(self):
            t0 = time.perf_counter()
            n = real(self)
            made.setdefault((rule_of(self), loop), []).append(time.perf_counter() - t0)
            return n
        monkeypatch.setattr(cls, "step", step)

    wrap(bench.TrainerCase, "trainer", lambda case: case.rule.name)
    wrap(bench.SeedStyleCase, "seed_style", lambda case: case.rule_name)
    return made


def test_quick_run_reports_the_runs_it_made(bench, data_root, synthetic_folder, arrays, tmp_path,
                                            monkeypatch):
    """What the JSON reports is what the run did: each case made the steps the config says, each
    round's time contains the steps timed in it, the FLOPs behind utilisation and the matmul
    floor are a training step's as torch counts them, on the data it names. No speed is
    asserted."""
    threads = torch.get_num_threads()
    made = _step_clock(monkeypatch, bench)
    out = tmp_path / "bench.json"
    # the conftest's synthetic set (2,000 train images), one thread so that other jobs on the
    # machine cannot stall a parallel region
    res = bench.main(["--quick", "--threads", "1", "--data-root", str(data_root),
                      "--n-train", "2000", "--n-test", "1280", "--profile", "--json", str(out),
                      "--quiet"])
    assert torch.get_num_threads() == threads, "main() must leave torch's thread count as it was"
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    assert res["metadata"]["threads"] == 1 and res["metadata"]["torch_version"] == torch.__version__

    cfg = res["config"]
    assert cfg["data"]["fingerprint"] == DeviceData.from_cifar(arrays, name="synthetic").fingerprint
    d, L, C, B = cfg["d"], cfg["blocks"], cfg["classes"], cfg["batch"]
    assert (d, L, B, cfg["input_dim"]) == (32, 2, 32, 3072)      # --quick's sizes
    warmup, rounds, per_round = cfg["warmup"], cfg["rounds"], cfg["steps_per_round"]
    assert per_round * rounds >= cfg["steps"]

    # every case timed: the steps it made, and each round's time holds that round's steps
    timed_cases = {(r, loop) for r in bench.RULE_NAMES for loop in bench.LOOPS
                   if res["results"][r][loop] is not None}
    assert timed_cases == set(made) == {(r, "trainer") for r in bench.RULE_NAMES} | {
        ("bp", "seed_style"), ("dfa", "seed_style")}
    for (rule, loop), seconds in made.items():
        r = res["results"][rule][loop]
        profiled = res["profile"][rule]["top_ops_steps"] if (
            loop == "trainer" and rule in res["profile"]) else 0
        assert len(seconds) == warmup + rounds * per_round + profiled, (rule, loop)
        assert len(r["ms_per_step_rounds"]) == rounds
        for j, ms in enumerate(r["ms_per_step_rounds"]):
            inside = seconds[warmup + j * per_round:warmup + (j + 1) * per_round]
            assert ms / 1e3 * per_round >= sum(inside) * (1 - 1e-9), (rule, loop, j)
        assert all(math.isfinite(r[k]) and r[k] > 0 for k in ("ms_per_step", "utilisation"))

    # the FLOPs behind the utilisation and the floor: a BP step's and EP's relaxation, counted
    step, relaxation = bp_step_and_relax_flops(d, L, C, B, res["ep"]["options"]["steps"])
    assert res["flops"]["per_sample"] * B == step
    model = ResidualMLP(input_dim=3072, d_hidden=d, num_blocks=L, num_classes=C)
    forward = counted_flops(lambda: model(torch.randn(B, 3072)))
    assert res["flops"]["floor_per_sample"] * B == 3 * forward    # the floor: 3 x the forward
    # the rate's matmuls: the forward's but the head's, and the embed's weight grad
    assert res["matmul"]["flops_per_step"] == forward - 2 * B * d * C + 2 * 3072 * B * d
    # the floor's runs: BP and DFA, augmented or not, one epoch each in every round
    f = res["floor"]
    assert set(f["runs"]) == {"bp", "bp/no_augment", "dfa", "dfa/no_augment"}
    assert len(f["floor_ms_rounds"]) == cfg["floor_rounds"] == 2          # --quick's
    assert all(len(r["ms_per_step_rounds"]) == 2 and 0 < r["fraction"] for r in f["runs"].values())
    assert f["steps_per_epoch"] == -(-cfg["data"]["num_train"] // B)
    assert res["ep"]["relaxation_flops_per_sample"]["total"] * B == relaxation
    assert res["ep"]["flops_per_sample_with_relaxation"] * B == step + relaxation

    # what each part of the report says it measured
    assert res["ep"]["options"] == {"beta": 0.01, "steps": 5, "step_size": 0.2, "momentum": 0.0,
                                    "credit": "error", "nudge": "one_sided"}
    q = res["ep"]["breakdown"]["relaxation"]
    assert q["T"] == 5 and q["relax_calls_per_step"] == 1   # one-sided: one relaxation a step
    assert {"free forward (local_forward)", "relaxation (T steps)", "credits (-eps / beta)",
            "local losses + backward", "optimizer step"} <= set(res["ep"]["breakdown"]["parts"])
    assert "aten::" in q["top_ops"] and all("aten::" in p["top_ops"]
                                            for p in res["profile"].values())
    o = q["ops_vs_reference"]   # the loop does the reference's ops and more
    assert o["aten_calls_loop"] > o["aten_calls_reference"] > 0
    for rule in ("bp", "dfa"):
        assert res["ratios"][rule]["judged"] is False    # targets hold at d=256, L=4, batch 128
    for rule in ("state_bridge", "credit_bridge"):
        assert res["results"][rule]["seed_style"] is None
        assert all(math.isfinite(v) and v > 0
                   for v in res["bridges"][rule]["ms_per_step_vs"].values())
    assert res["bridges"]["state_bridge"]["options"]["hidden"] == 256
    assert res["bridges"]["credit_bridge"]["options"]["grad_weight"] == 1000.0


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
    displacements, _ = relax(model, free, y, opts.beta, opts.steps, opts.step_size,
                             opts.momentum)
    branches, hf = StackedBlocks(model), torch.stack(free)
    f_free = branches(hf[:-1])
    d = v = torch.zeros_like(hf)
    with torch.enable_grad():
        for _ in range(opts.steps):
            d, v = bench._relax_iteration(model, branches, hf, f_free, d, v, y, opts,
                                          readout=True)
    assert torch.allclose(d, displacements, atol=1e-7)
    pieces = bench.relaxation_reference(model, free, y, opts, torch.device("cpu"))
    assert set(pieces) == {"stack", "blocks_T", "energy_T", "loop_T", "final", "blocks_T_cpu",
                           "energy_T_cpu", "loop_T_cpu"}
    assert all(v >= 0 for v in pieces.values())
    _, relaxation = bp_step_and_relax_flops(32, 2, 10, 8, opts.steps)
    assert bench.relaxation_flops(32, 2, 10, opts.steps)["total"] * 8 == relaxation


def test_bench_grid_times_each_setting_and_compares_the_runs(tmp_path):
    """benchmarks/bench_grid.py: one row per setting, ratios to the first, runs compared."""
    spec = importlib.util.spec_from_file_location("bench_grid", ROOT / "benchmarks" / "bench_grid.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "grid.json"
    grids, real = [], module.run_grid

    def run_grid(*args, **kwargs):   # each setting's grid, its records and its time
        t0 = time.perf_counter()
        records = real(*args, **kwargs)
        grids.append((kwargs, records, time.perf_counter() - t0))
        return records

    module.run_grid = run_grid
    res = module.main(["--profile", "tiny", "--rules", "bp", "--seeds", "42", "--no-frozen",
                       "--settings", "inprocess:1x1,process:1x1", "--data-root",
                       str(tmp_path / "data"), "--json", str(out)])
    rows = res["settings"]
    assert [r["label"] for r in rows] == ["inprocess:1x1", "process:1x1"]
    for row, (kwargs, records, seconds) in zip(rows, grids, strict=True):
        assert (kwargs["executor"], kwargs["workers"], kwargs["threads"]) == (
            row["executor"], 1, 1)
        assert row["runs"] == len(records) == 1 and records[0].rule == "bp"
        assert row["wall_s"] >= seconds * (1 - 1e-9)     # its clock holds the whole grid
        # the ceiling is the first setting's training seconds over this one's per worker
        run_s = sum(e["seconds"] for e in records[0].result.trace)
        assert row["run_seconds"] == pytest.approx(run_s)
        assert row["ceiling"] == pytest.approx(rows[0]["run_seconds"] / run_s)
    # the runs it compared are the same, bit for bit (same thread count), as it says
    same = _trace_and_weights(grids[0][1]) == _trace_and_weights(grids[1][1])
    assert same and all(r["same_runs_as_first"] == same for r in rows)
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    assert res["metadata"]["profile"] == "tiny"
    with pytest.raises(SystemExit):
        module.main(["--settings", "process:two"])


def _trace_and_weights(records):
    return [([{k: v for k, v in e.items() if k != "seconds"} for e in r.result.trace],
             {k: v.tolist() for k, v in r.result.model.state_dict().items()}) for r in records]
