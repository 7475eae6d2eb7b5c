"""Speed of the trainer against a seed-style loop: ms/step, ratios and model-FLOP utilisation;
EP's cost beside BP and DFA, where its step goes, and its relaxation against T x (forward + VJP);
State Bridge's and Credit Bridge's ms/step against BP's and DFA's.

    python benchmarks/bench_train.py                      # d=256, L=4, batch 128, ~30 s quiet
    python benchmarks/bench_train.py --json bench.json    # also write every number + metadata
    python benchmarks/bench_train.py --ep-steps 10         # EP with T=10 (beta, eta: defaults)
    make bench

What it measures, in one process, on the same model, data, seeds and thread count:
- *this trainer*: exactly what `fa_nb_utils.trainer.train` does per step (device-resident
  `DeviceData`, `train_batches` = permutation slices + whole-batch `augment_batch`, `train_step`,
  the train-loss sum), for the rules `bp`, `dfa`, `ep` (EP with `EPOptions()`: beta 0.01,
  T=20, eta 0.2, or T from --ep-steps), `state_bridge` and `credit_bridge` (their defaults);
- a *seed-style* loop, written the way the paper's original example scripts (which this project
  grew from) train: a `Dataset` whose `__getitem__` does torchvision's
  `RandomCrop(32, padding=4)`, `RandomHorizontalFlip()`, `ToTensor()`, `Normalize(mean, std)` for
  one image (with torch ops: torchvision is not installable here), a
  `DataLoader(batch_size, shuffle=True, num_workers=0)`, `x.view(B, -1)`; for BP the usual single
  backward and one AdamW; for DFA the original worked example's per-block epoch (no-grad forward,
  head AdamW on CE, then per block its own AdamW and its own backward, then the embed's), with the
  trainer's unnormalised credits e B_l^T and feedback matrices, and optimizers created once;
  EP has none (the original scripts train no EP): its seed-style row says "—", with no ratio;
- the fp32 matmul rate at the step's own shapes, timed together (the embed's forward
  (B x 3072)@(3072 x d), its transposed product with a (B x d), the blocks' 2L (B x d)@(d x d));
  the *floor* of a step is 3 x the forward's matmul FLOPs at that rate, the same for every rule;
- the step against that floor the issue's way (`floor_fraction`, also alone with --floor-only):
  1-epoch `train` runs of BP and DFA, with and without the augmentation, step = the trace's
  `seconds` / steps, in rounds interleaved with the rate; target >= 0.75 of the floor.
- EP's step cut into parts (always): batch, free forward (`local_forward`), relaxation (`ep.relax`,
  T steps, timed by wrapping the rule's own call), credits, local losses + backward, optimizer
  step; and the claim "the relaxation loop costs no more than T x (one forward + one state
  backward) of the blocks": c = `StackedBlocks` forward on the stacked free states (requires_grad)
  + `torch.autograd.grad` of <f(s), v> w.r.t. them, at this batch, timed T times back to back
  right after each step; ratio = median over steps of relaxation / (T x c), within the claim when
  <= 1.15 (timer noise); the same ratio in the process's CPU time is printed beside it (other
  jobs holding the cores do not inflate it). The relaxation's other pieces are timed alone the same way (the energy's
  other terms + state update, readout + CE, weight stacking, the final errors; the loop at batch 1
  for the cost that does not shrink with the batch), and torch.profiler's table of `relax` is
  printed when the ratio is above 1.15 (or with --profile).
Per-epoch work (the cosine step, the trace's evaluation) is in neither loop.

Hardware: written for, and its targets set on, the project's 2-core CPU machines (AMD EPYC,
torch 2.13 CPU build, 2 threads); on CUDA it synchronises before every clock read.

How to read the numbers:
- ms/step is the median over interleaved rounds (each case, the matmul floor included, runs
  ceil(steps / rounds) steps per round, the cases taking turns), so a burst of load from another
  job hits every case alike. The "rounds min-max" column shows how busy the machine was; when a
  case's slowest round is over 1.5x its fastest, a WARNING says the numbers are not final.
  Ratios are seed-style ms / trainer ms within one run (the best-round ratio is printed beside).
- utilisation = floor / step time = (3 x forward FLOPs per sample x samples per step / seconds
  per step) / measured matmul rate; forward FLOPs per sample = 2*3072*d + 4*d^2*L + 2*d*C. The
  FLOPs a BP step executes (`flops["per_sample"]`: no input grad of the embed) are 0.8x that.
- Targets (d=256, L=4, batch 128): DFA >= 2.5x and BP >= 1.5x the seed-style loop, each with the
  trainer at >= 0.6 utilisation. A missed target prints a profile of where the trainer's time goes
  (per part of a step, with each part's matmul floor, and torch.profiler's top ops); it is never
  met by weakening the baseline. Only numbers from a quiet machine count: on a shared one the
  absolute times are noise, the ratios less so.

Results (2-core AMD EPYC VM, torch 2.13 CPU, 2 threads; its speed varies with neighbours, so
two runs of the same code are given; ratios are stable, absolute times are not):
- 2026-11-21 23:35, load 0.7, matmul rate 138 GFLOP/s (floor 5.9 ms/step): BP 10.97 ms vs
  24.50 ms seed-style (2.23x, utilisation 0.53); DFA 12.02 ms vs 29.54 ms (2.46x, 0.49).
- 2026-11-22 01:00, load 1.0, matmul rate 60 GFLOP/s (floor 13.4 ms/step): BP 24.0 ms vs
  54.1 ms (2.25x, 0.56); DFA 26.0 ms vs 67.9 ms (2.61x, 0.52).
The step against the issue's floor (--floor-only): docs/measurements.md, "The step against the
matmul floor". Targets: BP >= 1.5x met; DFA >= 2.5x met in one run, 2.46x in the other; utilisation >= 0.6
missed (0.49-0.56). The profile: the step's matmuls run ~35% slower in the step than alone
(in-situ mm/addmm ~8 ms vs the 5.9 ms floor), and the rest is GELU (exact erf, fwd+bwd ~0.6 ms),
LayerNorm, the fused AdamW (~1 ms + ~0.5 ms Python), the crop gather (~0.8 ms). Already done:
device-resident pre-padded data with one gather per batch (3 ms -> 0.8 ms), fused AdamW
(6 ms -> 0.7 ms), DFA's credits in one einsum and its local losses in one reduction.

Not here: the trainer (fa_nb_utils/trainer.py), the rules (rules.py), the data path
(data/device.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

# The checkout's package, whatever is installed: run as a script, sys.path[0] is benchmarks/.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (add_common_args, metadata, parse_common,  # noqa: E402
                                finish, print_header, setup, sync, timed, with_threads)
from fa_nb_utils import ep as ep_module  # noqa: E402
from fa_nb_utils.data import cifar  # noqa: E402
from fa_nb_utils.data.device import PAD, DeviceData  # noqa: E402
from fa_nb_utils.ep import EPOptions  # noqa: E402
from fa_nb_utils.rules import (StackedBlocks, build_rule, local_forward, local_loss,  # noqa: E402
                               rule_label)
from fa_nb_utils.seeding import make_generator  # noqa: E402
from fa_nb_utils.config import TrainConfig, build_model, resolve_device  # noqa: E402
from fa_nb_utils.trainer import backward, make_optimizer, train, train_step  # noqa: E402

RULE_NAMES = ("bp", "dfa", "ep", "state_bridge", "credit_bridge")  # timed interleaved
BRIDGES = ("state_bridge", "credit_bridge")
SEED_STYLE_RULES = ("bp", "dfa")        # the ones the original scripts train (EP: none, no ratio)
LOOPS = ("trainer", "seed_style")
# EP's claim: the relaxation costs no more than T x (one forward + one state backward of the
# blocks); a measured ratio up to this counts as within it (timer noise on a shared machine).
CLAIM_TOLERANCE = 1.15
# The targets, valid at the recipe's shapes only.
TARGET_SHAPE = {"d": 256, "blocks": 4, "batch": 128}
RATIO_TARGETS = {"bp": 1.5, "dfa": 2.5}
UTILISATION_TARGET = 0.6
FLOOR_TARGET = 0.75   # the issue's: BP's and DFA's 1-epoch step >= 0.75 of the matmul floor
NOISY_SPREAD = 1.5  # slowest / fastest round of one case above this: the machine was busy
QUICK = {"d": 32, "blocks": 2, "batch": 32, "steps": 4, "warmup": 1, "rounds": 2,
         "n_train": 500, "n_test": 1280, "floor_rounds": 2}


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


class SeedStyleCifar(Dataset):
    """torchvision's CIFAR10 + RandomCrop(32, 4) + RandomHorizontalFlip + ToTensor + Normalize,
    one image per `__getitem__`, with torch ops on the raw uint8 (3, 32, 32) pixels.

    Padding is with raw pixel 0 before normalising, as RandomCrop on a PIL image does. Random draws
    are torchvision's (randint for the crop offsets, rand(1) < 0.5 for the flip), from `generator`
    (seeded like the trainer's augmentation stream) instead of the global RNG.
    """

    def __init__(self, images, labels, generator: torch.Generator):
        self.images = torch.from_numpy(images)          # uint8 (N, 3, 32, 32), as stored
        self.targets = [int(c) for c in labels]         # a list of ints, as torchvision keeps them
        self.mean = torch.tensor(cifar.CIFAR_MEAN).view(3, 1, 1)
        self.std = torch.tensor(cifar.CIFAR_STD).view(3, 1, 1)
        self.generator = generator

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        img = self.images[index]
        h, w = img.shape[-2:]
        img = F.pad(img, (PAD, PAD, PAD, PAD))                              # RandomCrop: pad ...
        i = int(torch.randint(0, 2 * PAD + 1, (1,), generator=self.generator))
        j = int(torch.randint(0, 2 * PAD + 1, (1,), generator=self.generator))
        img = img[:, i:i + h, j:j + w]                                      # ... and crop
        if torch.rand(1, generator=self.generator) < 0.5:                   # RandomHorizontalFlip
            img = img.flip(-1)
        x = img.float().div(255)                                            # ToTensor
        x = x.sub_(self.mean).div_(self.std)                                # Normalize
        return x, self.targets[index]


def _forever(make_epoch: Callable[[], Iterator]) -> Iterator:
    """Batches across epoch boundaries; starting an epoch is part of the step that needs it."""
    while True:
        yield from make_epoch()


# ---------------------------------------------------------------------------------------------
# The cases: each `step()` does one training step, batch fetch included, and returns its size
# ---------------------------------------------------------------------------------------------
class TrainerCase:
    """One step of `fa_nb_utils.trainer.train`'s inner loop, verbatim."""

    def __init__(self, rule_name: str, config: TrainConfig, data: DeviceData, device):
        self.config = config
        self.model = build_model(config, data).to(device)
        self.rule = build_rule(rule_name, self.model, config.rule_options,
                               make_generator(config.seed, "feedback")).to(device)
        self.opt = make_optimizer(self.model, self.rule, config)
        order_gen = make_generator(config.seed, "data_order")
        aug_gen = make_generator(config.seed, "augment", device=device)
        self.batches = _forever(lambda: data.train_batches(config.batch_size, order_gen, aug_gen))
        self.loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        self.n_seen = 0
        self.model.train()

    def step(self) -> int:
        x, y = next(self.batches)
        out = train_step(self.model, self.rule, self.opt, x, y, self.config)
        self.loss_sum += F.cross_entropy(out.logits, y, reduction="sum").double()
        self.n_seen += len(y)
        return len(y)


class SeedStyleCase:
    """The seed-style loop: DataLoader batches, then the original worked example's per-block DFA
    step or the usual BP step."""

    def __init__(self, rule_name: str, config: TrainConfig, data: DeviceData,
                 arrays: cifar.CifarArrays, device, feedback: torch.Tensor):
        self.rule_name, self.device = rule_name, device
        self.model = build_model(config, data).to(device)   # the trainer's init, same seed
        dataset = SeedStyleCifar(arrays.train_x, arrays.train_y,
                                 make_generator(config.seed, "augment"))
        loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True, num_workers=0,
                            generator=make_generator(config.seed, "data_order"))
        self.batches = _forever(lambda: iter(loader))
        adamw = lambda params: torch.optim.AdamW(params, lr=config.lr,
                                                 weight_decay=config.weight_decay)
        m = self.model
        if rule_name == "bp":
            self.opt = adamw(m.parameters())
        else:
            self.Bs = feedback.to(device)                      # (L, d, C): the trainer's DFA's
            self.opts = [adamw(b.parameters()) for b in m.blocks]
            self.embed_opt = adamw(m.embed.parameters())
            self.head_opt = adamw(list(m.out_head.parameters()) + list(m.out_ln.parameters()))
        m.train()

    def step(self) -> int:
        x, y = next(self.batches)
        x = x.view(x.size(0), -1).to(self.device); y = y.to(self.device)
        self.train_on(x, y)
        return len(y)

    def train_on(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """One update on a flattened batch (B, 3072)."""
        if self.rule_name == "bp":
            self.opt.zero_grad()
            F.cross_entropy(self.model(x), y).backward()
            self.opt.step()
        else:
            self._dfa_step(x, y)

    def _dfa_step(self, x, y) -> None:
        # one step of the original worked example's DFA epoch, unnormalised credits (the default)
        model, Bs = self.model, self.Bs
        with torch.no_grad():
            logits, hiddens = model(x, return_hidden=True)
        e_T = logits.softmax(-1); e_T[torch.arange(x.size(0)), y] -= 1
        self.head_opt.zero_grad()
        F.cross_entropy(model.out_head(model.out_ln(hiddens[-1].detach())), y).backward()
        self.head_opt.step()
        for l in range(model.num_blocks):
            h_l = hiddens[l].detach()
            a = (e_T @ Bs[l].T).detach()
            f = model.blocks[l](h_l)
            loss = (f * a).sum(-1).mean()
            self.opts[l].zero_grad(); loss.backward(); self.opts[l].step()
        a0 = (e_T @ Bs[0].T).detach()
        h0 = model.embed(x)
        self.embed_opt.zero_grad()
        (h0 * a0).sum(-1).mean().backward()
        self.embed_opt.step()


# ---------------------------------------------------------------------------------------------
# FLOPs and the matmul rate at the model's shapes
# ---------------------------------------------------------------------------------------------
def model_flops(input_dim: int, d: int, blocks: int, classes: int) -> dict:
    embed, body, head = 4 * input_dim * d, 12 * d * d * blocks, 6 * d * classes
    forward = 2 * input_dim * d + 4 * d * d * blocks + 2 * d * classes
    return {"per_sample": embed + body + head, "embed": embed, "blocks": body, "head": head,
            "forward_per_sample": forward, "floor_per_sample": 3 * forward,
            "formula": (f"4*{input_dim}*{d} + 12*{d}^2*{blocks} + 6*{d}*{classes} = "
                        f"{embed:,} + {body:,} + {head:,} = {embed + body + head:,}")}


class MatmulCase:
    """The matmul rate at the step's own shapes (the issue's measure): the embed's forward
    (B x D)@(D x d), its transposed product with a (B x d) (the embed's weight grad) and the
    blocks' 2L forward (B x d)@(d x d), fp32, on random data, timed together."""

    def __init__(self, batch: int, input_dim: int, d: int, blocks: int, classes: int, device):
        g = torch.Generator().manual_seed(0)
        r = lambda *s: torch.randn(*s, generator=g).to(device)
        x, we, be = r(batch, input_dim), r(d, input_dim), r(d)
        h, w, b, gd = r(batch, d), r(d, d), r(d), r(batch, d)
        f = lambda m, k, n: 2 * m * k * n
        # (name, shape, fn, flops per call, calls per step)
        self.ops = [
            ("embed forward", f"({batch}x{input_dim})@({input_dim}x{d})",
             lambda: torch.addmm(be, x, we.t()), f(batch, input_dim, d), 1),
            ("embed weight grad", f"({input_dim}x{batch})@({batch}x{d})",
             lambda: x.t().mm(gd), f(input_dim, batch, d), 1),
            ("block forward", f"({batch}x{d})@({d}x{d})",
             lambda: torch.addmm(b, h, w.t()), f(batch, d, d), 2 * blocks),
        ]
        self.batch = batch
        self.flops_per_step = sum(fl * n for *_, fl, n in self.ops)

    def step(self) -> int:
        for *_, fn, _, n in self.ops:
            for _ in range(n):
                fn()
        return self.batch

    def per_shape(self, device, reps: int = 7, min_s: float = 0.02) -> list[dict]:
        """Each shape on its own: median over `reps` timings of a loop lasting >= min_s."""
        out = []
        for name, shape, fn, flops, n in self.ops:
            fn(); sync(device)
            inner = 1
            while True:
                t = timed(lambda: [fn() for _ in range(inner)], device)
                if t >= min_s or inner >= 1 << 14:
                    break
                inner *= 2
            secs = statistics.median(timed(lambda: [fn() for _ in range(inner)], device) / inner
                                     for _ in range(reps))
            out.append({"name": name, "shape": shape, "calls_per_step": n, "flops": flops,
                        "us": secs * 1e6, "gflops": flops / secs / 1e9})
        return out


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------
def floor_fraction(args, source: str, data: DeviceData, arrays, matmuls: "MatmulCase",
                   flops: dict, device) -> dict:
    """The step against the matmul floor, the issue's way: 1-epoch `train` runs of BP and DFA
    (augmented, and with augment=False beside them) on the bench's data, a step's time = the
    trace's `seconds` / steps per epoch, in `--floor-rounds` rounds, each round timing the matmul
    rate (median of 20 x MatmulCase) and then every run once. Fraction = floor / step, per round;
    medians over the rounds."""
    plain = DeviceData.from_cifar(arrays, device=device, augment=False, name=source)
    runs = {(rule, aug): TrainConfig(rule=rule, seed=args.seed, data=source, d_hidden=args.d,
                                     num_blocks=args.blocks, batch_size=args.batch, epochs=1,
                                     augment=aug, eval_batches=1, eval_batch_size=128,
                                     device=str(device), progress=False)
            for rule in SEED_STYLE_RULES for aug in (True, False)}
    steps = data.steps_per_epoch(args.batch)
    one = lambda cfg: train(cfg, data if cfg.augment else plain).trace[-1]["seconds"] / steps
    for cfg in runs.values():       # warm-up
        one(cfg)
    floor_ms, step_ms = [], {k: [] for k in runs}
    for _ in range(args.floor_rounds):
        rate = matmuls.flops_per_step / statistics.median(
            timed(matmuls.step, device) for _ in range(20))
        floor_ms.append(flops["floor_per_sample"] * args.batch / rate * 1e3)
        for key, cfg in runs.items():
            step_ms[key].append(one(cfg) * 1e3)
    med = statistics.median
    out = {"floor_ms_rounds": floor_ms, "floor_ms": med(floor_ms), "steps_per_epoch": steps,
           "target": FLOOR_TARGET, "runs": {}}
    for (rule, aug), ms in step_ms.items():
        out["runs"][f"{rule}{'' if aug else '/no_augment'}"] = {
            "ms_per_step": med(ms), "ms_per_step_rounds": ms,
            "fraction": med(f / m for f, m in zip(floor_ms, ms))}
    return out




def run_rounds(cases: dict, steps: int, warmup: int, rounds: int, device) -> dict:
    """Warm every case up, then time `rounds` rounds of ceil(steps / rounds) steps per case, the
    cases taking turns within each round, so that load from other jobs falls on all of them."""
    per_round = -(-steps // rounds)
    for case in cases.values():
        for _ in range(warmup):
            case.step()
    sync(device)
    times = {k: [] for k in cases}
    samples = {k: [] for k in cases}
    gc.collect()
    for _ in range(rounds):
        for key, case in cases.items():
            sync(device)
            t0 = time.perf_counter()
            n = sum(case.step() for _ in range(per_round))
            sync(device)
            times[key].append((time.perf_counter() - t0) / per_round)
            samples[key].append(n / per_round)
    return {k: {"round_s_per_step": times[k], "round_samples_per_step": samples[k],
                "steps_per_round": per_round} for k in cases}


def summarise(timing: dict, flops_per_sample: int, rate: float) -> dict:
    s = timing["round_s_per_step"]
    med = statistics.median(s)
    samples = statistics.median(timing["round_samples_per_step"])
    return {"ms_per_step": med * 1e3, "steps_per_s": 1.0 / med,
            "ms_min": min(s) * 1e3, "ms_max": max(s) * 1e3,
            "ms_per_step_rounds": [t * 1e3 for t in s],
            "utilisation": flops_per_sample * samples / med / rate,
            "model_gflops": flops_per_sample * samples / med / 1e9}


# ---------------------------------------------------------------------------------------------
# Where the trainer's time goes
# ---------------------------------------------------------------------------------------------
def profile_trainer(case: TrainerCase, matmuls: MatmulCase, steps: int, device, flops: dict,
                    batch: int, top_ops: bool) -> dict:
    """train's per-step work cut into parts, each timed with a clock read (and a sync) between
    them; medians over `steps` steps. Floors are each part's model FLOPs at the matmul rate,
    re-measured between the profiled steps so that both see the same load."""
    parts = {"batch slicing + augmentation": [], "forward (rule.step_loss)": [],
             "backward (zero_grad + backward)": [], "optimizer step": [],
             "the rest (train-loss sum, loop)": []}
    cfg, floor = case.config, []
    for _ in range(steps):
        clocks = [_now(device)]
        x, y = next(case.batches); clocks.append(_now(device))
        out = case.rule.step_loss(case.model, x, y, penalty_lambda=cfg.penalty_lambda,
                                  frozen_blocks=cfg.freeze_blocks); clocks.append(_now(device))
        backward(out.loss, case.opt); clocks.append(_now(device))
        case.opt.step(); clocks.append(_now(device))
        case.loss_sum += F.cross_entropy(out.logits, y, reduction="sum").double()
        case.n_seen += len(y); clocks.append(_now(device))
        for name, t0, t1 in zip(parts, clocks, clocks[1:]):
            parts[name].append(t1 - t0)
        floor.append(timed(matmuls.step, device))
    rate = matmuls.flops_per_step / statistics.median(floor)
    fwd = flops["forward_per_sample"] * batch
    floors = {"forward (rule.step_loss)": fwd,
              "backward (zero_grad + backward)": flops["floor_per_sample"] * batch - fwd}
    result = {"parts": {name: {"ms": statistics.median(v) * 1e3,
                               "floor_ms": floors[name] / rate * 1e3 if name in floors else None}
                        for name, v in parts.items()}}
    result["sum_ms"] = sum(p["ms"] for p in result["parts"].values())
    result["floor_ms"] = flops["floor_per_sample"] * batch / rate * 1e3
    result["steps"] = steps
    if top_ops:
        from torch.profiler import ProfilerActivity, profile
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            for _ in range(steps):
                case.step()
            sync(device)
        result["top_ops"] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
        result["top_ops_steps"] = steps
    return result


def _now(device) -> float:
    sync(device)
    return time.perf_counter()


def _cpu(device) -> float:
    """CPU seconds of this process, all its threads (time the cores were not ours is not in it)."""
    sync(device)
    return time.process_time()


# ---------------------------------------------------------------------------------------------
# Where EP's time goes, and the relaxation against T x (one forward + one state backward)
# ---------------------------------------------------------------------------------------------
EP_PARTS = ("batch slicing + augmentation", "free forward (local_forward)",
            "relaxation (T steps)", "credits (-eps / beta)", "local losses + backward",
            "optimizer step", "the rest (train-loss sum)")


def relaxation_flops(d: int, blocks: int, classes: int, steps: int) -> dict:
    """Matmul FLOPs per sample of one relaxation (one `relax` call): per step but the first (the
    readout only) the blocks' forward and state VJP (8 d^2 L; no weight grads), per step the
    readout's forward and input grad (4 d C); once the free branches before the loop and the
    prediction errors' forward after it (4 d^2 L each)."""
    blocks_fv, head = 8 * d * d * blocks, 4 * d * classes
    return {"blocks_forward_vjp": blocks_fv, "readout_forward_vjp": head,
            "free_and_final_branches": 8 * d * d * blocks, "total": steps * (blocks_fv + head)}


class _RelaxClock:
    """While active, `fa_nb_utils.ep.relax` (which `EP.credits_from_states` calls) is wrapped so
    that the seconds spent inside it (wall and process CPU) are summed: the breakdown times the
    rule's own code."""

    def __init__(self, device):
        self.device, self.seconds, self.cpu_seconds, self.calls = device, 0.0, 0.0, 0

    def __enter__(self):
        self._relax = relax = ep_module.relax

        def timed_relax(*args, **kwargs):
            c0, t0 = _cpu(self.device), _now(self.device)
            out = relax(*args, **kwargs)
            self.seconds += _now(self.device) - t0
            self.cpu_seconds += _cpu(self.device) - c0
            self.calls += 1
            return out

        ep_module.relax = timed_relax
        return self

    def __exit__(self, *exc):
        ep_module.relax = self._relax


def ep_step_parts(case: TrainerCase, device) -> tuple[dict, object, torch.Tensor, _RelaxClock]:
    """One step of `train_step` with the EP rule, cut at its parts (`EP.step_loss` is local_forward,
    credits_from_states (relax inside), local_loss); returns (seconds per part, the free forward,
    y, the relax clock: calls, wall and CPU seconds). Updates the model exactly as `case.step()`
    would (tested)."""
    cfg, model, rule = case.config, case.model, case.rule
    t = [_now(device)]
    x, y = next(case.batches); t.append(_now(device))
    fwd = local_forward(model, x); t.append(_now(device))
    with _RelaxClock(device) as rc:
        credits = rule.credits_from_states(model, fwd.hiddens, y)
    t.append(_now(device))
    loss = local_loss(fwd, y, credits, penalty_lambda=cfg.penalty_lambda,
                      frozen_blocks=cfg.freeze_blocks)
    backward(loss, case.opt); t.append(_now(device))
    case.opt.step(); t.append(_now(device))
    case.loss_sum += F.cross_entropy(fwd.logits.detach(), y, reduction="sum").double()
    case.n_seen += len(y); t.append(_now(device))
    d = [b - a for a, b in zip(t, t[1:])]
    secs = dict(zip(EP_PARTS, [d[0], d[1], rc.seconds, d[2] - rc.seconds, d[3], d[4], d[5]]))
    return secs, fwd, y, rc


def _relax_iteration(model, branches, hf, f_free, d, v, y, opts: EPOptions,
                     readout: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of `ep.relax`'s loop after its first, verbatim (readout=False leaves out beta *
    CE): the next (displacements, velocity)."""
    d = d.detach().requires_grad_(True)
    e0, rest = ep_module.displacement_errors(model, branches, hf, f_free, d)
    objective = 0.5 * (e0.pow(2).sum() + rest.pow(2).sum())
    if readout:
        objective = objective + opts.beta * F.cross_entropy(model.readout(hf[-1] + d[-1]), y,
                                                            reduction="sum")
    (grad,) = torch.autograd.grad(objective, d)
    v = opts.momentum * v - opts.step_size * grad
    return d.detach() + v, v


def _blocks_forward_vjp(branches: StackedBlocks, s0: torch.Tensor, v: torch.Tensor, T: int):
    """T x c: T times, the forward of all blocks on the stacked states (requires_grad) and
    `torch.autograd.grad` of <f(s), v> w.r.t. the states (one state backward)."""
    with torch.enable_grad():
        for _ in range(T):
            s = s0.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(branches(s[:-1]), s, grad_outputs=v)
    return g


def relaxation_reference(model, free: list[torch.Tensor], y: torch.Tensor, opts: EPOptions,
                         device) -> dict:
    """Seconds of one relaxation's pieces, each timed alone on these free states (T = opts.steps):
    - "stack": weight stacking (`StackedBlocks`), stacking the states and their free branches,
      once per `relax` call;
    - "blocks_T": T back-to-back (forward of all blocks on the stacked states with requires_grad,
      then `torch.autograd.grad` of <f(s), v> w.r.t. the states): T x c, the claim's reference;
    - "energy_T": T steps of relax's loop without the readout + CE term;
    - "loop_T": T steps of relax's loop as it is (energy + beta CE, grad, state update);
    - "final": the no-grad prediction errors after the loop, once per call;
    - "blocks_T_cpu", "energy_T_cpu", "loop_T_cpu": the process's CPU seconds of those three."""
    T = opts.steps
    out = {}
    with torch.no_grad():
        c0 = _now(device)
        branches = StackedBlocks(model)
        s0 = torch.stack([h.detach() for h in free])
        f_free = branches(s0[:-1])
        out["stack"] = _now(device) - c0
        v = torch.randn_like(s0[:-1])
    p0, c0 = _cpu(device), _now(device)
    _blocks_forward_vjp(branches, s0, v, T)
    out["blocks_T"] = _now(device) - c0
    out["blocks_T_cpu"] = _cpu(device) - p0
    with torch.enable_grad():
        for key, readout in (("energy_T", False), ("loop_T", True)):
            d = v = torch.zeros_like(s0)
            p0, c0 = _cpu(device), _now(device)
            for _ in range(T):
                d, v = _relax_iteration(model, branches, s0, f_free, d, v, y, opts, readout)
            out[key] = _now(device) - c0
            out[f"{key}_cpu"] = _cpu(device) - p0
    with torch.no_grad():
        c0 = _now(device)
        e0, rest = ep_module.displacement_errors(model, branches, s0, f_free, d)
        _ = torch.cat([e0[None], rest])
        out["final"] = _now(device) - c0
    return out


def profile_ep(case: TrainerCase, matmuls: MatmulCase, steps: int, device, flops: dict,
               relax_flops: dict, batch: int, top_ops: bool | None) -> dict:
    """EP's step cut into parts (median over `steps` steps, a clock read + sync between parts),
    and after each step the relaxation's reference pieces (`relaxation_reference`, at this batch
    and at batch 1) and the matmul floor, so that all see the same load. top_ops: None = only
    when the relaxation is above the claim."""
    opts = case.rule.options
    if not StackedBlocks.fits(case.model):
        raise ValueError("EP's breakdown needs the stacked relaxation (blocks with ln, fc1, fc2)")
    parts = {name: [] for name in EP_PARTS}
    ref, ref1 = {}, {}
    floor, calls, relax_cpu = [], set(), []
    for _ in range(steps):
        secs, fwd, y, rc = ep_step_parts(case, device)
        calls.add(rc.calls)
        relax_cpu.append(rc.cpu_seconds / rc.calls)
        for name, v in secs.items():
            parts[name].append(v)
        free = [h.detach() for h in fwd.hiddens]
        for k, v in relaxation_reference(case.model, free, y, opts, device).items():
            ref.setdefault(k, []).append(v)
        for k, v in relaxation_reference(case.model, [h[:1] for h in free], y[:1], opts,
                                         device).items():
            ref1.setdefault(k, []).append(v)
        floor.append(timed(matmuls.step, device))
    (n_calls,) = calls
    med = lambda v: statistics.median(v) * 1e3
    rate = matmuls.flops_per_step / statistics.median(floor)
    T = opts.steps
    floors = {"free forward (local_forward)": flops["forward_per_sample"] * batch / rate * 1e3,
              "relaxation (T steps)": n_calls * relax_flops["total"] * batch / rate * 1e3}
    result = {"parts": {name: {"ms": med(v), "floor_ms": floors.get(name)}
                        for name, v in parts.items()}, "steps": steps}
    result["sum_ms"] = sum(p["ms"] for p in result["parts"].values())
    result["floor_ms"] = flops["floor_per_sample"] * batch / rate * 1e3

    relax_ms = result["parts"]["relaxation (T steps)"]["ms"] / n_calls   # per relax call
    r = {k: med(v) for k, v in ref.items()}
    r1 = {k: med(v) for k, v in ref1.items()}
    c = r["blocks_T"] / T
    # the headline ratio pairs each step's relaxation with the T x c timed right after it (load
    # from other jobs drifts slowly, so a pair sees about the same), median over the steps
    per_call = [v / n_calls for v in parts["relaxation (T steps)"]]
    ratio = statistics.median(a / b for a, b in zip(per_call, ref["blocks_T"]))
    # the same in the process's CPU time: other jobs holding the cores do not inflate it (the
    # intra-op threads' waiting is in it), a check on the wall-clock ratio under load
    ratio_cpu = (statistics.median(a / b for a, b in zip(relax_cpu, ref["blocks_T_cpu"]))
                 if device.type == "cpu" else None)
    extra = {
        "T x blocks' forward + state backward (T x c, the reference)": r["blocks_T"],
        "T x the energy's other terms (residual add, errors, squares, sums; their backward), "
        "the state update, detach": r["energy_T"] - r["blocks_T"],
        "T x readout + CE inside the loop (out_ln, out_head, CE; their backward)":
            r["loop_T"] - r["energy_T"],
        "once per call: weight stacking (StackedBlocks) + stacking the states": r["stack"],
        "once per call: the no-grad prediction errors after the loop": r["final"],
    }
    extra["unaccounted (relaxation measured in the step - the pieces above; timer noise, "
          "caches)"] = relax_ms - sum(extra.values())
    within = ratio <= CLAIM_TOLERANCE
    result["relaxation"] = {
        "claim": "the relaxation loop costs no more than T x (one forward + one state backward) "
                 "of the blocks",
        "T": T, "relax_calls_per_step": n_calls, "ms_per_call": relax_ms,
        "c_ms": c, "T_times_c_ms": r["blocks_T"],
        "c_floor_ms": relax_flops["blocks_forward_vjp"] * batch / rate * 1e3,
        "ratio": ratio, "ratio_of_medians": relax_ms / r["blocks_T"],
        "ratio_fastest": min(per_call) / min(ref["blocks_T"]),
        "ratio_cpu_time": ratio_cpu,
        "loop_alone_ratio_cpu_time": (statistics.median(
            a / b for a, b in zip(ref["loop_T_cpu"], ref["blocks_T_cpu"]))
            if device.type == "cpu" else None),
        "ms_per_call_steps": [v * 1e3 for v in per_call],
        "T_times_c_ms_steps": [v * 1e3 for v in ref["blocks_T"]],
        "tolerance": CLAIM_TOLERANCE, "within_claim": within,
        "excess_ms": relax_ms - r["blocks_T"], "excess_pct": 100 * (ratio - 1),
        "loop_alone_ratio": r["loop_T"] / r["blocks_T"],
        "pieces_ms": {k: v for k, v in r.items() if not k.endswith("_cpu")},
        "extra_ms": extra,
        "batch1_ms": {"blocks_T": r1["blocks_T"], "energy_T": r1["energy_T"],
                      "loop_T": r1["loop_T"], "stack": r1["stack"], "final": r1["final"],
                      "note": "the same pieces on one sample: what the loop costs with next to "
                              "no arithmetic (Python, dispatch, autograd bookkeeping, reading "
                              "the weights)"},
    }
    if top_ops or (top_ops is None and not within):
        from torch.profiler import ProfilerActivity, profile
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        n = min(3, steps)
        with profile(activities=activities) as prof:
            for _ in range(n):
                ep_module.relax(case.model, free, y, opts.beta, T, opts.step_size, opts.momentum)
            sync(device)
        with torch.no_grad():
            branches = StackedBlocks(case.model)
            s0 = torch.stack(free)
            v = torch.randn_like(s0[:-1])
        with profile(activities=activities) as prof_ref:
            for _ in range(n):
                _blocks_forward_vjp(branches, s0, v, T)
            sync(device)
        q = result["relaxation"]
        q["top_ops"] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
        q["top_ops_calls"] = n
        q["ops_vs_reference"] = ops_vs_reference(prof, prof_ref, n, T)
    return result


def ops_vs_reference(prof, prof_ref, calls: int, T: int, rows: int = 12) -> dict:
    """Per relaxation step, each aten op's calls and self CPU ms in `relax` against the reference
    (T x c): the ops the loop adds beyond one forward + one state backward of the blocks, largest
    extra self time first. Under the profiler (its own overhead included)."""
    def table(p):
        return {e.key: (e.count, e.self_cpu_time_total / 1e3) for e in p.key_averages()
                if e.key.startswith("aten::")}
    a, b = table(prof), table(prof_ref)
    steps = calls * T
    ops = []
    for key in set(a) | set(b):
        (na, ta), (nb, tb) = a.get(key, (0, 0.0)), b.get(key, (0, 0.0))
        ops.append({"op": key, "calls_loop": na / steps, "calls_reference": nb / steps,
                    "self_ms_loop": ta / steps, "self_ms_reference": tb / steps,
                    "extra_self_ms": (ta - tb) / steps})
    ops.sort(key=lambda o: -o["extra_self_ms"])
    return {"per": "relaxation step (one of T)", "aten_calls_loop": sum(n for n, _ in a.values()) / steps,
            "aten_calls_reference": sum(n for n, _ in b.values()) / steps,
            "self_ms_loop": sum(t for _, t in a.values()) / steps,
            "self_ms_reference": sum(t for _, t in b.values()) / steps, "top": ops[:rows]}


# ---------------------------------------------------------------------------------------------
# Metadata and the report
# ---------------------------------------------------------------------------------------------




def _fmt_table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).rjust(w) if i > 1 else str(c).ljust(w)
                               for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def print_floor(res: dict) -> None:
    f, cfg, fl = res["floor"], res["config"], res["flops"]
    print(f"the floor: 3 x the forward's matmul FLOPs ({fl['floor_per_sample'] * cfg['batch'] / 1e9:.3f}"
          f" GFLOP a step of {cfg['batch']}) at the matmul rate of the step's own shapes: "
          f"{f['floor_ms']:.2f} ms (rounds {', '.join(f'{v:.2f}' for v in f['floor_ms_rounds'])})")
    print(f"1-epoch train() runs ({f['steps_per_epoch']} steps; trace seconds / steps), "
          f"{len(f['floor_ms_rounds'])} rounds interleaved with the rate:")
    rows = [[name, f"{r['ms_per_step']:.2f}", ", ".join(f"{v:.2f}" for v in r["ms_per_step_rounds"]),
             f"{r['fraction']:.2f}"] for name, r in f["runs"].items()]
    print(_fmt_table(rows, ["run", "ms/step", "rounds", "fraction of the floor"]))
    for rule in SEED_STYLE_RULES:
        q = f["runs"][rule]["fraction"]
        print(f"{rule_label(rule):>3}: {q:.2f} of the floor (target >= {f['target']}): "
              f"{'PASS' if q >= f['target'] else 'MISS'}")


def print_report(res: dict) -> None:
    meta, cfg, fl = res["metadata"], res["config"], res["flops"]
    print_header("trainer benchmark", meta)
    d = cfg["data"]
    print(f"data: {d['source']} ({d['num_train']:,} train images, 3x32x32 uint8 -> float32; "
          f"{d['note']})")
    print_floor(res)
    if "results" not in res:   # --floor-only
        return
    mm = res["matmul"]
    print(f"model: d={cfg['d']}, L={cfg['blocks']}, C={cfg['classes']}, batch {cfg['batch']}; "
          f"{cfg['steps_per_round']} steps x {cfg['rounds']} rounds per case after "
          f"{cfg['warmup']} warm-up steps, cases interleaved; seed {cfg['seed']}")
    print()
    print(f"model FLOPs per sample = {fl['formula']}")
    print(f"  -> {fl['per_sample'] * cfg['batch'] / 1e9:.3f} GFLOP per step of {cfg['batch']}")
    print("matmul rate at the model's shapes (fp32, each shape alone, median):")
    print(_fmt_table([[o["name"], o["shape"], f"{o['calls_per_step']}", f"{o['us']:.1f}",
                       f"{o['gflops']:.1f}"] for o in mm["per_shape"]],
                     ["op", "shape", "calls/step", "us/call", "GFLOP/s"]))
    print(f"these matmuls back to back: {mm['rate_ms_per_step']:.2f} ms (median of rounds, "
          f"interleaved with the loops) -> matmul rate {mm['gflops']:.1f} GFLOP/s; floor "
          f"{mm['floor_ms_per_step']:.2f} ms (3 x the forward's FLOPs at that rate)")
    print()
    rows = []
    for rule in RULE_NAMES:
        for loop in LOOPS:
            r = res["results"][rule][loop]
            if r is None:   # EP, the bridges: no seed-style loop exists to time
                rows.append([rule, loop.replace("_", "-")] + ["—"] * 5)
                continue
            rows.append([rule, loop.replace("_", "-"), f"{r['ms_per_step']:.2f}",
                         f"{r['ms_min']:.1f}-{r['ms_max']:.1f}", f"{r['steps_per_s']:.1f}",
                         f"{r['model_gflops']:.1f}", f"{r['utilisation']:.2f}"])
    print(_fmt_table(rows, ["rule", "loop", "ms/step", "rounds min-max", "steps/s",
                            "3 x fwd GFLOP/s", "utilisation"]))
    if res["max_round_spread"] > NOISY_SPREAD:
        print(f"WARNING: the slowest round of a case took {res['max_round_spread']:.1f}x its "
              "fastest: other jobs were using the cores. These numbers are not final; retake "
              "them on a quiet machine.")
    print()
    for rule in SEED_STYLE_RULES:
        q = res["ratios"][rule]
        head = (f"{rule_label(rule):>3}: trainer is {q['ratio']:.2f}x the seed-style loop "
                f"({q['ratio_best_rounds']:.2f}x best round vs best round; target >= "
                f"{q['target']}x), utilisation {q['trainer_utilisation']:.2f} "
                f"(target >= {UTILISATION_TARGET})")
        if not q["judged"]:
            print(f"{head}: not judged (targets are for d={TARGET_SHAPE['d']}, "
                  f"L={TARGET_SHAPE['blocks']}, batch {TARGET_SHAPE['batch']})")
        else:
            print(f"{head}: {'PASS' if q['pass'] else 'MISS (' + ', '.join(q['missed']) + ')'}")
    ep = res["ep"]
    o = ep["options"]
    print(f" EP: no seed-style loop (the original scripts train no EP), so no ratio and no target; "
          f"beta {o['beta']}, T={o['steps']}, eta {o['step_size']}, {o['credit']} credit, "
          f"{o['nudge']} nudge: "
          + ", ".join(f"{v:.1f}x {rule_label(r)}'s ms/step" for r, v in ep["ms_per_step_vs"].items())
          + f"; counting the relaxation's matmuls too "
          f"({ep['flops_per_sample_with_relaxation'] / fl['per_sample']:.1f}x the model FLOPs), "
          f"utilisation {ep['utilisation_with_relaxation']:.2f}")
    for rule, b in res["bridges"].items():
        print(f"{rule_label(rule)}: no seed-style loop; " + ", ".join(
            f"{v:.2f}x {rule_label(r)}'s ms/step" for r, v in b["ms_per_step_vs"].items())
            + f" (options {b['options']})")
    if res["profile"]:
        for rule, p in res["profile"].items():
            trainer_ms = res["results"][rule]["trainer"]["ms_per_step"]
            print()
            print(f"where this trainer's {rule_label(rule)} step goes (median of {p['steps']} steps, "
                  f"a clock read (+ sync) between parts; the matmul floor re-measured between "
                  f"them; the whole step timed above: {trainer_ms:.2f} ms):")
            print(_parts_table(p, f"{p['floor_ms']:.2f}"))
            if "top_ops" in p:
                print(f"torch.profiler, {p['top_ops_steps']} whole steps, top 15 by self CPU time:")
                print(p["top_ops"])
    print_ep(res)


def _parts_table(p: dict, floor_sum: str) -> str:
    """A step's parts: ms, share of their sum, and each part's matmul floor."""
    rows = [[name, f"{v['ms']:.2f}", f"{100 * v['ms'] / p['sum_ms']:.0f}%",
             "" if v["floor_ms"] is None else f"{v['floor_ms']:.2f}"]
            for name, v in p["parts"].items()]
    rows.append(["sum of parts", f"{p['sum_ms']:.2f}", "100%", floor_sum])
    return _fmt_table(rows, ["part", "ms", "share", "matmul floor ms"])


def print_ep(res: dict) -> None:
    p = res["ep"]["breakdown"]
    q = p["relaxation"]
    ep_ms = res["results"]["ep"]["trainer"]["ms_per_step"]
    print()
    print(f"where this trainer's EP step goes (median of {p['steps']} steps, a clock read (+ sync) "
          f"between parts; the relaxation and its reference pieces re-measured after each step; "
          f"the whole step timed above: {ep_ms:.2f} ms):")
    print(_parts_table(p, ""))
    T = q["T"]
    per = "" if q["relax_calls_per_step"] == 1 else f" (per relax call; {q['relax_calls_per_step']} a step)"
    print()
    print(f"the claim: {q['claim']}.")
    print(f"  c = one forward of all {res['config']['blocks']} blocks (StackedBlocks) on the stacked "
          f"free states + torch.autograd.grad of <f(s), v> w.r.t. them, batch "
          f"{res['config']['batch']}: {q['c_ms']:.3f} ms (median of T={T} back to back; matmul "
          f"floor {q['c_floor_ms']:.3f} ms)")
    print(f"  relaxation measured in the step{per}: {q['ms_per_call']:.2f} ms vs T x c = "
          f"{q['T_times_c_ms']:.2f} ms -> ratio {q['ratio']:.2f} (median over the steps of each "
          f"relaxation / the T x c timed right after it; ratio of the medians "
          f"{q['ratio_of_medians']:.2f}, of the fastest {q['ratio_fastest']:.2f}; tolerance for "
          f"timer noise {q['tolerance']})")
    if q["ratio_cpu_time"] is not None:
        print(f"  in the process's CPU time (time.process_time: not inflated by other jobs holding "
              f"the cores): ratio {q['ratio_cpu_time']:.2f}; the loop alone "
              f"{q['loop_alone_ratio_cpu_time']:.2f}")
    if q["within_claim"]:
        print(f"  WITHIN the claim: ratio {q['ratio']:.2f} <= {q['tolerance']}")
    else:
        print(f"  ABOVE the claim: the relaxation costs {q['excess_pct']:.0f}% more than T x c "
              f"(ratio {q['ratio']:.2f} > {q['tolerance']}; +{q['excess_ms']:.2f} ms per call "
              "between the medians). "
              f"The loop alone (no stacking, no final errors) is {q['loop_alone_ratio']:.2f}x "
              "T x c.")
    print("  what the relaxation's time is made of (each piece timed alone on the same states, "
          "medians; ms per relax call):")
    rows = [[name, f"{v:.2f}", f"{100 * v / q['ms_per_call']:.0f}%"]
            for name, v in q["extra_ms"].items()]
    print("  " + _fmt_table(rows, ["piece", "ms", "of relaxation"]).replace("\n", "\n  "))
    b = q["batch1_ms"]
    print(f"  the same at batch 1 ({b['note']}): T steps of the loop {b['loop_T']:.2f} ms, "
          f"T x c {b['blocks_T']:.2f} ms: the loop's ops beyond the blocks' carry about "
          f"{b['loop_T'] - b['blocks_T']:.2f} ms per call of cost that does not shrink with the "
          "batch")
    if "top_ops" in q:
        o = q["ops_vs_reference"]
        print(f"torch.profiler, per relaxation step (of {q['top_ops_calls']} relax calls x T): "
              f"the loop dispatches {o['aten_calls_loop']:.0f} aten ops (all levels) for "
              f"{o['self_ms_loop']:.2f} ms self CPU, the reference (c) {o['aten_calls_reference']:.0f}"
              f" for {o['self_ms_reference']:.2f} ms; the ops adding most (calls and self ms per "
              "step, loop vs reference):")
        rows = [[r["op"], f"{r['calls_loop']:.1f}", f"{r['calls_reference']:.1f}",
                 f"{r['self_ms_loop']:.3f}", f"{r['self_ms_reference']:.3f}",
                 f"{r['extra_self_ms']:+.3f}"] for r in o["top"]]
        print(_fmt_table(rows, ["op", "calls loop", "calls ref", "self ms loop", "self ms ref",
                                "extra ms"]))
        print(f"torch.profiler, {q['top_ops_calls']} relax calls, top 15 by self CPU time:")
        print(q["top_ops"])


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python benchmarks/bench_train.py",
                                description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=60, help="timed steps per case (default 60)")
    p.add_argument("--rounds", type=int, default=12,
                   help="the timed steps are split into this many interleaved rounds (default 12)")
    add_common_args(p, TARGET_SHAPE, QUICK)
    p.add_argument("--ep-steps", type=int, default=None, metavar="T",
                   help=f"EP's relaxation steps T (default: EPOptions' {EPOptions().steps}); "
                        "beta and eta stay at their defaults")
    p.add_argument("--floor-rounds", type=int, default=3,
                   help="rounds of the 1-epoch runs against the floor (default %(default)s)")
    p.add_argument("--floor-only", action="store_true",
                   help="only the 1-epoch runs against the matmul floor (about 30 s quiet)")
    p.add_argument("--profile", action="store_true",
                   help="print the trainer's profile even when every target is met")
    p.add_argument("--no-top-ops", action="store_true", help="leave torch.profiler out of a profile")
    args = parse_common(p, argv, QUICK, ("steps", "rounds", "d", "batch", "n_train",
                                         "floor_rounds"))
    if args.ep_steps is not None and args.ep_steps < 1:
        p.error("--ep-steps must be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns every number it printed (the --json document)."""
    args = parse_args(argv)
    return with_threads(args.threads, lambda: _run(args))


def _config(args: argparse.Namespace, data: DeviceData, source: str) -> dict:
    return {"d": args.d, "blocks": args.blocks, "batch": args.batch, "classes": data.num_classes,
            "input_dim": data.input_dim, "steps": args.steps, "warmup": args.warmup,
            "rounds": args.rounds, "floor_rounds": args.floor_rounds, "seed": args.seed,
            "quick": args.quick,
            "data": {"source": source, "num_train": data.num_train, "fingerprint": data.fingerprint,
                     "note": ("real CIFAR-10 found on disk" if source == "cifar10" else
                              "CIFAR-10 not on disk: the synthetic set in its format, generated "
                              f"with n_train={args.n_train}")}}


def _run(args: argparse.Namespace) -> dict:
    device = resolve_device(args.device)
    load_start, arrays, source, data = setup(args, device)
    classes, input_dim = data.num_classes, data.input_dim
    ep_options = EPOptions() if args.ep_steps is None else EPOptions(steps=args.ep_steps)
    config = lambda rule: TrainConfig(rule=rule, seed=args.seed, data=source, d_hidden=args.d,
                                      num_blocks=args.blocks, batch_size=args.batch,
                                      device=str(device), progress=False,
                                      rule_options=(dataclasses.asdict(ep_options)
                                                    if rule == "ep" else {}))
    flops = model_flops(input_dim, args.d, args.blocks, classes)
    relax_flops = relaxation_flops(args.d, args.blocks, classes, ep_options.steps)

    matmuls = MatmulCase(args.batch, input_dim, args.d, args.blocks, classes, device)
    floor = floor_fraction(args, source, data, arrays, matmuls, flops, device)
    if args.floor_only:
        return finish({"metadata": metadata(device, load_start), "config": _config(args, data, source),
                       "flops": flops, "floor": floor}, args, print_report)
    cases: dict[str, object] = {}
    for rule in RULE_NAMES:
        trainer = TrainerCase(rule, config(rule), data, device)
        cases[f"{rule}/trainer"] = trainer
        if rule in SEED_STYLE_RULES:
            feedback = trainer.rule.feedback if rule == "dfa" else None
            cases[f"{rule}/seed_style"] = SeedStyleCase(rule, config(rule), data, arrays, device,
                                                        feedback)
    cases["matmul"] = matmuls

    per_shape = matmuls.per_shape(device, min_s=0.002 if args.quick else 0.02)
    timing = run_rounds(cases, args.steps, args.warmup, args.rounds, device)
    rate = matmuls.flops_per_step / statistics.median(timing["matmul"]["round_s_per_step"])
    floor_s = flops["floor_per_sample"] * args.batch / rate

    # EP has no seed-style loop: its row says so (None), nothing is invented in its place
    results = {rule: {loop: (summarise(timing[f"{rule}/{loop}"], flops["floor_per_sample"], rate)
                             if f"{rule}/{loop}" in timing else None)
                      for loop in LOOPS} for rule in RULE_NAMES}
    judged = (args.d, args.blocks, args.batch) == tuple(TARGET_SHAPE.values())
    spread = max(r["ms_max"] / r["ms_min"] for rr in results.values() for r in rr.values()
                 if r is not None)
    ratios = {}
    for rule in SEED_STYLE_RULES:
        t, s = results[rule]["trainer"], results[rule]["seed_style"]
        ratio = s["ms_per_step"] / t["ms_per_step"]
        ratio_best = s["ms_min"] / t["ms_min"]
        missed = ([f"ratio {ratio:.2f} < {RATIO_TARGETS[rule]}"] if ratio < RATIO_TARGETS[rule]
                  else []) + ([f"utilisation {t['utilisation']:.2f} < {UTILISATION_TARGET}"]
                              if t["utilisation"] < UTILISATION_TARGET else [])
        ratios[rule] = {"ratio": ratio, "ratio_best_rounds": ratio_best,
                        "target": RATIO_TARGETS[rule],
                        "trainer_utilisation": t["utilisation"],
                        "utilisation_target": UTILISATION_TARGET, "judged": judged,
                        "pass": (not missed) if judged else None, "missed": missed}

    to_profile = [r for r in SEED_STYLE_RULES if args.profile or ratios[r]["pass"] is False]
    profile = {}
    for rule in to_profile:
        n = max(args.steps // 2, 3)
        profile[rule] = profile_trainer(cases[f"{rule}/trainer"], matmuls, n, device, flops,
                                        args.batch, top_ops=not args.no_top_ops)
    # EP's breakdown and the relaxation's claim, always (torch.profiler's table of the
    # relaxation when it is above the claim, or with --profile)
    ep_ms = results["ep"]["trainer"]["ms_per_step"]
    ep = {"options": dataclasses.asdict(ep_options),
          "relaxation_flops_per_sample": relax_flops,
          "flops_per_sample_with_relaxation": flops["per_sample"] + relax_flops["total"],
          "utilisation_with_relaxation":
              (flops["per_sample"] + relax_flops["total"]) * args.batch / (ep_ms / 1e3) / rate,
          "ms_per_step_vs": {r: ep_ms / results[r]["trainer"]["ms_per_step"]
                             for r in SEED_STYLE_RULES},
          "breakdown": profile_ep(cases["ep/trainer"], matmuls, max(args.steps // 2, 3), device,
                                  flops, relax_flops, args.batch,
                                  top_ops=False if args.no_top_ops else (True if args.profile
                                                                          else None))}

    bridges = {rule: {"options": dataclasses.asdict(cases[f"{rule}/trainer"].rule.options),
                      "ms_per_step_vs": {r: results[rule]["trainer"]["ms_per_step"]
                                         / results[r]["trainer"]["ms_per_step"]
                                         for r in SEED_STYLE_RULES}}
               for rule in BRIDGES}

    res = {
        "metadata": metadata(device, load_start),
        "config": {**_config(args, data, source),
                   "steps_per_round": timing["matmul"]["steps_per_round"]},
        "flops": flops,
        "floor": floor,
        "matmul": {"gflops": rate / 1e9, "floor_ms_per_step": floor_s * 1e3,
                   "rate_ms_per_step": statistics.median(timing["matmul"]["round_s_per_step"]) * 1e3,
                   "flops_per_step": matmuls.flops_per_step, "per_shape": per_shape,
                   "ms_per_step_rounds": [t * 1e3 for t in timing["matmul"]["round_s_per_step"]]},
        "results": results,
        "max_round_spread": spread,
        "ratios": ratios,
        "profile": profile or None,
        "ep": ep,
        "bridges": bridges,
    }
    return finish(res, args, print_report)


if __name__ == "__main__":
    main()
