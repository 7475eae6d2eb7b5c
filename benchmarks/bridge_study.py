"""The bridges' options, measured: accuracy, credit direction against BP, cost, and warm-up.

    python benchmarks/bridge_study.py [--epochs 5] [--grid trim|full] [--json out.json]

State Bridge (`state_bridge`) and Credit Bridge (`credit_bridge`, fa_nb_utils/bridges.py) each
train a small auxiliary net beside the model. The paper publishes none of the nets' sizes,
learning rates, warm-up, Credit Bridge's sigma or its loss weights. This script measures, on the
synthetic data (or CIFAR-10 when it is on disk) at the paper's size (10,000 training images,
d=256, L=4, batch 128, seed 42, 2 CPU threads by default):

1. options: each rule trained `--epochs` epochs (the trainer's recipe: AdamW, cosine schedule
   over the run) on a small grid, beside BP and DFA. SB: hidden x lr_scale. CB: grad_weight
   (the last-layer gradient match against the consistency loss) in {1, 10, 100, 1000} at the
   other defaults, then, at grad_weight `--cb-grad-weight` (100), hidden x lr_scale at sigma
   0.1 and sigma in {0.03, 0.3} at the default hidden and lr_scale (`--grid full`: the whole
   hidden x sigma x lr_scale product at the default grad_weight and at that one). Per run: the
   final test accuracy, the first and last epoch's train loss, the mean per-sample cosine of the
   rule's credit with the exact per-sample BP gradient at every hidden state h_0 .. h_L on the
   protocol's eval batches after training (samples whose credit is exactly zero are counted
   and left out of the mean), and the max per-block growth max_l ||h_{l+1}|| / ||h_l|| of the
   residual norms (diagnostic (a)'s statistic, last trace entry). Then each bridge's
   frozen-blocks baseline at the defaults and at the chosen options (the most accurate grid
   point, or the defaults when within `--tie` of it);
2. cost: ms per training step (batch 128) for BP, DFA, SB and CB at their defaults,
   interleaved rounds, median;
3. warm-up: the bridges have none (the net trains from step 1, in the model's own step). The
   first epoch of the runs at the defaults and at the chosen options is replayed step by step
   (same generators and schedule as the trainer, checked against part 1's train loss and
   accuracy; `--replay-epochs` for more) to read the credit's cosine at steps 0, 5, 10, 20, 40
   and at the end of epoch 1, beside part 1's end of the run: how long the credit is poor, i.e.
   how much a warm-up (training the bridge alone first) could buy;
4. a longer horizon (`--long-epochs`, 20; 0 skips it): part 1's measures for BP, SB at the
   chosen options and CB at each grad_weight >= 100 of the grid (other options at their
   defaults, lr_scale as in the grid), since a credit that holds for 5 epochs may not hold
   once the residual norms have grown.

The results are the basis of the options' defaults in docs/rules.md (State Bridge, Credit Bridge).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_model, load_arrays, load_average, step_ms

from fa_nb_utils.alignment import per_sample_cosine
from fa_nb_utils.data import DeviceData
from fa_nb_utils.diagnostics import DIAGNOSTICS
from fa_nb_utils.io import write_json_atomic
from fa_nb_utils.measures import accuracy
from fa_nb_utils.rules import RULES, bp_credits, build_rule
from fa_nb_utils.seeding import make_generator
from fa_nb_utils.config import TrainConfig, build_model
from fa_nb_utils.trace import entry_reports
from fa_nb_utils.trainer import make_optimizer, train, train_step

SEED = 42
BRIDGES = ("state_bridge", "credit_bridge")
SHORT = {"bp": "BP", "dfa": "DFA", "state_bridge": "SB", "credit_bridge": "CB"}
PROBE_STEPS = (0, 5, 10, 20, 40)


def defaults(rule: str) -> dict:
    """The options the rule ships with (its Options dataclass), every field."""
    return dataclasses.asdict(RULES[rule].parse_options({}))


def grid(rule: str, full: bool, cb_grad_weight: float) -> list[dict]:
    """The options tried for `rule`; the defaults come first.

    SB: hidden x lr_scale. CB: grad_weight (the last-layer gradient match's weight against the
    consistency loss) at the other defaults, then, at grad_weight `cb_grad_weight`, hidden x
    lr_scale at sigma 0.1 and sigma at the default hidden and lr_scale (`full`: hidden x sigma x
    lr_scale at the default grad_weight and at `cb_grad_weight`)."""
    base = defaults(rule)
    if rule == "state_bridge":
        pts = [base] + [{**base, "hidden": h, "lr_scale": s}
                        for h in (256, 64) for s in (1.0, 3.0)]
    else:
        pts = [base] + [{**base, "grad_weight": gw} for gw in (1.0, 10.0, 100.0, 1000.0)]
        for gw in ((base["grad_weight"], cb_grad_weight) if full else (cb_grad_weight,)):
            if full:
                pts += [{**base, "hidden": h, "sigma": sg, "grad_weight": gw, "lr_scale": s}
                        for h in (256, 64) for sg in (0.1, 0.03, 0.3) for s in (1.0, 3.0)]
            else:
                pts += ([{**base, "hidden": h, "sigma": 0.1, "grad_weight": gw, "lr_scale": s}
                         for h in (256, 64) for s in (1.0, 3.0)]
                        + [{**base, "sigma": sg, "grad_weight": gw} for sg in (0.03, 0.3)])
    unique = []
    for o in pts:
        if o not in unique:
            unique.append(o)
    assert unique[0] == defaults(rule)
    return unique


def label(rule: str, opts: dict, frozen: bool = False) -> str:
    o = " ".join(f"{k}={v:g}" for k, v in opts.items())
    return f"{SHORT[rule]}{' ' + o if o else ''}{' frozen' if frozen else ''}"


def credit_cosines(rule, model, x, y) -> tuple[list[float], list[int]]:
    """Per hidden state: the mean over samples of cos(a_k, g_k), g_k the exact per-sample BP
    gradient (eps=0), and the number of samples left out of the mean because a_k or g_k is
    exactly zero there (cosine undefined; a credit net whose units are all saturated gives 0)."""
    g = bp_credits(model, x, y)
    a = rule.credits(model, x, y)
    cos, zero = [], []
    for ak, gk in zip(a, g):  # the protocol's own float64 cosine, no eps clamp
        c, excluded = per_sample_cosine(ak, gk)
        cos.append(float(c[~excluded].mean()) if (~excluded).any() else float("nan"))
        zero.append(int(excluded.sum()))
    return cos, zero


def fmt_cos(cos: list[float]) -> str:
    return " ".join(f"{v:+.3f}" for v in cos)


def run_one(data, source, rule, opts, epochs, x, y, frozen=False) -> dict:
    t0 = time.perf_counter()
    res = train(TrainConfig(rule=rule, rule_options=opts, data=source, epochs=epochs, seed=SEED,
                            freeze_blocks=frozen, progress=False), data=data)
    cos, zero = credit_cosines(res.rule, res.model, x, y)
    last, report = res.trace[-1], list(entry_reports(res.trace).values())[-1]
    return {"rule": rule, "options": opts, "frozen": frozen,
            "acc": last["acc_eval"], "first_loss": res.trace[1]["train_loss"],
            "last_loss": last["train_loss"], "cosine": cos, "cosine_zero_samples": zero,
            "cosine_mean": float(np.mean(cos)), "cosine_min": float(np.min(cos)),
            "max_block_growth": DIAGNOSTICS["a"].value(report),
            "h_L": report.residual_norms[-1],
            "acc_by_epoch": [e["acc_eval"] for e in res.trace],
            "train_loss_by_epoch": [e["train_loss"] for e in res.trace[1:]],
            "seconds": time.perf_counter() - t0}


def print_row(key: str, r: dict) -> None:
    g = r["max_block_growth"]
    z = sum(r["cosine_zero_samples"])
    print(f"  {key:<52} acc {r['acc']:.4f}  loss {r['first_loss']:.3f} -> {r['last_loss']:.3f}  "
          f"growth {g:6.3f}  cos {fmt_cos(r['cosine'])}"
          + (f" [zero credit: {r['cosine_zero_samples']}]" if z else "")
          + f"  ({r['seconds']:.0f} s)", flush=True)


def replay(data, source, rule_name, opts, epochs, x, y, run_epochs=None) -> dict:
    """The first `run_epochs` (default: all) epochs of the trainer's `epochs`-epoch run of
    `rule_name` at `opts`, step by step (same construction, generators, optimizer, schedule and
    loss bookkeeping as trainer.train), reading the credit cosine at PROBE_STEPS of epoch 1 and
    after every epoch. Reading credits uses no random numbers, so the trajectory is the
    trainer's (checked by the caller against part 1's train losses and accuracies)."""
    cfg = TrainConfig(rule=rule_name, rule_options=opts, data=source, epochs=epochs, seed=SEED,
                      progress=False)
    device = data.device
    model = build_model(cfg, data).to(device)
    rule = build_rule(cfg.rule, model, cfg.rule_options,
                      make_generator(cfg.seed, "feedback")).to(device)
    opt = make_optimizer(model, rule, cfg)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    order, aug = make_generator(cfg.seed, "data_order"), make_generator(cfg.seed, "augment",
                                                                        device=device)
    model.train()
    steps, by_epoch, losses, accs = [], [], [], []
    step = 0
    for epoch in range(1, (epochs if run_epochs is None else run_epochs) + 1):
        loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        n_seen = 0
        for xb, yb in data.train_batches(cfg.batch_size, order, aug):
            if epoch == 1 and step in PROBE_STEPS:
                steps.append({"step": step, "cosine": credit_cosines(rule, model, x, y)[0]})
            out = train_step(model, rule, opt, xb, yb, cfg)
            loss_sum += F.cross_entropy(out.logits, yb, reduction="sum").double()
            n_seen += len(yb)
            step += 1
        sched.step()
        losses.append(float(loss_sum) / max(n_seen, 1))
        accs.append(accuracy(model, data.test_x, data.test_y))
        by_epoch.append({"epoch": epoch, "step": step,
                         "cosine": credit_cosines(rule, model, x, y)[0]})
    return {"rule": rule_name, "options": opts, "steps_per_epoch": step // max(len(losses), 1),
            "probes_epoch1": steps, "by_epoch": by_epoch, "train_loss_by_epoch": losses,
            "acc_by_epoch": accs}


def step_cost(data, cases, rounds=7) -> dict:
    """ms per training step at batch 128 (`_common.step_ms`): median and min over rounds."""
    return {label(name, opts): {"median_ms": float(np.median(v)), "min_ms": float(np.min(v)),
                                "rounds_ms": v}
            for (name, opts), v in zip(cases, step_ms(data, cases, rounds=rounds, warmup=3))}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--grid", choices=("trim", "full"), default="trim",
                   help="CB's grid: 'trim' (default: 9 points) or 'full' (26 points)")
    p.add_argument("--cb-grad-weight", type=float, default=100.0,
                   help="CB's grad_weight at which hidden, sigma and lr_scale are varied")
    p.add_argument("--tie", type=float, default=0.01,
                   help="the chosen options: the most accurate grid point, or the defaults when "
                        "they are within this much accuracy of it (one seed)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cost-rounds", type=int, default=7)
    p.add_argument("--replay-epochs", type=int, default=1,
                   help="epochs replayed step by step for part 3 (default 1: epoch 1; the end of "
                        "the run comes from part 1)")
    p.add_argument("--long-epochs", type=int, default=20,
                   help="part 4's horizon (0: skip part 4)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    missing = [r for r in SHORT if r not in RULES]
    if missing:
        raise SystemExit(f"rules not registered: {missing}")
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    arrays, source = load_arrays(args.data_root, 10_000, 2_000)
    data = DeviceData.from_cifar(arrays, name=source)
    evb = data.eval_batches()
    x, y = torch.cat([b[0] for b in evb]), torch.cat([b[1] for b in evb])
    result = {"data": source, "num_train": data.num_train, "threads": args.threads,
              "torch": torch.__version__, "cpu": cpu_model(), "epochs": args.epochs,
              "seed": SEED, "grid": args.grid, "cb_grad_weight": args.cb_grad_weight,
              "tie": args.tie, "defaults": {r: defaults(r) for r in BRIDGES},
              "loadavg_start": load_average()}
    print(f"data: {source} ({data.num_train} train), d=256 L=4 batch 128 seed {SEED}, "
          f"{args.threads} threads, torch {torch.__version__}; loadavg at start "
          f"{result['loadavg_start']}")
    print("defaults: " + "; ".join(label(r, defaults(r)) for r in BRIDGES))

    # 1. options ---------------------------------------------------------------------------
    print(f"\n1. after {args.epochs} epochs: test accuracy, train loss epoch 1 -> {args.epochs}, "
          f"max per-block growth ||h_l+1||/||h_l||, cosine with BP at h_0 .. h_4 (eval batches)")
    runs = {}

    def do(rule, opts, frozen=False):
        key = label(rule, opts, frozen)
        runs[key] = run_one(data, source, rule, opts, args.epochs, x, y, frozen)
        print_row(key, runs[key])
        return key

    for rule in ("bp", "dfa"):
        do(rule, {})
    for rule in BRIDGES:
        for opts in grid(rule, args.grid == "full", args.cb_grad_weight):
            do(rule, opts)
    chosen = {}
    for rule in BRIDGES:
        mine = {k: r for k, r in runs.items() if r["rule"] == rule and not r["frozen"]}
        best_acc = max(mine, key=lambda k: mine[k]["acc"])
        best_cos = max(mine, key=lambda k: mine[k]["cosine_mean"])
        default_key = label(rule, defaults(rule))
        pick = (default_key if runs[default_key]["acc"] >= runs[best_acc]["acc"] - args.tie
                else best_acc)
        chosen[rule] = {"defaults": default_key, "best_accuracy": best_acc,
                        "best_mean_cosine": best_cos, "chosen": pick,
                        "chosen_options": runs[pick]["options"]}
    print("  frozen-blocks baselines (at the defaults, and at the chosen options):")
    for rule in BRIDGES:
        chosen[rule]["frozen"] = [do(rule, defaults(rule), frozen=True)]
        if chosen[rule]["chosen_options"] != defaults(rule):
            chosen[rule]["frozen"].append(do(rule, chosen[rule]["chosen_options"], frozen=True))
    result["runs"] = runs
    result["chosen"] = chosen
    print(f"  per bridge: most accurate, best mean cosine, defaults, chosen (the most accurate, "
          f"or the defaults within {args.tie:g} of it):")
    for rule, c in chosen.items():
        for what in ("best_accuracy", "best_mean_cosine", "defaults", "chosen"):
            r = runs[c[what]]
            print(f"    {SHORT[rule]} {what:<17} {c[what]:<52} acc {r['acc']:.4f}  "
                  f"mean cos {r['cosine_mean']:+.3f}")
    if args.json:  # partial results, in case a later part is interrupted
        write_json_atomic(Path(args.json), result)

    # 2. cost ------------------------------------------------------------------------------
    print("\n2. cost: ms per training step at the defaults, batch 128, interleaved rounds "
          "(median, min)")
    cost = step_cost(data, [("bp", {}), ("dfa", {}), ("state_bridge", {}), ("credit_bridge", {})],
                     rounds=args.cost_rounds)
    bp_ms = cost["BP"]["median_ms"]
    for k, v in cost.items():
        print(f"  {k:<10} {v['median_ms']:7.1f}  {v['min_ms']:7.1f}   x{v['median_ms'] / bp_ms:.2f} BP")
    result["ms_per_step"] = cost

    # 3. warm-up ---------------------------------------------------------------------------
    print("\n3. warm-up: credit cosine with BP during the runs at the defaults and at the chosen "
          "options (replayed step by step)")
    warm = {}
    n = min(args.replay_epochs, args.epochs)
    keys = list(dict.fromkeys(k for c in chosen.values() for k in (c["defaults"], c["chosen"])))
    for key in keys:
        ref = runs[key]
        t0 = time.perf_counter()
        rep = replay(data, source, ref["rule"], ref["options"], args.epochs, x, y, run_epochs=n)
        rep["matches_part1"] = {
            "train_loss": rep["train_loss_by_epoch"] == ref["train_loss_by_epoch"][:n],
            "acc": rep["acc_by_epoch"] == ref["acc_by_epoch"][1:n + 1]}
        if n == args.epochs:
            rep["matches_part1"]["final_cosine"] = rep["by_epoch"][-1]["cosine"] == ref["cosine"]
        rep["seconds"] = time.perf_counter() - t0
        warm[key] = rep
        print(f"  {key}  ({rep['steps_per_epoch']} steps per epoch; same trajectory as part 1: "
              f"{rep['matches_part1']}; {rep['seconds']:.0f} s)")
        for pr in rep["probes_epoch1"]:
            print(f"    step {pr['step']:>4} (epoch 1)          cos {fmt_cos(pr['cosine'])}  "
                  f"mean {np.mean(pr['cosine']):+.3f}")
        for e, l, a in zip(rep["by_epoch"], rep["train_loss_by_epoch"], rep["acc_by_epoch"]):
            print(f"    step {e['step']:>4} (end of epoch {e['epoch']})  cos {fmt_cos(e['cosine'])}  "
                  f"mean {np.mean(e['cosine']):+.3f}  loss {l:.3f}  acc {a:.4f}")
        if n < args.epochs:  # the end of the run, from part 1
            print(f"    step {rep['steps_per_epoch'] * args.epochs:>4} (end of epoch {args.epochs})  "
                  f"cos {fmt_cos(ref['cosine'])}  mean {ref['cosine_mean']:+.3f}  "
                  f"loss {ref['last_loss']:.3f}  acc {ref['acc']:.4f}  (part 1)")
    result["warmup"] = warm
    print("  test accuracy by epoch (0 = init), from part 1:")
    for key in ["BP", "DFA"] + keys:
        print(f"    {key:<52} " + " ".join(f"{a:.4f}" for a in runs[key]["acc_by_epoch"]))
    if args.json:
        write_json_atomic(Path(args.json), result)

    # 4. a longer horizon ------------------------------------------------------------------
    if args.long_epochs > 0:
        print(f"\n4. the same measures after {args.long_epochs} epochs (cosine schedule over "
              f"them): BP, SB at the chosen options, CB at grad_weight >= 100 of the grid")
        long_runs = {}
        cases = ([("bp", {}), ("state_bridge", chosen["state_bridge"]["chosen_options"])]
                 + [("credit_bridge", r["options"]) for r in runs.values()
                    if r["rule"] == "credit_bridge" and not r["frozen"]
                    and r["options"]["grad_weight"] >= 100
                    and {**r["options"], "grad_weight": 1.0, "lr_scale": 1.0}
                    == {**defaults("credit_bridge"), "grad_weight": 1.0, "lr_scale": 1.0}])
        for rule, opts in cases:
            key = label(rule, opts)
            long_runs[key] = run_one(data, source, rule, opts, args.long_epochs, x, y)
            print_row(key, long_runs[key])
        shown = sorted(set(range(0, args.long_epochs + 1, 5)) | {args.long_epochs})
        print(f"  test accuracy at epochs {', '.join(map(str, shown))}; ||h_L|| at the end "
              "(eval batches' median):")
        for key, r in long_runs.items():
            print(f"    {key:<52} " + " ".join(f"{r['acc_by_epoch'][e]:.4f}" for e in shown)
                  + f"   ||h_L|| {r['h_L']:.1f}")
        result["long"] = {"epochs": args.long_epochs, "runs": long_runs}

    result["loadavg_end"] = load_average()
    result["seconds_total"] = time.perf_counter() - t_start
    print(f"\nloadavg at end {result['loadavg_end']}; total {result['seconds_total']:.0f} s")
    if args.json:
        write_json_atomic(Path(args.json), result)
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
